"""notebooks/visualise.ipynb runs top to bottom headless and draws its pictures."""

import os

import nbformat
from nbclient import NotebookClient
from PIL import Image

from tests._tiny_run import ROOT

NOTEBOOK = ROOT / "notebooks" / "visualise.ipynb"


def test_visualise_notebook_runs_and_draws(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    # The defaults are the fast path already (FAST = True, no checkpoints); pin them here so that a
    # notebook saved with other values still tests the fast path.
    parameters.source += "\nDEPTH_CKPT = SEG_CKPT = None\nFAST = True\nNUM_IMAGES = 2\n"
    # The kernel works in tmp_path/notebooks, so the checkpoints it trains (under ../outputs) land in
    # tmp_path, not in the repository; it imports this checkout, as the tests do (pythonpath ".").
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute(env={**os.environ, "PYTHONPATH": pythonpath})

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    # depth comparison, colour-bar picture, segmentation comparison, overlays, PCA
    assert len(pictures) >= 5, f"expected at least 5 pictures, got {len(pictures)}"
    assert (tmp_path / "outputs" / "notebook" / "quick_depth.ckpt").is_file()
    # The same figures as files, for a headless run (nbconvert --execute) too.
    figures = tmp_path / "outputs" / "notebook" / "figures"
    names = ["depth", "depth_colorbar", "overlay", "pca", "segmentation"]
    assert sorted(p.stem for p in figures.glob("*.png")) == names
    for name in names:
        with Image.open(figures / f"{name}.png") as picture:
            assert picture.width > 200 and picture.height > 100, name
