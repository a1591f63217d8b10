"""`evaluate --eval=fid_clip` and `--eval=tokenizer` end to end on tiny shapes runs, resuming.

The metric networks are random here (Inception through --inception_weights=random, a tiny
random CLIPModel directory), so the numbers mean nothing: these tests prove the path, the
batching and the resumption; the networks' parity is tested in test_inception.py,
test_clip_score.py and test_lpips.py.
"""
import json

import numpy as np
import pytest

from conftest import ONE_FAST_DEVICE, run_module
from muse_jax import sampling
from muse_jax.errors import UserError
from muse_jax.quality import evals, fid_clip, resume

# Every test here needs the trained runs of the fixture (~1 minute on 2 free cores).
pytestmark = pytest.mark.slow


@pytest.fixture
def runs(quality_runs):
    return quality_runs  # conftest.py: shared with tests/test_multiprocess.py


def _fake_inception(images):
    """A cheap stand-in feature map (fixed random projection of the pixels), for the loop."""
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    return np.tanh(flat @ np.random.default_rng(0).standard_normal((flat.shape[1], 2048)) / 30)


class _Crash(Exception):
    pass


def test_a_stopped_fid_run_resumes_to_the_uninterrupted_result(runs, tmp_path):
    from muse_jax import inference

    pipe = inference.load(str(runs / "base"))
    prompts = (runs / "prompts.txt").read_text().splitlines()[:8]
    options = sampling.SamplingOptions(steps=2)
    ref = evals.Reference().data_config(pipe.config, 8, 4)
    clip = lambda images, batch: np.full(len(batch), 20.0)  # noqa: E731
    calls = []

    def crashing_clip(images, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise _Crash()
        return clip(images, batch)

    def run(out, score):
        return fid_clip.fid_clip(pipe, prompts, evals.reference_batches(ref), _fake_inception,
                                 score, options, 0, 4, str(out), {"n": 8})

    whole = run(tmp_path / "whole", clip)
    with pytest.raises(_Crash):
        run(tmp_path / "stopped", crashing_clip)
    resumed = run(tmp_path / "stopped", clip)
    assert resumed["resumed_at_batch"] == 1 and whole["resumed_at_batch"] == 0
    assert resumed["fid"] == pytest.approx(whole["fid"], rel=1e-9) and whole["fid"] > 0
    assert resumed["clip_score"] == whole["clip_score"] == 20.0
    with pytest.raises(UserError, match="other settings"):
        resume.BatchProgress(str(tmp_path / "stopped" / "samples"), {"n": 9}, {"samples": 2048})


def test_fid_clip_cli_end_to_end(runs, tmp_path):
    args = ["--eval=fid_clip", f"--workdir={runs / 'base'}", f"--prompts={runs / 'prompts.txt'}",
            "--num_samples=8", "--batch_size=4", "--steps=2", "--inception_weights=random",
            f"--clip_dir={runs / 'clip'}", f"--output={tmp_path / 'out'}"]
    result = json.loads(run_module("muse_jax.evaluate", *args, env=ONE_FAST_DEVICE,
                                   check=True).stdout)
    assert np.isfinite(result["fid"]) and result["fid"] >= 0
    assert 0 <= result["clip_score"] <= 100 and result["num_reference"] == 8
    assert result["seconds_per_1000_samples"] > 0
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == result


def test_tokenizer_scores(runs, tmp_path):
    """In process, with the stand-in Inception and the real LPIPS (the CLI path is the same
    evals.py call as fid_clip's, run end to end above)."""
    from muse_jax.models import perceptual
    from muse_jax.quality import scorers, tokenizer_eval
    from muse_jax.tasks import vqgan

    model, params, config = vqgan.load_tokenizer(str(runs / "tokenizer"))
    ref = evals.Reference().data_config(config, 8, 4)
    lpips = {net: scorers.lpips_from_file(perceptual.installed_weights(net), net)
             for net in ("alex", "vgg")}
    result = tokenizer_eval.tokenizer_scores(model, params, config.model.codebook_size,
                                             evals.reference_batches(ref), 2, _fake_inception,
                                             lpips, str(tmp_path), {"n": 8})
    assert result["num_images"] == 8 and result["rfid"] > 0 and 0 < result["psnr"] < 60
    assert 0 < result["lpips_alex"] < 2 and 0 < result["lpips_vgg"] < 2
    assert abs(result["lpips_alex"] - result["lpips_vgg"]) > 1e-3  # two nets, two figures
    assert 0 < result["codebook_usage"] <= 1 and result["perplexity"] >= 1
    # The counts of a 2-step tokenizer: fewer codes in use than a trained one, but some.
    assert result["codebook_usage"] * config.model.codebook_size >= 1


def test_missing_weights_and_inputs_are_one_line(runs, tmp_path):
    out = run_module("muse_jax.evaluate", "--eval=fid_clip", f"--workdir={runs / 'base'}",
                     "--num_samples=4", f"--prompts={runs / 'prompts.txt'}",
                     f"--clip_dir={runs / 'clip'}",
                     f"--inception_weights={tmp_path / 'pt_inception.pth'}", env=ONE_FAST_DEVICE)
    assert out.returncode == 2 and "pt_inception-2015-12-05" in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    out = run_module("muse_jax.evaluate", "--eval=tokenizer", f"--workdir={runs / 'tokenizer'}",
                     "--num_samples=4", "--inception_weights=random",
                     f"--lpips_alex_weights={tmp_path / 'alexnet.ckpt'}", env=ONE_FAST_DEVICE)
    assert out.returncode == 2 and "weights/alexnet.ckpt" in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    common = dict(workdir=str(runs / "base"), reference=evals.Reference(), num_samples=4,
                  batch_size=4, options=sampling.SamplingOptions(steps=2), seed=0,
                  output=str(tmp_path / "out"))
    for kwargs, message in [
            (dict(prompts_file=str(tmp_path / "none.txt"), inception_weights="random",
                  clip_dir="x"), "not found"),
            (dict(prompts_file=str(runs / "prompts.txt"), inception_weights="random",
                  clip_dir=str(tmp_path)), "CLIP checkpoint"),
            (dict(prompts_file=str(runs / "prompts.txt"), inception_weights="",
                  clip_dir=str(runs / "clip")), "--inception_weights")]:
        with pytest.raises(UserError, match=message) as e:
            evals.fid_clip(**common, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="needs --reference"):
        evals.Reference("image_folder").data_config(None, 4, 4)
