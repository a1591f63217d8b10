"""benchmarks/device_check.sh, the GPU check, in its --smoke mode on the CPU (its GPU path has no
test here: no GPU in CI), with grain stubbed as on the lent machine's image."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "benchmarks"))
import device_check  # noqa: E402  (stdlib imports only; base_step.py is imported in subprocesses)


def test_peak_table_reads_device_kinds():
    assert device_check.peak_for("NVIDIA H100 80GB HBM3")[0] == 989.4e12  # SXM
    assert device_check.peak_for("NVIDIA H200")[0] == 989.4e12
    assert device_check.peak_for("NVIDIA H100 PCIe")[0] == 756e12
    assert device_check.peak_for("NVIDIA H200 NVL")[0] == 835.5e12
    peak, source = device_check.peak_for("cpu")
    assert peak is None and "not computed" in source


@pytest.mark.slow  # 26 s on the loaded 2-core machine: paper-size eval_shape in a subprocess
def test_six_pt_flops_agree_with_the_matmul_count_at_paper_size():
    # In a subprocess: base_step.py's absl flags would clash with muse_jax.sampling_flags'.
    code = ("import sys; sys.path[:0] = ['benchmarks', '.']; import jax, device_check as d; "
            "from muse_jax import tasks; c = d.base_config(d.parse_args([])); "
            "p = d.count(jax.eval_shape(tasks.create(c).init_state, jax.random.key(0)).params); "
            "f = d.train_flops(c, 128, p); print(p, f['six_pt_plus_attention'] / f['matmul_count'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    params, ratio = result.stdout.split()[-2:]
    assert 600e6 < int(params) < 700e6  # "632M"
    # 6PT counts the text-side projections per image token, the matmul count per text token.
    assert 0.9 < float(ratio) < 1.2, ratio


@pytest.mark.slow
def test_smoke_run_prints_and_writes_every_part(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(tmp_path),
           "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--smoke", "--force_stub=grain",
         "--batch=4", "--fake_oom_above=2"],  # a (fake) out-of-memory error halves the batch
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert printed["train"] == report["train"]
    assert "== device_check" in result.stdout and "% (6PT" not in result.stdout  # no CPU peak
    assert report["benchmark"] == "device_check" and report["smoke"] and report["complete"]
    assert report["errors"] == [] and report["skipped"] == []
    assert len(report["oom_halvings"]) == 1 and "batch 4 ran out of memory" in result.stdout
    assert report["stubbed_modules"] == ["grain"]
    assert report["device_kind"] and report["platform"] == "cpu" and report["peak_bf16"] is None

    train = report["train"]
    assert train["dims"]["dtype"] == "bfloat16" and train["dims"]["remat"]
    assert train["batch"] == 2 and train["optimizer"] == "adafactor"
    assert train["step_s_median"] > 0 and train["compile_s"] > 0
    assert train["examples_per_s"] == pytest.approx(2 / train["step_s_median"])
    assert math.isfinite(train["last_loss"]) and train["nonfinite"] == 0.0
    assert set(train["model_flops"]) == {"six_pt_plus_attention", "attention", "matmul_count"}

    sampling = {(s["model"], s["batch"]): s for s in report["sampling"]}
    assert set(sampling) == {("base_256", 2), ("amused_256", 2)}
    for s in sampling.values():
        assert s["steps"] == 2 and s["dims"]["dtype"] == "bfloat16"
        assert s["compile_s"] > 0 and 0 < s["median_s"] and s["runs"] == 2
    assert sampling[("amused_256", 2)]["dims"]["text_len"] == 8
    decoder = {(d["dtype"], d["batch"]): d for d in report["decoder"]}
    assert set(decoder) == {("float32", 2)}  # bfloat16 too off --smoke
    assert all(d["finite"] and d["median_s"] > 0 for d in decoder.values())


def test_random_params_match_the_init_tree_without_running_it():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    model = nn.Sequential([nn.Dense(512), nn.LayerNorm(), nn.Dense(8)])
    init = lambda k: model.init(k, jnp.ones((1, 64)))["params"]  # noqa: E731
    params = device_check.random_params(init, jax.random.key(0))
    want = jax.eval_shape(init, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(want)
    assert all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
    assert np.all(params["layers_1"]["scale"] == 1) and np.all(params["layers_1"]["bias"] == 0)
    kernel = np.asarray(params["layers_0"]["kernel"])  # 32768 draws: std within 2% of 0.02
    assert abs(kernel.std() - 0.02) < 4e-4 and abs(kernel.mean()) < 4e-4
    other = np.asarray(params["layers_2"]["kernel"]).ravel()  # its own key: other draws
    assert abs(np.corrcoef(kernel.ravel()[:other.size], other)[0, 1]) < 0.1
