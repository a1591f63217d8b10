"""The sampling flags of `sample`, `evaluate` and `demo`, defined once, and what they build.

Defaults are the paper's: 24 base and 8 SR decoding steps, guidance rising to 4, MaskGIT's
choice temperature 4.5; mask-free editing resamples 8% of the tokens for 100 rounds at
top-k 3 (`sampling.EditOptions`). The guidance and the token temperature are the exceptions:
a base run samples as its config's `eval.guidance` and `eval.temperature` say (`run_defaults`;
4 and 1 in the reference configs), since a small model can want far less. So is the preset: a
run imported from aMUSEd (`eval.preset = "amused"`) samples as AmusedPipeline does unless
--preset says otherwise (`run_defaults`).
"""
from __future__ import annotations

from absl import flags

from muse_jax import sampling

FLAGS = flags.FLAGS
_DEFAULT = sampling.SamplingOptions()
_EDIT = sampling.EditOptions()


def define(sr: bool = True, edit: bool = True) -> None:
    """Defines the decoding flags, and those of the SR stage and of editing when asked."""
    flags.DEFINE_enum("preset", None, ["muse", "amused"],
                      "Defaults of the decoding flags: muse (the paper's) or amused (diffusers' "
                      "AmusedPipeline: 12 steps, guidance 10 held constant, its temperature "
                      "schedule); flags given explicitly override either. Unset: the run's "
                      "config eval.preset (amused for imported aMUSEd runs, else muse).")
    flags.DEFINE_enum("choice_schedule", _DEFAULT.choice_schedule, ["maskgit", "amused"],
                      "How the choice temperature anneals: maskgit (to 0 after the last step) or "
                      "amused (AmusedScheduler's linspace, 0 at the last step).")
    flags.DEFINE_integer("steps", _DEFAULT.steps, "Decoding steps (Muse: 24 for the base model).")
    flags.DEFINE_float("guidance", _DEFAULT.guidance,
                       "Final classifier-free guidance scale (0: off, one pass a step).")
    flags.DEFINE_enum("guidance_schedule", _DEFAULT.guidance_schedule,
                      ["linear", "cosine", "constant"], "How the guidance scale rises over the steps.")
    flags.DEFINE_float("temperature", _DEFAULT.temperature, "Token sampling temperature.")
    flags.DEFINE_integer("top_k", _DEFAULT.top_k, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_float("choice_temperature", _DEFAULT.choice_temperature,
                       "Gumbel noise on the confidence that picks which tokens to keep, annealed "
                       "to 0 over the steps (MaskGIT: 4.5).")
    flags.DEFINE_integer("rows_per_pass", _DEFAULT.rows_per_pass,
                         "Rows (x2 under guidance) each transformer pass takes at a time (0: "
                         "all): on a CPU, 1-2 keep a large model's activations in cache.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_float("lora_scale", 1.0, "A LoRA fine-tune's adapters x this (0: the run it "
                       "was fine-tuned from, 1: as trained); any other run takes only 1.")
    if sr:
        flags.DEFINE_string("sr_workdir", None, "Workdir of a trained super-resolution run: the "
                            "base model's tokens are then super-resolved and decoded at its size.")
        flags.DEFINE_integer("sr_steps", 8, "Super-resolution decoding steps (Muse: 8).")
        flags.DEFINE_float("sr_guidance", _DEFAULT.guidance,
                           "Final guidance scale of the super-resolution stage.")
    if edit:
        flags.DEFINE_integer("edit_iterations", _EDIT.iterations,
                             "Mask-free editing: re-mask-and-fill rounds (Muse: 100).")
        flags.DEFINE_float("edit_mask_rate", _EDIT.mask_rate,
                           "Mask-free editing: share of tokens re-masked each round (Muse: 8%).")
        flags.DEFINE_integer("edit_steps", _EDIT.steps,
                             "Mask-free editing: decoding steps that fill each round's tokens.")
        flags.DEFINE_integer("edit_top_k", _EDIT.top_k,
                             "Mask-free editing: sample among the k most likely (Muse: 3).")
        flags.DEFINE_integer("edit_keep", _EDIT.keep,
                             "Mask-free editing: a re-masked token the model ranks among its k "
                             "most likely keeps its value (0: resample all, as Muse).")
        flags.DEFINE_bool("paste_unchanged", False,
                          "Editing, inpainting, outpainting: the input's own pixels wherever "
                          "the result kept its tokens (inference.paste_unchanged; not in Muse, "
                          "which shows the tokenizer's drawing of them).")


_OPTION_FLAGS = ("steps", "guidance", "guidance_schedule", "temperature", "top_k",
                 "choice_temperature", "choice_schedule", "rows_per_pass")


def options(guidance: float = _DEFAULT.guidance, preset: str = "muse",
            temperature: float = _DEFAULT.temperature) -> sampling.SamplingOptions:
    """The options of --preset (unset: `preset`), with every decoding flag given on the command
    line applied. Under the muse preset, --guidance and --temperature left unset are `guidance`
    and `temperature`. `run_defaults` gives a run's own `guidance`, `preset` and
    `temperature`."""
    import dataclasses
    preset = FLAGS.preset or preset
    base = sampling.AMUSED if preset == "amused" else _DEFAULT
    given = {name: FLAGS[name].value for name in _OPTION_FLAGS
             if FLAGS[name].present or preset == "muse"}
    if preset == "muse":
        for name, own in (("guidance", guidance), ("temperature", temperature)):
            if not FLAGS[name].present:
                given[name] = own
    out = dataclasses.replace(base, **given)
    out.check()
    return out


def run_defaults(workdir: str) -> dict:
    """`options`' defaults for the base run in `workdir` (`eval_defaults` of its config)."""
    from muse_jax import runs

    return eval_defaults(runs.open_run(workdir, "base").config.eval)


def eval_defaults(eval_config) -> dict:
    """`options`' defaults from a base config's `eval` block: `eval.guidance` and
    `eval.temperature`, which its evaluations' samples used (Muse's 4 and 1 for runs saved before
    those keys existed), and `eval.preset` (muse for runs saved before it)."""
    return {"guidance": eval_config.get("guidance", _DEFAULT.guidance),
            "preset": eval_config.get("preset", "muse"),
            "temperature": eval_config.get("temperature", _DEFAULT.temperature)}


def sr_options() -> sampling.SamplingOptions:
    import dataclasses
    out = dataclasses.replace(options(), steps=FLAGS.sr_steps, guidance=FLAGS.sr_guidance)
    out.check()
    return out


def edit_options() -> sampling.EditOptions:
    out = sampling.EditOptions(iterations=FLAGS.edit_iterations, mask_rate=FLAGS.edit_mask_rate,
                               steps=FLAGS.edit_steps, top_k=FLAGS.edit_top_k, keep=FLAGS.edit_keep)
    out.check()
    return out
