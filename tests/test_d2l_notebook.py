"""notebooks/alexnet.ipynb runs in a real Jupyter kernel and its board draws in the cell."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent


def test_alexnet_notebook_trains_and_the_board_draws(fashion_dir, tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "alexnet.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    params[0].source = "SUBSET = 128  # one batch\nEPOCHS = 1"
    # The kernel imports this checkout's alexnet, whatever is installed, and starts in tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    fit = next(c for c in nb.cells if "trainer.fit" in c.source)
    images = [o for o in fit.outputs if o.output_type == "display_data" and "image/svg+xml" in o.data]
    assert len(images) == 1  # one figure, redrawn in place, not one per point
    assert "<svg" in images[0].data["image/svg+xml"] and len(images[0].data["image/svg+xml"]) > 5000
    text = "".join(o.get("text", "") for o in fit.outputs if o.output_type == "stream")
    assert "epoch 1/1  train_loss" in text and "val_acc" in text
    assert not list(tmp_path.glob("*.png"))  # in Jupyter the board is shown, not saved
    summary = next(c for c in nb.cells if "layer_summary" in c.source and "class" not in c.source)
    assert "torch.Size([1, 96, 54, 54])" in summary.outputs[0].text
