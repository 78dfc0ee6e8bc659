"""The generated configuration reference: complete, read from the code, and committed up to date."""

import subprocess
import sys
from pathlib import Path

import pytest

from covidseg.config.pretrain import InitSection, PretrainConfig, PretrainModelSection, TaskSection
from covidseg.config.reference import (
    REGENERATE_COMMAND,
    UNDOCUMENTED,
    config_keys,
    config_reference_markdown,
    field_meanings,
    parse_google_section,
)
from covidseg.config.sections import RunConfig
from covidseg.data.augment import AugmentConfig
from covidseg.data.layouts import LAYOUTS
from covidseg.transfer.penalties import PENALTIES
from covidseg.transfer.schedules import SCHEDULES
from covidseg.transfer.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "config-reference.md"

# Keys whose classes say nothing about them today. New keys must not join this list: document them in their
# class (an attribute docstring or an Attributes: entry) and regenerate the reference.
KNOWN_UNDOCUMENTED: set[str] = set()


@pytest.fixture(scope="module")
def reference() -> str:
    return config_reference_markdown()


def test_committed_reference_is_the_generated_one(reference):
    assert COMMITTED.is_file(), f"docs/config-reference.md is missing; create it with: {REGENERATE_COMMAND}"
    assert COMMITTED.read_text() == reference, (
        f"docs/config-reference.md is out of date with the config classes; regenerate it with: {REGENERATE_COMMAND}"
    )


def _all_run_keys() -> list[str]:
    keys = []
    for name, info in RunConfig.model_fields.items():
        model = AugmentConfig if name == "augment" else info.annotation
        keys += [f"{name}.{key}" for key in model.model_fields]
    return keys


def test_every_run_and_pretrain_key_is_a_row(reference):
    rows = {line.split("|")[1].strip().strip("`") for line in reference.splitlines() if line.startswith("| `")}
    expected = set(_all_run_keys())
    expected |= {k for k in PretrainConfig.model_fields if k not in RunConfig.model_fields}
    expected |= {f"tasks[].{k}" for k in TaskSection.model_fields}
    expected |= {f"init.{k}" for k in InitSection.model_fields}
    expected |= {f"model.{k}" for k in PretrainModelSection.model_fields}
    assert expected <= rows, sorted(expected - rows)


def test_every_registry_entry_has_a_heading_and_its_parameters(reference):
    for registry in (PENALTIES, SCHEDULES, STRATEGIES, LAYOUTS):
        for name in registry:
            assert f"**`{name}`**" in reference, name
    assert "| `regularization.weight_lambda` | float | required | λ (>= 0). |" in reference
    assert "| `strategy.lp_epochs` | int | `5` |" in reference
    assert "| `data.options.n_cases` | int | `8` | Number of cases. |" in reference
    assert "| `schedule.lambda0` | float | required |" in reference
    # the fisher tensor is supplied by the trainer, never a config key; model/layer_of are positional
    assert "regularization.fisher`" not in reference and "regularization.model`" not in reference


def test_defaults_types_and_constraints_come_from_the_classes(reference):
    assert '| `data.layout` | "volumes" \\| "covid20" \\| "slices" \\| "phantom" | `"phantom"` |' in reference
    assert "| `data.val_fraction` | float ≥ 0.0, < 1.0 | `0.2` |" in reference
    assert "| `preprocess.slice_size` | [int, int] | `[384, 384]` |" in reference
    assert "| `tasks` | list[section] min. length 1 | required |" in reference
    keys = {k.key: k for k in config_keys(AugmentConfig, "augment.")}
    assert keys["augment.rotate_degrees"].default == "`15.0`"
    assert keys["augment.rotate_degrees"].meaning == "Rotation angle drawn from [-rotate_degrees, rotate_degrees]."


def test_no_new_undocumented_keys(reference):
    undocumented = {
        line.split("|")[1].strip().strip("`")
        for line in reference.splitlines()
        if line.startswith("| `") and f"| {UNDOCUMENTED} |" in line
    }
    assert undocumented <= KNOWN_UNDOCUMENTED, (
        f"document these keys in their classes: {sorted(undocumented - KNOWN_UNDOCUMENTED)}"
    )


def test_meanings_fall_back_to_delegate_classes_and_base_classes():
    from covidseg.config.sections import ModelSection, PreprocessSection
    from covidseg.transfer.penalties_group import GroupLassoSPPenalty

    assert field_meanings(PreprocessSection)["slice_size"].startswith("``(height, width)``")
    assert field_meanings(ModelSection)["decoder_channels"].startswith("Output channels of the five decoder")
    # GroupLassoSPPenalty documents no Args itself: they come from L2SPLayerwisePenalty
    assert field_meanings(GroupLassoSPPenalty)["decoder_lambda"] == "λ' of the plain L2 on new layers."


def test_google_sections_stop_at_the_next_section():
    doc = """Summary.

    Attributes:
        a (int): One.
        b: Two
            lines.

    Examples:
        c: not an attribute
    """
    assert parse_google_section(doc, "Attributes") == {"a": "One.", "b": "Two lines."}
    assert parse_google_section(doc, "Args") == {}


def test_module_entry_point_prints_the_reference(reference):
    result = subprocess.run(
        [sys.executable, "-m", "covidseg.config.reference"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout == reference
    bad = subprocess.run([sys.executable, "-m", "covidseg.config.reference", "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and REGENERATE_COMMAND in bad.stderr
