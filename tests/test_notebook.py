"""The Colab notebook runs top to bottom on the CPU (few steps), so it keeps working."""
import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from conftest import FAST_COMPILE, REPO

NOTEBOOK = REPO / "notebooks" / "muse_jax_colab.ipynb"


@pytest.mark.slow
def test_colab_notebook_trains_samples_and_edits(tmp_path, monkeypatch):
    # The kernel inherits this environment: one CPU device, XLA's quicker compile, tiny runs.
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MUSE_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MUSE_NOTEBOOK_WORKDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()

    outputs = ["".join(o.get("text", "") for o in cell.get("outputs", []))
               for cell in nb.cells if cell.cell_type == "code"]
    assert "pip install" in nb.cells[1].source and not outputs[0]  # installed: skipped
    assert "1 devices: cpu" in outputs[1]
    assert "inpainting kept 100% of the unmasked tokens" in outputs[-1]
    # Four 64 px samples in a row; original, inpainted and edited in another.
    assert Image.open(tmp_path / "samples.png").size == (4 * 64, 64)
    assert Image.open(tmp_path / "edits.png").size == (3 * 64, 64)
    assert (tmp_path / "base" / "checkpoints").is_dir()
