"""`muse_jax.sample` and `muse_jax.evaluate` on a tiny trained base model."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ONE_FAST_DEVICE, run_module
from muse_jax import sampling
from muse_jax.errors import UserError
from muse_jax.inference import load, sample_tokens, shift_canvas, token_mask_from_pixels


@pytest.fixture(scope="module")
def base_dir(tiny_base):
    return tiny_base  # conftest.py: its tokenizer beside it, in base_dir.parent / "tokenizer"


@pytest.fixture(scope="module")
def pipe(base_dir):
    return load(str(base_dir))


def test_same_seed_same_tokens(pipe):
    options = sampling.SamplingOptions(steps=3)
    prompts = ["a red circle at the center", "a blue square at the top left"]
    a = sample_tokens(pipe, prompts, options, seed=1)
    b = sample_tokens(pipe, prompts, options, seed=1)
    c = sample_tokens(pipe, prompts, options, seed=2)
    assert a.shape == (2, 256) and (a < 64).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_inpainting_keeps_every_token_outside_the_mask(pipe):
    image = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    tokens = np.repeat(pipe.tokens_of(image), 3, axis=0)
    pixel_mask = np.zeros((64, 64), bool)
    pixel_mask[20:40, 8:30] = True
    hole = token_mask_from_pixels(pixel_mask, 16)
    assert hole.sum() == 5 * 6  # rows 5..9, columns 2..7 of 4-pixel patches
    canvas = np.where(hole[None], pipe.model.mask_id, tokens)
    out = sample_tokens(pipe, ["a green triangle at the center"] * 3,
                        sampling.SamplingOptions(steps=4), seed=0, canvas=canvas)
    np.testing.assert_array_equal(out[:, ~hole], tokens[:, ~hole])
    assert (out[:, hole] != pipe.model.mask_id).all()


def test_outpaint_canvas_shifts_and_masks():
    tokens = np.arange(16).reshape(1, 16)
    canvas = shift_canvas(tokens, 4, "left", 1, 99).reshape(4, 4)
    assert (canvas[:, 0] == 99).all() and (canvas[:, 1:] == np.arange(16).reshape(4, 4)[:, :3]).all()


def test_paste_unchanged_takes_the_input_where_the_tokens_and_their_neighbours_stayed():
    from muse_jax.inference import paste_unchanged

    rng = np.random.default_rng(0)
    image, result = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    before = np.zeros((1, 256), np.int32)
    after = before.copy()
    after[0, 8 * 16 + 8] = 5  # token (8, 8): pixels 32..35 of 4-pixel patches
    np.testing.assert_array_equal(paste_unchanged(result[None], image[None], before, before),
                                  image[None])
    np.testing.assert_array_equal(paste_unchanged(result[None], image[None], before + 1, before),
                                  result[None])
    out = paste_unchanged(result[None], image[None], after, before, margin=1)[0]
    # Tokens 7..9 (pixels 28..39) are the result's; a box of one token's width (4 px: pixel i
    # averages i-2..i+1) blends the seam, so pixels 30..38 are the result's alone and pixels
    # up to 26 and from 42 the input's alone.
    np.testing.assert_array_equal(out[30:39, 30:39], result[30:39, 30:39])
    far = np.ones((64, 64), bool)
    far[27:42, 27:42] = False
    np.testing.assert_array_equal(out[far], image[far])
    seam = out[29, 33] - result[29, 33]
    np.testing.assert_allclose(seam, 0.25 * (image[29, 33] - result[29, 33]), atol=1e-6)
    # margin 0: only the changed token's pixels (and the half-token seam) come from the result.
    out0 = paste_unchanged(result[None], image[None], after, before, margin=0)[0]
    np.testing.assert_array_equal(out0[34, 34], result[34, 34])
    np.testing.assert_array_equal(out0[29, 29], image[29, 29])
    # A larger image than the grid (the SR stage's): 8-pixel patches, token (8, 8) at 64..71.
    big = paste_unchanged(np.repeat(np.repeat(result[None], 2, 1), 2, 2),
                          np.repeat(np.repeat(image[None], 2, 1), 2, 2), after, before, margin=0)
    assert big.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(big[0, 68, 68], result[34, 34])
    with pytest.raises(UserError, match="cannot paste"):
        paste_unchanged(result[None], image[None, :32], after, before)


def test_an_image_shifts_as_its_outpainting_canvas_does():
    from muse_jax.inference import shift_image

    tokens = np.arange(16).reshape(1, 16)
    pixels = np.repeat(np.repeat(tokens.reshape(1, 4, 4), 3, 1), 3, 2)  # 3 px a token
    for direction in ("left", "right", "up", "down"):
        canvas = shift_canvas(tokens, 4, direction, 1, -1).reshape(1, 4, 4)
        np.testing.assert_array_equal(shift_image(pixels.astype(np.float32), 4, direction, 1),
                                      np.repeat(np.repeat(canvas, 3, 1), 3, 2))


@pytest.mark.slow
def test_sample_cli_inpaints_and_outpaints_keeping_the_inputs_own_pixels(base_dir, tmp_path):
    """--paste_unchanged: outside the mask (and 2.5 tokens around it) the output is the input
    itself, not the tiny tokenizer's drawing of it, which is far from the input's noise; an
    outpainting keeps the input where its tokens moved to."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 24:40] = 255  # tokens 6..9
    Image.fromarray(mask).save(tmp_path / "mask.png")
    outside = np.ones((64, 64), bool)
    outside[14:50, 14:50] = False  # tokens 4..11 blended over 2 px either side

    def sample(name, *args):
        out = tmp_path / f"{name}.png"
        run_module("muse_jax.sample", f"--workdir={base_dir}", "--prompt=a red circle",
                   f"--image={tmp_path / 'in.png'}", "--steps=2", "--num_images=1", *args,
                   f"--out={out}", env=ONE_FAST_DEVICE, check=True)
        return np.asarray(Image.open(out).convert("RGB"))

    mask_flag = f"--mask={tmp_path / 'mask.png'}"
    assert (sample("pasted", mask_flag, "--paste_unchanged")[outside] == noise[outside]).all()
    assert (sample("decoded", mask_flag)[outside] == noise[outside]).mean() < 0.1
    # left:4 moves the tokens 4 columns (16 px) right; tokens 0..5 are new or within 2 of them.
    moved = sample("outpainted", "--outpaint=left:4", "--paste_unchanged")
    np.testing.assert_array_equal(moved[:, 26:], noise[:, 10:48])


