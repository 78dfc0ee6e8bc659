"""notebooks/quickstart.ipynb runs from top to bottom without an error, and is stored without outputs.

The notebook is executed with nbclient in a fresh working directory by a kernel that runs this interpreter
(``sys.executable``), declared in a kernelspec written for the test, so a kernel registered elsewhere on the
machine (another Python, another environment) is never picked up.
"""

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "covidseg-test-python"
CELL_TIMEOUT_S = 600
TARGET_S = 180
"""The notebook should run in under three minutes on the project's 2-core CPU (reported, not enforced)."""


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the quickstart has code cells"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "widgets" not in nb.metadata


@pytest.fixture
def this_interpreter_kernel(tmp_path, monkeypatch):
    """A kernelspec for ``sys.executable`` that only this test sees (JUPYTER_PATH points at it)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "covidseg test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    return KERNEL


def test_quickstart_notebook_executes_without_errors(tmp_path, this_interpreter_kernel):
    work = tmp_path / "run"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=this_interpreter_kernel,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(work)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell and the traceback on any error
    elapsed = time.perf_counter() - start
    nbformat.write(nb, tmp_path / "executed.ipynb")  # for a look after a failure
    print(f"quickstart notebook executed in {elapsed:.0f} s (target {TARGET_S} s on 2 idle cores)")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    work_dir = work / "quickstart-work"
    assert (work_dir / "prediction" / "scan_labels.nii.gz").is_file()
    assert (work_dir / "drift.png").stat().st_size > 10_000
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # slice, curves, overlay, overview, drift
