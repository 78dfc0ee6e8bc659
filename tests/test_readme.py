"""The README's two set-up commands and CI stay in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_has_exactly_two_setup_commands_both_in_a_local_venv():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    setup = [b for b in blocks if b.startswith("python3 -m venv .venv")]
    assert len(setup) == 2, setup
    for command in setup:
        assert "\n" not in command
        assert "pip install torch==2.13.0" in command
        assert ".venv/bin/pip install -e" in command


def test_ci_runs_the_readme_test_command_and_nothing_else():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    test_command = next(b for b in blocks if b.startswith("python3 -m venv .venv") and "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in ci if line.strip() and not line.startswith("#")]
    assert commands[-1] == test_command
    assert all(c.startswith(("set ", "cd ")) for c in commands[:-1])