@pytest.mark.slow
def test_sample_cli_writes_grid_and_settings(base_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = run_module("muse_jax.sample", f"--workdir={base_dir}",
                        "--prompt=a red circle at the center",
                        "--prompt=a blue square at the top left", "--num_images=3", "--steps=4",
                        f"--out={out}", env=ONE_FAST_DEVICE, check=True)
    assert Image.open(out).size == (3 * 64, 2 * 64)
    # Libraries' INFO lines stay out of the terminal (Orbax's, when the checkpoint is read).
    for noise in ("_NonBlockingMetadataStore", "pytree_checkpoint_handler.py", "xla_bridge.py"):
        assert noise not in result.stderr, noise
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["steps"] == 4 and len(settings["prompts"]) == 2


_OPTIONS_OF = """
import json, sys
from absl import flags
from muse_jax import sampling_flags
sampling_flags.define()
for workdir, *args in json.loads(sys.argv[1]):  # one case a line: flags parsed afresh each time
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["sample", *args])
    options = sampling_flags.options(**sampling_flags.run_defaults(workdir))
    print(options.guidance, options.steps, options.temperature)
"""


def test_a_run_samples_at_its_own_guidance_temperature_and_preset_unless_flags_differ(base_dir,
                                                                                      tmp_path):
    """`sample` and `evaluate` read their defaults this way: a small model's config says
    guidance 1 and temperature 0.5, say; an imported aMUSEd run says preset amused."""
    config = json.loads((base_dir / "config.json").read_text())
    muse, amused = sampling.SamplingOptions(), sampling.AMUSED
    for name, own in (("own", {"guidance": 1.5, "temperature": 0.5}), ("older", {}),
                      ("imported", {"preset": "amused", "temperature": 0.5})):
        (tmp_path / name).mkdir()
        for key in ("guidance", "preset", "temperature"):  # older: saved before these keys
            config["eval"].pop(key, None)
        config["eval"].update(own)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    cases = (("own", [], (1.5, muse.steps, 0.5)),
             ("own", ["--guidance=3"], (3.0, muse.steps, 0.5)),
             ("own", ["--temperature=0"], (1.5, muse.steps, 0.0)),
             ("own", ["--preset=amused"], (amused.guidance, amused.steps, amused.temperature)),
             ("older", [], (muse.guidance, muse.steps, muse.temperature)),
             # The aMUSEd preset decodes as AmusedPipeline does, its run's temperature aside.
             ("imported", [], (amused.guidance, amused.steps, amused.temperature)),
             ("imported", ["--steps=5"], (amused.guidance, 5, amused.temperature)),
             ("imported", ["--preset=muse"], (muse.guidance, muse.steps, 0.5)))
    runs = json.dumps([[str(tmp_path / run), *args] for run, args, _ in cases])
    out = subprocess.run([sys.executable, "-c", _OPTIONS_OF, runs], capture_output=True,
                         text=True, check=True)
    lines = out.stdout.split("\n")[:len(cases)]
    for (run, args, want), line in zip(cases, lines, strict=True):
        guidance, steps, temperature = line.split()
        assert (float(guidance), int(steps), float(temperature)) == want, (run, args)


@pytest.mark.slow
def test_evaluate_cli_prints_oracle_scores(base_dir):
    result = run_module("muse_jax.evaluate", f"--workdir={base_dir}", "--num_samples=8",
                        "--steps=2", env=ONE_FAST_DEVICE, check=True)
    scores = json.loads(result.stdout)
    assert scores["steps"] == 2 and scores["num_samples"] == 8
    assert all(0.0 <= scores[k] <= 1.0 for k in ("match", "color", "shape", "cell"))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mask size", "empty prompts file", "zero steps", "no checkpoint",
                                  "non-UTF-8 prompts file", "paste without an edit"])
