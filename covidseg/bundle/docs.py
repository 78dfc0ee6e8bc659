"""``docs/README.md`` and the license text of an exported bundle.

The README says what the model does, its input and output, how it was trained (the run configuration stored in
the checkpoint, when there is one), its validation score, how to run and verify the bundle, its intended use and
its limits. Everything comes from the metadata and the checkpoint; nothing is typed in by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["license_text", "readme_text"]

_CONFIG_LINES = 80
"""Longest training configuration shown in the README (lines of YAML)."""


def _training_section(checkpoint: Mapping[str, Any]) -> str:
    config = checkpoint.get("config")
    training = checkpoint.get("training")
    lines: list[str] = []
    if isinstance(training, Mapping):
        facts = []
        if isinstance(training.get("epoch"), int):
            facts.append(f"{training['epoch']} epoch(s) run")
        if isinstance(training.get("best_epoch"), int) and training["best_epoch"] >= 0:
            facts.append(f"the weights are from epoch {training['best_epoch'] + 1}")
        if facts:
            lines.append("Training: " + ", ".join(facts) + ".")
    if isinstance(config, Mapping):
        text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False).splitlines()
        shown = text[:_CONFIG_LINES]
        if len(text) > _CONFIG_LINES:
            shown.append(f"# ... {len(text) - _CONFIG_LINES} more lines in the checkpoint's 'config' entry")
        lines += [
            "",
            "The run configuration stored in the checkpoint (`covidseg train`):",
            "",
            "```yaml",
            *shown,
            "```",
        ]
    if not lines:
        lines.append("The checkpoint records no training configuration (it was not written by `covidseg train`).")
    return "\n".join(lines)


def _scores_section(metadata: Mapping[str, Any]) -> str:
    metrics = metadata.get("eval_metrics") or {}
    if not metrics:
        return "No validation score is recorded in the checkpoint."
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items())
    return (
        "Best validation score recorded during training (on the run's own validation split; not an independent "
        "test):\n\n| metric | value |\n|---|---|\n" + rows
    )


def readme_text(metadata: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> str:
    """The bundle's ``docs/README.md``.

    Args:
        metadata: The bundle's ``metadata.json`` content (:func:`covidseg.bundle.metadata.build_metadata`).
        checkpoint: The loaded checkpoint (its ``config`` and ``training`` entries, when present).

    Examples:
        >>> from covidseg.bundle.metadata import build_metadata
        >>> from covidseg.infer.spec import InferenceSpec
        >>> text = readme_text(build_metadata(InferenceSpec(), {}), {})
        >>> "not a medical device" in text.lower(), "verify_metadata" in text
        (True, True)
    """
    spec = metadata["covidseg"]["inference_spec"]
    pre, post = spec["preprocess"], spec["postprocess"]
    image = metadata["network_data_format"]["inputs"]["image"]
    classes = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    notes = metadata["covidseg"].get("notes") or []
    low, high = pre["window"]
    height, width = pre["slice_size"]
    post_rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in post.items())
    note_text = "\n".join(f"- {note}" for note in notes) if notes else "- none"
    return f"""# {metadata.get("name", "covidseg bundle")}: lung and COVID-19 opacity segmentation in chest CT

{metadata["description"]}

Exported by covidseg {metadata["covidseg"]["covidseg_version"]} from `{metadata["covidseg"]["checkpoint"]}`
(SHA-256 `{metadata["covidseg"]["checkpoint_sha256"]}`). Bundle version {metadata["version"]}.

## Input

One chest CT scan per NIfTI file (`.nii` / `.nii.gz`) in Hounsfield units, any orientation and voxel size.
The network sees axial slices: the scan is reoriented so each axial slice has rows toward posterior and columns
toward the patient's left (`Orientationd(axcodes="PLS")`), Hounsfield units are clipped to [{low:g}, {high:g}]
and mapped to [0, 1], and every axial slice is resized to {height} x {width} ({pre["resize_mode"]}).
Network input: {image["num_channels"]} channel(s), float32, {height} x {width}.

## Output

Network output: one logit per class ({", ".join(f"{k}: {v}" for k, v in classes.items())}). After softmax the
probabilities are resized back to the native slice size ({spec["resize_back_mode"]}), the argmax is taken, and
covidseg's post-processing makes the final label map, **uint8, 0 background, 1 lung, 2 opacity**, written as
`<scan name>_labels.nii.gz` with the input's affine. Post-processing settings (sizes in mm and mL):

| setting | value |
|---|---|
{post_rows}

The post-processing code is covidseg's own, shipped in `scripts/` (`postprocess.py`, `masks.py`, `lungmask.py`,
`body.py`); the bundle does not need covidseg installed. It gives the same mask as
`covidseg predict --precision fp32 --no-fast` with the same checkpoint.

Differences from the checkpoint's own settings:

{note_text}

## Training

{_training_section(checkpoint)}

## Evaluation

{_scores_section(metadata)}

## Running

Needs MONAI, PyTorch, NumPy, nibabel and scipy (versions in `configs/metadata.json`), and `fire` for the
command line. From this folder:

```bash
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --dataset_dir /path/to/scans --output_dir /path/to/masks
# one scan:
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --datalist "['/path/to/scan.nii.gz']" --output_dir /path/to/masks
```

From another folder add `--bundle_root /path/to/this/bundle`. `models/model.ts` is the TorchScript network
with `metadata.json` and `inference.json` embedded (`monai.data.load_net_with_metadata`); `models/model.pt` is
its state dict.

## Verifying

```bash
# offline, against the schema shipped with covidseg (copied to docs/metadata_schema.json):
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath docs/metadata_schema.json
# online, against the official schema named in metadata.json ("schema"); --filepath must not exist yet:
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath /tmp/official_schema.json
# the network's input and output shapes:
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json \\
    --config_file configs/inference.json
# re-create models/model.ts from models/model.pt with MONAI's exporter (same network, configs embedded):
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \\
    --meta_file configs/metadata.json --config_file configs/inference.json
```

## Intended use and limits

{metadata["intended_use"]}

- Trained for COVID-19 pneumonia patterns (ground glass, consolidation) in adult chest CT; other diseases,
  children, contrast phases or reconstruction kernels not seen in training may give wrong masks.
- The network sees each axial slice on its own (no 3-D context); thick slices and motion degrade it.
- The lung mask relies on the predicted lungs (or Hounsfield units without a lung class); severe disease,
  effusions or unusual anatomy can make it miss or add regions. Review every mask before any use.
- Not validated clinically. Volumes computed from the mask are research measurements.
"""


def license_text(metadata: Mapping[str, Any]) -> str:
    """The bundle's license file: the code's license and the conditions of the weights.

    Examples:
        >>> "Apache" in license_text({"copyright": "(c) someone"})
        True
    """
    return f"""{metadata.get("copyright", "")}

Code in scripts/ and the bundle configuration: Apache License 2.0 (covidseg),
https://www.apache.org/licenses/LICENSE-2.0

Model weights (models/model.pt, models/model.ts): derived from the training data and source weights named in
docs/README.md; their licenses and data-use terms apply to the weights. Research use only; not a medical device.

THE BUNDLE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
"""
