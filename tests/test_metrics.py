"""The metric writers: TensorBoard events read back by TensorBoard, the steps/s report, and
training's writers importing no TensorFlow."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import tensorboard_events
from muse_jax import metrics


def test_tensorboard_reads_back_what_was_written(tmp_path):
    writer = metrics.create_writer(str(tmp_path))
    writer.write_scalars(3, {"loss": 1.5, "accuracy": 0.25})
    writer.write_scalars(4, {"loss": 1.25})
    image = np.zeros((1, 6, 10, 3), np.uint8)
    image[0, :, 5:] = 200
    writer.write_images(4, {"samples": image})
    writer.close()
    events = tensorboard_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 1.5), (4, 1.25)]
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(3, 0.25)]
    (written,) = events.Images("samples")
    assert (written.step, written.width, written.height) == (4, 10, 6)
    from PIL import Image
    import io
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(written.encoded_image_string))),
                                  image[0])
    assert metrics.read_jsonl(str(tmp_path / "metrics.jsonl")) == {
        3: {"step": 3, "loss": 1.5, "accuracy": 0.25}, 4: {"step": 4, "loss": 1.25}}


def test_step_rate_reports_steps_per_second_since_the_last_report(monkeypatch):
    written = []

    class Scalars:
        def write_scalars(self, step, scalars):
            written.append((step, scalars))

    clock = iter([103.0, 110.0, 112.0, 130.0])
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock))
    rate = metrics.StepRate(num_steps=100, writer=Scalars(), every_secs=10.0)
    rate(1)  # t=103: the first step (compilation) starts the clock
    rate(5)  # t=110: 7 s, too soon
    rate(21)  # t=112: 9 s... still too soon
    rate(45)  # t=130: 44 steps in 27 s
    assert written == [(45, {"steps_per_sec": pytest.approx(44 / 27)})]


def test_training_writers_import_no_tensorflow(tmp_path):
    """clu's writers would import TensorFlow: 5.6 s of each training process's start."""
    code = ("import sys; from muse_jax import train, training, metrics; "
            f"w = metrics.create_writer({str(tmp_path)!r}); w.write_scalars(1, {{'loss': 1.0}}); "
            "w.close(); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'clu')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