def test_bad_input_is_one_line(case, base_dir, tmp_path):
    args = [f"--workdir={base_dir}", "--prompt=a red circle at the center", f"--out={tmp_path}/x.png"]
    if case == "mask size":
        Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
        Image.new("L", (32, 32)).save(tmp_path / "mask.png")
        args += [f"--image={tmp_path}/in.png", f"--mask={tmp_path}/mask.png"]
        message = "mask.png is 32x32; this model works at 64x64"
    elif case == "empty prompts file":
        (tmp_path / "p.txt").write_text("\n\n")
        args = [f"--workdir={base_dir}", f"--prompts_file={tmp_path}/p.txt"]
        message = "holds no prompts"
    elif case == "non-UTF-8 prompts file":
        (tmp_path / "p.txt").write_bytes(b"a red circle\n\xff\xfe at the top\n")
        args = [f"--workdir={base_dir}", f"--prompts_file={tmp_path}/p.txt", f"--out={tmp_path}/x.png"]
        message = "p.txt is not UTF-8 text (line 2, byte 1: invalid start byte)"
    elif case == "paste without an edit":
        args.append("--paste_unchanged")
        message = "--paste_unchanged needs --edit, --mask or --outpaint"
    elif case == "zero steps":
        args.append("--steps=0")
        message = "steps must be >= 1"
    else:
        args[0] = f"--workdir={tmp_path}"
        message = "has no config.json"
    result = run_module("muse_jax.sample", *args, env=ONE_FAST_DEVICE)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


def test_inpaint_eval_regenerates_only_the_masked_cell(base_dir):
    from muse_jax import evaluate

    result = evaluate.evaluate(str(base_dir), "shapes_inpaint", 4,
                               sampling.SamplingOptions(steps=2), seed=0, batch_size=4)
    assert result["eval"] == "shapes_inpaint" and result["kept_tokens"] == 1.0
    assert all(0.0 <= result[k] <= 1.0 for k in ("match", "region", "color", "shape", "cell"))


