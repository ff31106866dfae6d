"""notebooks/quickstart.ipynb runs top to bottom on CPU; any failing cell fails the test."""

import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_executes():
  # As a user opens it: from notebooks/, with the installed package and no PYTHONPATH.
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  env_path = os.environ.pop("PYTHONPATH", None)
  try:
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
    start = time.time()
    client.execute()  # raises CellExecutionError on the first failing cell
  finally:
    if env_path is not None:
      os.environ["PYTHONPATH"] = env_path
  errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  assert time.time() - start < 300  # the goal is under 2 minutes on an idle CPU
  text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "same predictions: True" in text
