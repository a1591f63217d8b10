"""The shapes tokenizer muse_jax ships (muse_jax/shipped_tokenizer.py), which `make demo` installs."""
import json

import flax
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_module
from muse_jax import demo, runs, shipped_tokenizer
from muse_jax.config import ConfigError
from muse_jax.tasks import vqgan


def test_the_shipped_tokenizer_is_the_demo_recipe_and_reconstructs_as_recorded(tmp_path):
    """Installed, it is the demo recipe's tokenizer, bit for bit the weights shipped, and scores
    on the held-out scenes what its training's eval recorded (34.73 dB): a changed recipe, a
    lossy install or a model whose code drifted from the weights fails here."""
    vq, base = demo.configs(str(tmp_path), "demo")
    assert not shipped_tokenizer.install(vq, base.tokenizer.workdir)
    assert shipped_tokenizer.install(vq, base.tokenizer.workdir)  # already there: reused
    assert not demo.trained(vq, base.tokenizer.workdir)  # never taken for a run trained here

    _, params, config = vqgan.load_tokenizer(base.tokenizer.workdir)
    assert runs.differing_keys(base.tokenizer.workdir, vq) == []
    shipped = load_file(str(shipped_tokenizer.ASSET / "params.safetensors"))
    installed = flax.traverse_util.flatten_dict(params, sep="/")
    assert len(installed) == len(shipped) == 89
    for name, value in installed.items():
        np.testing.assert_array_equal(np.asarray(value), shipped[name], err_msg=name)

    record = json.loads((shipped_tokenizer.ASSET / "provenance.json").read_text())
    scores = shipped_tokenizer.eval_scores(base.tokenizer.workdir)
    assert scores["eval_images"] == record["eval_images"] == config.data.eval_size == 256
    assert scores["eval_psnr"] == pytest.approx(record["eval_psnr"], abs=0.01)
    assert record["eval_psnr"] > 34.5 and record["step"] == vq.train.num_steps == 2500
    assert scores["eval_codebook_usage"] == pytest.approx(record["eval_codebook_usage"], abs=2 / 256)


def test_export_then_install_gives_back_the_run(tokenizer_dir, tmp_path):
    """`python -m muse_jax.ship_tokenizer` writes a run as the asset; installed, it is that run."""
    asset = tmp_path / "asset"
    result = run_module("muse_jax.ship_tokenizer", f"--workdir={tokenizer_dir}", f"--out={asset}",
                        check=True)
    record = json.loads((asset / "provenance.json").read_text())
    assert result.stdout.strip() == (f"wrote {asset}: step 2, {record['eval_psnr']:.2f} dB, "
                                     f"{record['eval_codebook_usage']:.1%} of the codebook in use")
    assert sorted(p.name for p in asset.iterdir()) == sorted(shipped_tokenizer.FILES)
    config = runs.open_run(str(tokenizer_dir), "vqgan").config
    assert record["step"] == config.train.num_steps == 2

    installed = tmp_path / "installed"
    assert not shipped_tokenizer.install(config, str(installed), asset)
    _, original, _ = vqgan.load_tokenizer(str(tokenizer_dir))
    _, params, _ = vqgan.load_tokenizer(str(installed))
    a, b = (flax.traverse_util.flatten_dict(p, sep="/") for p in (original, params))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert runs.open_run(str(installed), "vqgan").state()["step"] == 2
    assert shipped_tokenizer.eval_scores(str(installed))["eval_psnr"] == pytest.approx(
        record["eval_psnr"], abs=1e-4)

    # Other weights shipped since (the stamp records another file): installed again.
    stamp = installed / shipped_tokenizer.STAMP
    stamp.write_text(json.dumps({"params_sha256": "0" * 64}))
    (installed / "leftover").write_text("from the old install")
    assert not shipped_tokenizer.install(config, str(installed), asset)
    assert not (installed / "leftover").exists()
    assert json.loads(stamp.read_text())["params_sha256"] == record["params_sha256"]


def test_ship_tokenizer_names_a_missing_run_in_one_line(tmp_path):
    result = run_module("muse_jax.ship_tokenizer", f"--workdir={tmp_path / 'none'}",
                        f"--out={tmp_path / 'asset'}")
    assert result.returncode == 2 and not (tmp_path / "asset").exists()
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: --workdir '{tmp_path / 'none'}' has no config.json: train a vqgan run first")


def test_install_refuses_another_recipe_and_an_incomplete_asset(tmp_path):
    tiny = demo.configs(str(tmp_path), "tiny", train_tokenizer=True)[0]
    with pytest.raises(ConfigError, match=r"trained with another config \(.*model\.channels.*"
                                          r"differ\): train one \(demo: --train_tokenizer\)"):
        shipped_tokenizer.install(tiny, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()

    (tmp_path / "asset").mkdir()
    (tmp_path / "asset" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="incomplete: missing params.safetensors, "
                                          "provenance.json; expected config.json, .*"
                                          r"\(python -m muse_jax.ship_tokenizer --workdir"):
        shipped_tokenizer.install(tiny, str(tmp_path / "run"), tmp_path / "asset")
