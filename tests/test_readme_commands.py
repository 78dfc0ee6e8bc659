"""Every command in the README works: the quick tour runs verbatim, every other command line parses.

* The code block after ``<!-- readme-test: run -->`` is run with bash, unchanged, in an empty folder that holds
  only a link to ``configs/``, with this interpreter's ``bin/`` (``covidseg``, ``python``) first on PATH.
* Every other ``covidseg ...`` line of every code block (also after ``&&``, after ``.venv/bin/``, and after
  ``torchrun ... -m covidseg``) is parsed by the real command line, without running the command: an unknown
  command or option, a missing required option or a value of the wrong type fails. Parsing opens no files, so
  paths may be placeholders.
* ``torchrun`` lines are parsed by torchrun's own argument parser too.
* ``python pipelines/<script>.py ...`` lines (in code blocks and inline code) are parsed by the script's
  argparse parser: the script runs until it has parsed its arguments and is stopped there.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.main import get_command

from covidseg.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_MARK = "<!-- readme-test: run -->"
TOUR_TIMEOUT_S = 1500
_BLOCK = re.compile(r"(?P<mark><!-- readme-test: run -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)```", re.S)
_SEPARATORS = {"&&", "||", ";", "|"}


def _blocks() -> list[tuple[str, str, bool]]:
    """(language, body, marked to run) of every fenced code block of the README."""
    text = README.read_text()
    return [(m["lang"], m["body"], bool(m["mark"])) for m in _BLOCK.finditer(text)]


def _lines(body: str) -> list[str]:
    """Shell lines of a block with backslash continuations joined; blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at && || ; |), as argument lists without comments."""
    segments: list[list[str]] = [[]]
    for token in shlex.split(line, comments=True):
        if token in _SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token.lstrip("("))
    return [s for s in segments if s]


def _program(token: str) -> str:
    return Path(token).name


def _covidseg_args(segment: list[str]) -> list[str] | None:
    """The covidseg arguments of a command (``covidseg ...``, ``python -m covidseg ...``, torchrun), else None."""
    if _program(segment[0]) == "covidseg":
        return segment[1:]
    for i in range(len(segment) - 1):
        if segment[i] == "-m" and segment[i + 1] == "covidseg":
            return segment[i + 2 :]
    return None


def _all_segments() -> list[list[str]]:
    return [seg for _, body, _ in _blocks() for line in _lines(body) for seg in _segments(line)]


def _covidseg_commands() -> list[list[str]]:
    commands = [args for seg in _all_segments() if (args := _covidseg_args(seg)) is not None]
    assert commands, "no covidseg command found in the README's code blocks"
    return commands


def _pipeline_commands() -> list[list[str]]:
    inline = re.findall(r"`((?:\.venv/bin/)?python3? pipelines/[^`]+)`", README.read_text())
    segments = _all_segments() + [seg for text in inline for seg in _segments(text)]
    found = [
        seg
        for seg in segments
        if _program(seg[0]) in ("python", "python3") and len(seg) > 1 and seg[1].startswith("pipelines/")
    ]
    unique = {shlex.join(seg): seg for seg in found}
    return list(unique.values())


def parse_covidseg(args: list[str]) -> tuple[str, dict]:
    """Parse ``covidseg ARGS`` with the real command line, without running the command.

    Returns:
        The command name and its parsed parameters (empty for ``--help`` / ``--version``).

    Raises:
        Exception: The command line's own error (unknown command or option, bad or missing value).
    """
    group = get_command(app)
    try:
        ctx = group.make_context("covidseg", list(args), resilient_parsing=False)
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest:
            raise ValueError(f"no command in covidseg {shlex.join(args)}")
        name, command, rest = group.resolve_command(ctx, rest)
        if command is None or name is None:
            raise ValueError(f"unknown command in covidseg {shlex.join(args)}")
        sub = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    except typer.Exit as done:  # --help / --version print and stop: fine
        if done.exit_code != 0:
            raise
        return "", {}
    return name, dict(sub.params)


def _ids(commands: list[list[str]]) -> list[str]:
    return [shlex.join(c)[:70] for c in commands]


COVIDSEG_COMMANDS = _covidseg_commands()
PIPELINE_COMMANDS = _pipeline_commands()


@pytest.mark.parametrize("args", COVIDSEG_COMMANDS, ids=_ids(COVIDSEG_COMMANDS))
def test_covidseg_command_parses(args):
    parse_covidseg(args)


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "scan.nii.gz", "--no-such-option"],
        ["no-such-command"],
        ["export-bundle", "--model", "best.pt"],  # --out is required
        ["predict", "scan.nii.gz", "--batch-size", "many"],
        ["train", "--config"],  # option without its value
    ],
)
def test_the_parser_rejects_what_the_cli_rejects(args):
    with pytest.raises(Exception) as info:
        parse_covidseg(args)
    assert not isinstance(info.value, AssertionError)


def _config_commands() -> list[list[str]]:
    return [args for args in COVIDSEG_COMMANDS if args[0] in ("train", "pretrain") and "--resume" not in args]


@pytest.mark.parametrize("args", _config_commands(), ids=_ids(_config_commands()))
def test_config_files_and_keys_of_train_and_pretrain_examples_exist(args):
    """The presets named with -c exist and every --set key is a real config key with a valid value."""
    from covidseg.config import load_config
    from covidseg.config.pretrain import load_pretrain_config

    name, params = parse_covidseg(args)
    files = [ROOT / path for path in params["config"]]
    for path in files:
        assert path.is_file(), f"{path.relative_to(ROOT)} does not exist"
    overrides = list(params["overrides"] or [])
    if name == "train":
        if params.get("source") is not None:
            overrides.append(f"source.path={params['source']}")
        load_config(files, overrides)
    else:
        load_pretrain_config(files, overrides)


def test_readme_shows_every_command():
    shown = {args[0] for args in COVIDSEG_COMMANDS if args}
    missing = set(get_command(app).list_commands(None)) - shown  # type: ignore[arg-type]
    assert not missing, f"commands without an example in a README code block: {sorted(missing)}"


def test_torchrun_lines_parse_with_torchrun_and_covidseg():
    from torch.distributed.run import get_args_parser

    lines = [seg for seg in _all_segments() if _program(seg[0]) == "torchrun"]
    assert lines, "the README shows no torchrun command"
    for seg in lines:
        parsed = get_args_parser().parse_args(seg[1:])
        assert parsed.module and parsed.training_script == "covidseg", seg
        assert parsed.training_script_args and parsed.training_script_args[0] == "train", seg


class _ArgumentsParsedError(Exception):
    """Raised in place of returning from ``parse_args``: the script stops once its arguments are parsed."""


@pytest.mark.parametrize("args", PIPELINE_COMMANDS, ids=_ids(PIPELINE_COMMANDS))
def test_pipeline_command_parses(args, monkeypatch):
    script = ROOT / args[1]
    assert script.is_file(), f"{args[1]} does not exist"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **k):
        raise _ArgumentsParsedError(original(self, *a, **k))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *args[2:]])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _ArgumentsParsedError:
        return
    except SystemExit as exc:
        pytest.fail(f"{shlex.join(args)}: argument parsing failed (exit {exc.code})")
    pytest.fail(f"{shlex.join(args)} never parsed its arguments with argparse")


def _tour() -> str:
    marked = [body for _, body, run in _blocks() if run]
    assert len(marked) == 1, f"expected exactly one block marked {RUN_MARK!r}, found {len(marked)}"
    return marked[0]


def test_quick_tour_covers_the_main_steps():
    commands = [args[0] for line in _lines(_tour()) for seg in _segments(line) if (args := _covidseg_args(seg))]
    for step in ("phantom", "train", "predict", "evaluate", "export-bundle"):
        assert step in commands, f"the quick tour has no covidseg {step}"


def test_quick_tour_runs_verbatim_in_a_fresh_folder(tmp_path):
    nib = pytest.importorskip("nibabel")
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("COVIDSEG_MODEL", None)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _tour()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TOUR_TIMEOUT_S,
    )
    assert result.returncode == 0, f"quick tour failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report = (tmp_path / "predictions" / "phantom_report.json").read_text()
    assert '"lung_volume_ml"' in report and '"severity_score"' in report
    assert (tmp_path / "predictions" / "phantom_overview.png").stat().st_size > 0
    assert "opacity_dice" in (tmp_path / "evaluation" / "per_case.csv").read_text()
    ours = nib.load(tmp_path / "predictions" / "phantom_labels.nii.gz")
    bundle = nib.load(tmp_path / "bundle_masks" / "phantom_labels.nii.gz")
    np.testing.assert_allclose(bundle.affine, ours.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(bundle.dataobj), np.asarray(ours.dataobj))
