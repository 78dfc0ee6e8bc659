"""The settings of a cross-validated comparison of fine-tuning schemes (a "study"), validated from YAML.

A study trains every scheme on every fold of one k-fold split (the folds fixed in a file), scores each fold's
held-out cases with the weights of the LAST epoch (no model selection on the held-out fold, so the scores are not
optimistically biased), and compares the schemes with paired tests over the cases. The same preset runs on a
2-core CPU at small scale and on a GPU at the paper's scale: only ``overrides`` change.

Example preset (``configs/study/medseg_cv.yaml`` is the real one)::

    dataset: [configs/datasets/medseg.yaml]
    folds: 5
    overrides: ["preprocess.slice_size=[128,128]", "train.epochs=30"]
    source: {pretrain: configs/pretrain/unlabeled_slices.yaml, overrides: ["train.epochs=8"]}
    schemes:
      scratch: {configs: [configs/schemes/none.yaml], use_source: false}
      layerwise: {configs: [configs/schemes/l2sp_layerwise_20_1.5.yaml]}
    baseline: scratch
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from covidseg.config.loader import read_yaml_mapping
from covidseg.errors import ConfigError

__all__ = ["FinalSection", "SchemeSection", "SourceSection", "StudySpec", "load_study_spec"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSection(_Strict):
    """Where the source model comes from: an existing checkpoint, or a ``covidseg pretrain`` run the study makes.

    Attributes:
        path: An existing source checkpoint (``covidseg pretrain`` output or an ImageNet file).
        pretrain: A pretrain config to run once (its checkpoint is kept in the study folder and reused).
        overrides: ``key=value`` overrides of the pretrain config.
    """

    path: Path | None = None
    pretrain: list[Path] | Path | None = None
    overrides: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one(self) -> SourceSection:
        if (self.path is None) == (self.pretrain is None):
            raise ValueError("source needs exactly one of path (a checkpoint) or pretrain (a pretrain config)")
        return self

    @property
    def pretrain_configs(self) -> list[Path]:
        """The pretrain config files as a list."""
        if self.pretrain is None:
            return []
        return list(self.pretrain) if isinstance(self.pretrain, list) else [self.pretrain]


class SchemeSection(_Strict):
    """One fine-tuning scheme: config presets merged over the dataset's, plus overrides.

    Attributes:
        configs: YAML presets (``configs/schemes/*.yaml``), merged in order after the dataset configs.
        overrides: ``key=value`` overrides applied last.
        use_source: Start from the study's source model (False: random initialisation, "from scratch").
        label: Name shown in tables (default: the scheme's key).
    """

    configs: list[Path] = Field(default_factory=list)
    overrides: list[str] = Field(default_factory=list)
    use_source: bool = True
    label: str | None = None


class FinalSection(_Strict):
    """The final model: one scheme trained on every labelled case (no validation), saved for later use.

    Attributes:
        scheme: A scheme key, or ``best`` (highest mean score over folds).
        overrides: Extra overrides of the final run (e.g. a larger slice size or more epochs).
    """

    scheme: str = "best"
    overrides: list[str] = Field(default_factory=list)


class StudySpec(_Strict):
    """A cross-validated comparison of schemes on one dataset.

    Attributes:
        dataset: Dataset config files (``configs/datasets/*.yaml``), merged first.
        overrides: ``key=value`` overrides shared by every run (resolution, epochs, optimizer, device ...).
        folds: Number of cross-validation folds.
        split_seed: Seed of the fold assignment (the folds are written to ``folds.json`` and reused).
        source: The source model of the schemes with ``use_source``.
        schemes: Scheme key -> settings, in table order.
        baseline: The scheme every other one is compared with.
        comparisons: Extra ``[a, b]`` pairs to test (b against a).
        metric: Per-case score compared: ``dice_opacity`` (or ``dice_<class>``).
        final: The final model's settings.
        n_bootstrap: Bootstrap resamples of each paired comparison.
    """

    dataset: list[Path] = Field(min_length=1)
    overrides: list[str] = Field(default_factory=list)
    folds: int = Field(5, ge=2)
    split_seed: int = 0
    source: SourceSection | None = None
    schemes: dict[str, SchemeSection] = Field(min_length=1)
    baseline: str | None = None
    comparisons: list[tuple[str, str]] = Field(default_factory=list)
    metric: str = "dice_opacity"
    final: FinalSection = Field(default_factory=FinalSection)
    n_bootstrap: int = Field(10000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        known = list(self.schemes)
        named = [self.baseline] if self.baseline is not None else []
        named += [name for pair in self.comparisons for name in pair]
        if self.final.scheme != "best":
            named.append(self.final.scheme)
        unknown = [name for name in named if name not in self.schemes]
        if unknown:
            raise ValueError(f"scheme {unknown[0]!r} is not in schemes; known: {', '.join(known)}")
        if self.source is None and any(s.use_source for s in self.schemes.values()):
            first = next(k for k, s in self.schemes.items() if s.use_source)
            raise ValueError(f"scheme {first!r} uses the source but the study has no source section")
        if not self.metric.startswith("dice_"):
            raise ValueError(f"metric must be dice_<class> (e.g. dice_opacity), got {self.metric!r}")
        return self

    def label(self, scheme: str) -> str:
        """The table label of ``scheme``.

        Examples:
            >>> spec = StudySpec(dataset=[Path("d.yaml")], schemes={"a": SchemeSection(use_source=False)})
            >>> spec.label("a")
            'a'
        """
        return self.schemes[scheme].label or scheme


def load_study_spec(path: str | os.PathLike[str], overrides: dict[str, object] | None = None) -> StudySpec:
    r"""Read and validate a study preset; relative paths inside it stay relative to the working directory.

    Args:
        path: The YAML preset.
        overrides: Top-level keys replaced after reading (e.g. ``{"folds": 3}``).

    Raises:
        ConfigError: A missing file, invalid YAML, unknown keys or invalid values (one line naming the key).

    Examples:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "s.yaml"
        >>> _ = p.write_text("dataset: [d.yaml]\nschemes: {scratch: {use_source: false}}\nfolds: 3\n")
        >>> load_study_spec(p).folds
        3
        >>> _ = p.write_text("dataset: [d.yaml]\nschemes: {scratch: {use_source: false}}\nfold: 3\n")
        >>> load_study_spec(p)
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: ...: fold: Extra inputs are not permitted
    """
    file = Path(path)
    raw = read_yaml_mapping(
        file, name="study preset", see="see configs/study/ for examples", contents="of study settings"
    )
    raw.update(overrides or {})
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "study"
        raise ConfigError(f"{file}: {where}: {err['msg']}") from None