def test_edit_eval_scores_the_changed_object_and_the_rest(base_dir):
    from muse_jax import evaluate

    edit = sampling.EditOptions(iterations=3, steps=2)
    result = evaluate.evaluate(str(base_dir), "shapes_edit", 4, sampling.SamplingOptions(),
                               seed=0, batch_size=4, edit_options=edit)
    assert result["eval"] == "shapes_edit" and result["edit_iterations"] == 3
    assert all(0.0 <= result[k] <= 1.0 for k in ("match", "changed", "rest_kept"))
    # 3 rounds of 8% re-masked: at most 1 - 0.92^3 = 22% of the tokens can change.
    assert 0.0 < result["changed_tokens"] < 0.3 and result["seconds_per_edit"] > 0
    # A dB figure (the tiny 6-step tokenizer reconstructs at ~8 dB), not a share.
    assert 3.0 < result["kept_psnr"] < 60.0
    # Every token kept (keep: all 64 codes rank among the 64 most likely), pasted: the input.
    keep_all = sampling.EditOptions(iterations=3, steps=2, keep=64)
    pasted = evaluate.evaluate(str(base_dir), "shapes_edit", 4, sampling.SamplingOptions(),
                               seed=0, batch_size=4, edit_options=keep_all, paste_unchanged=True)
    assert pasted["paste_unchanged"] and pasted["changed_tokens"] == 0.0
    assert pasted["kept_psnr"] > 100.0 and pasted["changed"] == 0.0  # ~8 dB decoded
    with pytest.raises(UserError, match="--paste_unchanged is for --eval=shapes_inpaint or "
                                        "shapes_edit, not shapes_oracle"):
        evaluate.evaluate(str(base_dir), "shapes_oracle", 4, sampling.SamplingOptions(),
                          paste_unchanged=True)


@pytest.mark.slow
def test_sample_cli_edits_with_the_papers_settings_and_choice_temperature(base_dir, tmp_path):
    Image.new("RGB", (64, 64), (24, 24, 24)).save(tmp_path / "in.png")
    out = tmp_path / "edited.png"
    run_module("muse_jax.sample", f"--workdir={base_dir}", "--prompt=a red circle at the center",
               f"--image={tmp_path / 'in.png'}", "--edit", "--edit_iterations=5",
               "--num_images=2", "--choice_temperature=1.5", f"--out={out}", env=ONE_FAST_DEVICE,
               check=True)
    assert Image.open(out).size == (2 * 64, 64)
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["choice_temperature"] == 1.5
    assert settings["edit_options"] == {"iterations": 5, "mask_rate": 0.08, "steps": 4, "top_k": 3,
                                        "keep": 0}


def test_repeated_calls_compile_nothing_more(pipe):
    """The pipeline builds each compiled function once: the second round of sampling, encoding,
    decoding and editing at the same shapes traces and compiles nothing."""
    from jax import monitoring

    from muse_jax import inference
    options = sampling.SamplingOptions(steps=2)
    edit = sampling.EditOptions(iterations=2, steps=1)
    prompts = ["a red circle at the center", "a blue square at the top left"]
    images = np.zeros((2, 64, 64, 3), np.float32)

    def everything():
        tokens = sample_tokens(pipe, prompts, options, seed=0, batch_size=2)
        pipe.decode(pipe.tokens_of(images))
        inference.edit(pipe, tokens, prompts, options, edit, seed=0, batch_size=2)

    everything()
    events = []
    listener = lambda name, duration, **kwargs: events.append(name)  # noqa: E731
    monitoring.register_event_duration_secs_listener(listener)
    try:
        everything()
        everything()
    finally:
        monitoring.unregister_event_duration_listener(listener)
    compiles = [e for e in events if e.startswith("/jax/core/compile/")]
    assert compiles == [], compiles


def test_a_run_copied_elsewhere_with_its_tokenizer_samples_from_another_directory(
        base_dir, tmp_path, monkeypatch):
    """config.json records the tokenizer relative to the run, so the pair moves as a whole."""
    import shutil

    from muse_jax import inference
    recorded = json.loads((base_dir / "config.json").read_text())["tokenizer"]["workdir"]
    assert recorded == "../tokenizer"
    moved = tmp_path / "moved"
    shutil.copytree(base_dir, moved / "base")
    shutil.copytree(base_dir.parent / "tokenizer", moved / "tokenizer")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    copy = inference.load(str(moved / "base"))
    assert copy.config.tokenizer.workdir == str(moved / "tokenizer")
    options = sampling.SamplingOptions(steps=2)
    prompt = ["a red circle at the center"]
    original = load(str(base_dir))
    np.testing.assert_array_equal(sample_tokens(copy, prompt, options, seed=3),
                                  sample_tokens(original, prompt, options, seed=3))
    # Relative to the current directory the copy is found too; the tokenizer still beside it.
    monkeypatch.chdir(tmp_path)
    assert inference.load("moved/base").config.tokenizer.workdir == str(moved / "tokenizer")


