"""`make demo`'s job (muse_jax/demo.py) end to end on the tiny configs, and its pictures."""
import json
import multiprocessing
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from muse_jax import demo, inference, sampling, shapes_evals, training
from muse_jax.config import ConfigError


def test_captioned_puts_the_enlarged_image_above_its_prompt():
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:8, 4:8] = (255, 0, 0)
    panel = demo.captioned(image, "a red square at the top left and some more words to wrap")
    size = 16 * demo.SCALE
    assert panel.shape[1] == size and panel.shape[0] > size + 20  # two lines of text below
    np.testing.assert_array_equal(panel[:size, :size], np.kron(image, np.ones((3, 3, 1), np.uint8)))
    text = panel[size:]
    assert (text.min(axis=-1) < 128).sum() > 50  # dark glyphs on white


def test_tile_places_panels_in_rows():
    panels = [np.full((10, 8, 3), i * 40, np.uint8) for i in range(5)]
    out = demo.tile(panels, columns=2, gap=2)
    assert out.shape == (3 * 12 + 2, 2 * 10 + 2, 3)
    np.testing.assert_array_equal(out[2 + 12:2 + 12 + 10, 2 + 10:2 + 10 + 8], panels[3])


class _Trains(Exception):
    pass


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_what_it_trained(tmp_path, monkeypatch, capsys):
    options = sampling.SamplingOptions(steps=2, guidance=1.0)
    work, out = tmp_path / "work", tmp_path / "out"
    first = demo.run(str(work), str(out), num_eval=4, options=options, variant="tiny",
                     train_tokenizer=True)
    for name in ("samples.png", "inpaint.png", "outpaint.png", "edit.png", "curves.png",
                 "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert len(report["samples"]) == demo.NUM_PROMPTS
    assert set(report["edits"]) == {"inpaint", "outpaint", "edit"}
    assert set(report["oracle"]) == {"canonical", "held_out"}
    assert 0.0 <= first["oracle"]["match"] <= 1.0 and report["oracle"]["canonical"]["num_samples"] == 4
    assert report["oracle"]["held_out"]["phrasing"] == "held_out"
    # The grid is the first images the oracle scored in each wording, prompts as they were asked.
    pipe = inference.load(str(work / "base_shapes"))
    asked = [shapes_evals.eval_source(pipe, "test", phrasing=p).get_caption(i)
             for p in ("canonical", "held_out") for i in range(demo.NUM_PROMPTS // 2)]
    assert [s["prompt"] for s in report["samples"]] == asked and asked[0] != asked[4]
    assert not any(p.reused for p in first["phases"])
    text = (out / "report.md").read_text()
    assert f"{first['oracle']['match']:.1%}" in text and "train the base model" in text
    assert "phrasings training never used" in text
    # Exact matches split by the scene's object count, beside the overall figure.
    counts = first["oracle"]["match_by_objects"]
    assert counts and set(counts) <= set("0123")
    by_objects = ", ".join(f"{n}: {m:.0%}" for n, m in counts.items())
    assert f"**{first['oracle']['match']:.1%}** | {by_objects} |" in text
    # Each phase's CPU time beside its wall time; their ratio is how many cores it kept busy.
    wall, cpu = (sum(getattr(p, k) for p in first["phases"]) for k in ("seconds", "cpu_seconds"))
    assert all(p.cpu_seconds > 0 for p in first["phases"])
    assert f"| total | {wall:.0f} s | {cpu:.0f} s | {cpu / wall:.2f} |" in text
    assert f"On {len(jax.devices())} CPU devices, " in text
    assert f"among its {demo.DEMO_EDIT_KEEP} most likely keeps its value" in text
    # Each edit picture: the input, the input as its tokens decode, the result.
    for name in ("inpaint.png", "outpaint.png", "edit.png"):
        assert Image.open(out / name).width == 3 * 64 * demo.SCALE + 4 * 6, name
    assert "as its tokens decode" in text
    # How to sample the model as the demo did.
    assert (f"base_shapes \\\n    --guidance={options.guidance} --temperature="
            f"{options.temperature} --steps={options.steps} \\\n") in text
    # One page: every picture of report.md inlined, none left as a file reference.
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == text.count("](") == 5
    assert ".png)" not in page and "<table>" in page

    # A rerun reuses each finished phase: what `run` asks of each, checked phase by phase (two
    # more full runs cost 100 s of the suite's time on 2 cores). One more run, after the captions
    # changed, is stopped as it starts training.
    vq, base = demo.configs(str(work), "tiny", train_tokenizer=True)
    base_dir = str(work / "base_shapes")
    assert demo.trained(vq, base.tokenizer.workdir) and demo.trained(base, base_dir)
    inputs = demo.Phase("encode")
    demo.precompute(base, inputs)
    assert inputs.reused
    # Tokens removed (as `run` removes them when it trains a new tokenizer, tokens.json left as
    # it was) are made again, not taken as made.
    tokens = work / "tokens_train"
    kept = sorted(p.name for p in tokens.iterdir())
    shutil.rmtree(tokens)
    inputs = demo.Phase("encode")
    demo.precompute(base, inputs)
    assert not inputs.reused and sorted(p.name for p in tokens.iterdir()) == kept

    # A recipe changed since: a finished base run of another config is removed, to be trained
    # again (resuming it would stop at its last step). On a copy: the run is needed below.
    changed = work / "base_shapes_changed"
    shutil.copytree(base_dir, changed)
    assert demo.trained(base, str(changed))
    run_config = changed / "config.json"
    record = json.loads(run_config.read_text())
    record["optim"]["lr"] *= 2
    run_config.write_text(json.dumps(record))
    assert not demo.trained(base, str(changed)) and not changed.exists()

    # Caption embeddings made from other captions or another text config (captions.json records
    # what they were made from) are made again, and the base model is trained again on them
    # (stopped here as it starts: training itself is the first run's).
    stamp = work / "captions.json"
    record = json.loads(stamp.read_text())
    layers = f'"num_layers": {base.text.num_layers}'
    assert record["text"]["num_layers"] == base.text.num_layers
    first_stamp = record["captions_sha256"]
    assert len(first_stamp) == 64
    record["captions_sha256"] = "0" * 64
    stamp.write_text(json.dumps(record))
    embeddings = work / "minilm_train" / "metadata.json"
    assert layers in embeddings.read_text()
    embeddings.write_text(embeddings.read_text().replace(layers, '"num_layers": 3'))
    (work / "inputs.json").write_text("{}")  # the older stamp of both inputs, gone when it runs
    trainings = []

    def train_and_evaluate(config, workdir, **kwargs):
        trainings.append((workdir, os.path.exists(workdir), config.train.num_steps))
        raise _Trains()

    monkeypatch.setattr(training, "train_and_evaluate", train_and_evaluate)
    capsys.readouterr()
    with pytest.raises(_Trains):
        demo.run(str(work), str(out), num_eval=4, options=options, variant="tiny",
                 train_tokenizer=True)
    assert not (work / "inputs.json").exists()
    # The tokenizer was kept; the base run, trained on the old embeddings, was removed first.
    assert trainings == [(base_dir, False, base.train.num_steps)]
    assert json.loads(stamp.read_text())["captions_sha256"] == first_stamp
    assert layers in embeddings.read_text()
    printed = capsys.readouterr().out.splitlines()
    ends = [line for line in printed if line.startswith("== ") and " s of CPU" in line]
    assert [line.endswith("(reused)") for line in ends] == [True, False], ends


def test_a_failed_tokenizer_phase_stops_the_caption_encoding_beside_it(tmp_path):
    """An error while the captions encode aside ends their process with the block: the error
    is not held back until the encoding is done, and nothing half-made counts as made."""
    with pytest.raises(RuntimeError, match="the tokenizer failed"):
        with demo.captions_encoded_aside(str(tmp_path), "tiny"):
            raise RuntimeError("the tokenizer failed")
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "captions.json").exists()  # the stamp the encoding writes last


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(demo.UserError, match="num_eval"):
        demo.run(str(tmp_path), str(tmp_path / "out"), num_eval=0,
                 options=sampling.SamplingOptions(), variant="tiny")
    # The tiny recipe has no shipped tokenizer: one line saying to train one.
    with pytest.raises(ConfigError, match="trained with another config .*--train_tokenizer"):
        demo.run(str(tmp_path), str(tmp_path / "out"), num_eval=4,
                 options=sampling.SamplingOptions(), variant="tiny")
    assert multiprocessing.active_children() == []


def test_the_report_says_which_tokenizer_the_demo_used(tmp_path):
    """Shipped: the report names it and the flag that trains one; trained: neither."""
    from muse_jax import demo_report

    vq, base = demo.configs(str(tmp_path), "demo")
    timer = demo.Timer()
    with timer.phase("install the shipped shapes tokenizer"):
        pass
    oracle = {"num_samples": 4, "match": 1.0, "match_by_objects": {"1": 1.0}, "color": 1.0,
              "shape": 1.0, "cell": 1.0}
    texts = {shipped: demo_report.markdown(
        timer, sampling.SamplingOptions(), sampling.EditOptions(), {"canonical": oracle},
        [{"prompt": "a red circle", "match": True}], {}, vq, base, str(tmp_path), paste=True,
        tokenizer_shipped=shipped) for shipped in (True, False)}
    assert texts[True].startswith(
        "# muse_jax demo\n\nShapes tokenizer (2500 steps; the one muse_jax ships, trained by the "
        "same recipe: `python -m muse_jax.demo --train_tokenizer` trains it here) and base model")
    assert "the base model trained on this" in texts[True]
    assert texts[False].startswith("# muse_jax demo\n\nShapes tokenizer (2500 steps) and base")
    assert "both trained on this" in texts[False] and "--train_tokenizer" not in texts[False]
