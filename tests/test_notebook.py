"""docs/lecture.ipynb runs from top to bottom, headless, in a kernel of this interpreter, and
writes nothing: every call in it passes tracking=False."""

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat", reason="the dev extra's notebook packages are not installed")
nbclient = pytest.importorskip("nbclient", reason="the dev extra's notebook packages are not installed")


@pytest.mark.slow
def test_the_lecture_notebook_runs_and_shows_its_figures(tmp_path, monkeypatch):
    from ipykernel.kernelspec import write_kernel_spec

    # the kernel named in the notebook, python3, is this interpreter (where harness is), whatever
    # kernels the machine has: a spec of its own, first on the Jupyter path for this test only
    spec = write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    assert json.loads((Path(spec) / "kernel.json").read_text())["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    work.mkdir()

    notebook = nbformat.read(ROOT / "docs" / "lecture.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # a cell that raises fails the test, with the cell and its traceback

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 5  # the boundary grid, the last boundary, the curves, the histogram, the comparison
    text = "".join(o.get("text", "") for o in outputs)
    assert "seeds held the target" in text and "zeros:    0 of 1000 seeds reached the target" in text
    assert list(work.iterdir()) == []  # no mlruns/, nothing else