def test_a_run_in_a_gcs_bucket_samples_by_its_gs_url(base_dir, tmp_path, monkeypatch, pipe):
    """Runs live on GCS on TPU VMs: opened by URL through epath (and Orbax), never os.path."""
    import shutil

    import fake_gcs
    from muse_jax import inference
    shutil.copytree(base_dir.parent, tmp_path / "bucket" / "runs")
    fake_gcs.install(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path / "bucket")  # a relative "gs:/bucket/..." must not resolve either
    remote = inference.load("gs://bucket/runs/base")
    assert remote.config.tokenizer.workdir == "gs://bucket/runs/tokenizer"
    options = sampling.SamplingOptions(steps=2)
    prompt = ["a blue square at the top left"]
    np.testing.assert_array_equal(sample_tokens(remote, prompt, options, seed=4),
                                  sample_tokens(pipe, prompt, options, seed=4))
    with pytest.raises(Exception, match="gs://bucket/runs/nothing"):
        inference.load("gs://bucket/runs/nothing")


# ---------------------------------------------------------------------------- big jobs, bad --out
def test_out_that_cannot_be_written_fails_before_anything_loads(tmp_path):
    from muse_jax import sample
    from muse_jax.errors import UserError

    (tmp_path / "dir.png").mkdir()
    (tmp_path / "file").write_text("")
    for out, message in [(tmp_path / "x.json", "must name a .png file"),
                         (tmp_path / "x.jpg", "must name a .png file"),
                         (tmp_path / "dir.png", "dir.png is a directory"),
                         (tmp_path / "file" / "x.png", "file is a file, not a directory")]:
        with pytest.raises(UserError, match=message):
            sample._check_out(str(out))
    assert sample._check_out(str(tmp_path / "new" / "x.png")) == str(tmp_path / "new" / "x.json")
    # Through the CLI the --out check comes first: the missing run is never looked at.
    result = run_module("muse_jax.sample", f"--workdir={tmp_path / 'no_run'}", "--prompt=a",
                        f"--out={tmp_path / 'x.json'}", env=ONE_FAST_DEVICE)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --out must name a .png")


@pytest.mark.slow
def test_sampling_batch_by_batch_writes_the_grid_a_single_call_makes(base_dir, pipe, tmp_path):
    from muse_jax import metrics

    rows = [p for p in ["a red circle at the center", "a blue square at the top left",
                        "a green triangle at the bottom"] for _ in range(2)]
    (tmp_path / "three.txt").write_text("\n".join(rows[::2]) + "\n")
    out = tmp_path / "three.png"
    result = run_module("muse_jax.sample", f"--workdir={base_dir}",
                        f"--prompts_file={tmp_path / 'three.txt'}", "--num_images=2",
                        "--batch_size=4", "--steps=2", f"--out={out}", env=ONE_FAST_DEVICE,
                        check=True)
    assert "sampling: 100%" in result.stderr and "6/6" in result.stderr  # progress, in images
    assert json.loads(out.with_suffix(".json").read_text())["num_prompts"] == 3
    tokens = sample_tokens(pipe, rows, sampling.SamplingOptions(steps=2), seed=0, batch_size=4)
    images = np.concatenate([pipe.decode(tokens[:4]), pipe.decode(tokens[4:])])
    # The same tokens; decoding on one device or eight may round a pixel differently.
    np.testing.assert_allclose(np.asarray(Image.open(out)), metrics.image_grid(
        *images.reshape(3, 2, 64, 64, 3), columns=2), atol=1)


@pytest.mark.slow
def test_a_long_prompt_list_samples_in_memory_bounded_by_the_batch(pipe, tmp_path):
    """8x the prompts, the same peak of host memory (numpy's allocations, which tracemalloc
    sees): the images never accumulate, whatever the number of prompts."""
    import tracemalloc

    from muse_jax import inference
    options = sampling.SamplingOptions(steps=1)

    def images_of(part, first_row):
        return pipe.decode(sample_tokens(pipe, part, options, seed=0, batch_size=len(part),
                                         first_row=first_row))

    peaks = {}
    for n in (64, 512):
        images_of(["warm up"] * 32, 0)  # compiled before measuring
        tracemalloc.start()
        inference.sample_to_grid(str(tmp_path / f"{n}.png"), (f"prompt {i}" for i in range(n)),
                                 n, 1, 64, images_of, batch_size=32)
        peaks[n] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert Image.open(tmp_path / f"{n}.png").size == (64, n * 64)
    print("sampling peak traced MiB:", peaks)
    # Held whole, 448 more images would be >= 448 x 48 KiB (float32) = 21 MiB more.
    assert peaks[512] - peaks[64] < 4, peaks
