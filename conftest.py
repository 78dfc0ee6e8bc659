"""Project-wide pytest set-up, shared by the tests under ``tests/`` and the doctests under ``covidseg/``.

Doctests and the code they run create scratch folders with :func:`tempfile.mkdtemp` (checkpoints, label maps,
figures). Left in the system temporary folder, every test run would leave hundreds of megabytes behind, and on a
machine whose disk is shared a few runs fill it. Each test therefore gets its temporary folder inside pytest's own
``tmp_path`` tree, for this process and for the subprocesses it starts, and pytest removes it once the test
passed (``tmp_path_retention_policy`` in ``pyproject.toml``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _temporary_files_inside_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Points :mod:`tempfile` and ``TMPDIR`` at a fresh folder that pytest cleans up."""
    scratch = tmp_path_factory.mktemp("tempfile")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(scratch))
        patch.setenv("TMPDIR", str(scratch))
        yield
