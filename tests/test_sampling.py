"""The decoding loop: fills every [MASK], never touches given tokens, guidance pulls the right way."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import sampling
from muse_jax.errors import UserError

K, N, MASK = 8, 16, 8


def _logits_fn(preferred_cond, preferred_uncond, batch, strength=3.0):
    """The first `batch` rows (conditional) prefer one token everywhere, the rest
    (unconditional, present only with guidance) another."""
    def fn(tokens):
        rows = tokens.shape[0]
        cond = jax.nn.one_hot(jnp.full((batch, N), preferred_cond), K) * strength
        uncond = jax.nn.one_hot(jnp.full((rows - batch, N), preferred_uncond), K) * strength
        return jnp.concatenate([cond, uncond], axis=0)
    return fn


@pytest.mark.parametrize("steps", [1, 2, 8, 24])
def test_every_mask_is_filled(steps):
    canvas = jnp.full((3, N), MASK, jnp.int32)
    options = sampling.SamplingOptions(steps=steps, guidance=0.0)
    out = sampling.decode(_logits_fn(2, 5, 3), canvas, MASK, jax.random.key(0), options)
    assert out.shape == (3, N) and int(jnp.sum(out == MASK)) == 0
    assert int(out.max()) < K


def test_given_tokens_never_change():
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, K, (4, N)).astype(np.int32)
    hole = rng.random((4, N)) < 0.5
    canvas[hole] = MASK
    out = np.asarray(sampling.decode(_logits_fn(2, 5, 4), jnp.asarray(canvas), MASK, jax.random.key(1),
                                     sampling.SamplingOptions(steps=6)))
    np.testing.assert_array_equal(out[~hole], canvas[~hole])
    assert not np.any(out == MASK)


def test_guidance_pushes_away_from_the_unconditional_prediction():
    canvas = jnp.full((64, N), MASK, jnp.int32)
    # Conditional is uninformative (uniform); unconditional prefers token 5.
    def fn(tokens):
        rest = tokens.shape[0] - 64
        return jnp.concatenate([jnp.zeros((64, N, K)),
                                jax.nn.one_hot(jnp.full((rest, N), 5), K) * 2.0], axis=0)
    share = lambda g: float(jnp.mean(sampling.decode(  # noqa: E731
        fn, canvas, MASK, jax.random.key(2), sampling.SamplingOptions(steps=4, guidance=g)) == 5))
    assert share(0.0) > 0.08  # ~1/8 without guidance
    assert share(5.0) < 0.01


def test_same_seed_same_tokens():
    canvas = jnp.full((2, N), MASK, jnp.int32)
    def fn(tokens):
        return jnp.zeros((tokens.shape[0], N, K))
    options = sampling.SamplingOptions(steps=5)
    a = sampling.decode(fn, canvas, MASK, jax.random.key(3), options)
    b = sampling.decode(fn, canvas, MASK, jax.random.key(3), options)
    c = sampling.decode(fn, canvas, MASK, jax.random.key(4), options)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_guidance_schedules_rise_to_the_scale():
    for schedule in ("linear", "cosine"):
        options = sampling.SamplingOptions(steps=10, guidance=3.0, guidance_schedule=schedule)
        values = [float(sampling.guidance_scale(options, s)) for s in range(10)]
        assert values == sorted(values) and values[-1] == pytest.approx(3.0) and values[0] < 1.0


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "steps must be >= 1"),
    ("temperature", -0.5, r"temperature must be finite and >= 0 \(0: greedy\), got -0.5"),
    ("temperature", float("nan"), r"temperature must be finite and >= 0 \(0: greedy\), got nan"),
    ("guidance", float("nan"), "guidance must be finite and >= 0, got nan"),
    ("guidance", float("inf"), "guidance must be finite and >= 0, got inf"),
    ("choice_temperature", float("nan"), "choice_temperature must be finite and >= 0"),
    ("choice_schedule", "linear", "choice_schedule must be"),
    ("guidance_schedule", "up", "guidance_schedule")])
def test_bad_options(field, value, message):
    with pytest.raises(UserError, match=message):
        sampling.SamplingOptions(**{field: value}).check()


def test_amused_choice_schedule_is_amused_schedulers_linspace():
    """AmusedScheduler.set_timesteps(12, (2, 0)): torch.linspace(2, 0, 12), step i's noise scale."""
    values = [float(sampling.choice_scale(sampling.AMUSED, s)) for s in range(12)]
    np.testing.assert_allclose(values, np.linspace(2.0, 0.0, 12), atol=1e-6)
    maskgit = sampling.SamplingOptions(steps=4, choice_temperature=4.5)
    assert [float(sampling.choice_scale(maskgit, s)) for s in range(4)] == [3.375, 2.25, 1.125, 0.0]


def _eqns(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in it (jit, remat, loops)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


def _text_projections(jaxpr, rows, length):
    """Matmuls of a [rows, length, features] operand: the text (or its projection to the model
    width) going through text_proj or a cross-attention key / value projection."""
    return [e for e in _eqns(jaxpr) if e.primitive.name == "dot_general"
            and any(len(v.aval.shape) == 3 and v.aval.shape[:2] == (rows, length) for v in e.invars)]


def test_text_is_projected_once_before_the_loop_not_at_every_step():
    from flax import linen as nn

    from muse_jax.models.transformer import MaskedTransformer
    model = MaskedTransformer(codebook_size=K, grid=(4, 4), width=32, depth=2, num_heads=4, mlp_dim=64)
    b, length = 2, 5
    emb, mask = jnp.ones((b, length, 12)), jnp.ones((b, length), bool)
    canvas = jnp.full((b, N), model.mask_id, jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), canvas, emb, mask)["params"])
    options = sampling.SamplingOptions(steps=3)
    args = (params, emb, mask, emb[:1] * 0, mask[:1], jax.random.key(0), canvas)
    expected = 1 + 2 * 2  # text_proj, then key and value of each block's cross-attention

    def per_step(params, emb, mask, uncond_emb, uncond_mask, rng, canvas):  # what the loop used to do
        text, text_mask = jnp.concatenate([emb, emb]), jnp.concatenate([mask, mask])
        return sampling.decode(lambda t: model.apply({"params": params}, t, text, text_mask),
                               canvas, model.mask_id, rng, options)

    def loop_body(fn):
        jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
        # fori_loop with static bounds is a scan (a while loop otherwise).
        loops = [e for e in _eqns(jaxpr) if e.primitive.name in ("scan", "while")]
        assert len(loops) == 1
        body = loops[0].params.get("body_jaxpr") or loops[0].params["jaxpr"]
        return jaxpr, body.jaxpr

    _, old_body = loop_body(per_step)
    assert len(_text_projections(old_body, 2 * b, length)) == expected  # the check sees them
    whole, body = loop_body(sampling.make_generate(model, options))
    assert _text_projections(body, 2 * b, length) == []
    assert len(_text_projections(whole, 2 * b, length)) == expected
    tokens = sampling.make_generate(model, options)(*args)
    assert tokens.shape == (b, N) and int(jnp.sum(tokens == model.mask_id)) == 0


def test_guidance_zero_runs_the_conditional_pass_alone():
    canvas = jnp.full((3, N), MASK, jnp.int32)
    rows = []

    def fn(tokens):
        rows.append(tokens.shape[0])  # at trace time: once per compiled loop body
        return jnp.zeros((tokens.shape[0], N, K))

    sampling.decode(fn, canvas, MASK, jax.random.key(0), sampling.SamplingOptions(guidance=0.0))
    sampling.decode(fn, canvas, MASK, jax.random.key(0), sampling.SamplingOptions(guidance=2.0))
    assert rows == [3, 6]


def test_generate_without_guidance_encodes_and_runs_only_the_prompts():
    from flax import linen as nn

    from muse_jax.models.transformer import MaskedTransformer
    model = MaskedTransformer(codebook_size=K, grid=(4, 4), width=32, depth=2, num_heads=4, mlp_dim=64)
    b, length = 2, 5
    emb, mask = jnp.ones((b, length, 12)), jnp.ones((b, length), bool)
    canvas = jnp.full((b, N), model.mask_id, jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), canvas, emb, mask)["params"])
    args = (params, emb, mask, emb[:1] * 0, mask[:1], jax.random.key(0), canvas)
    for guidance, rows in ((0.0, b), (3.0, 2 * b)):
        generate = sampling.make_generate(model, sampling.SamplingOptions(steps=3, guidance=guidance))
        jaxpr = jax.make_jaxpr(generate)(*args).jaxpr
        assert len(_text_projections(jaxpr, rows, length)) == 1 + 2 * 2
        assert _text_projections(jaxpr, 2 * b + b - rows, length) == []  # not the other count
        tokens = generate(*args)
        assert tokens.shape == (b, N) and int(jnp.sum(tokens == model.mask_id)) == 0


def test_passes_of_fewer_rows_choose_the_same_tokens():
    """rows_per_pass splits each step's 2B guided rows into passes of that many (a remainder
    included) inside the one compiled loop: the same tokens, greedily and with sampling."""
    from flax import linen as nn

    from muse_jax.models.transformer import MaskedTransformer
    model = MaskedTransformer(codebook_size=K, grid=(4, 4), width=32, depth=2, num_heads=4, mlp_dim=64)
    b, length = 3, 5
    emb = jax.random.normal(jax.random.key(1), (b, length, 12))
    mask = jnp.ones((b, length), bool).at[:, 3:].set(False)
    canvas = jnp.full((b, N), model.mask_id, jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), canvas, emb, mask)["params"])
    args = (params, emb, mask, emb[:1] * 0, mask[:1], jax.random.key(0), canvas)
    for temperature in (0.0, 1.0):
        whole = sampling.SamplingOptions(steps=4, temperature=temperature)
        tokens = sampling.make_generate(model, whole)(*args)
        for rows in (1, 4):  # 6 rows: 6 passes of 1; one of 4 and one of 2
            split = dataclasses.replace(whole, rows_per_pass=rows)
            jaxpr = jax.make_jaxpr(sampling.make_generate(model, split))(*args).jaxpr
            assert _text_projections(jaxpr, 2 * b, length)  # the context is encoded whole
            np.testing.assert_array_equal(sampling.make_generate(model, split)(*args), tokens)
    with pytest.raises(UserError, match="rows_per_pass must be >= 0"):
        sampling.SamplingOptions(rows_per_pass=-1).check()


class _PromptModel:
    """A stand-in transformer: every position prefers the token id the prompt's first feature
    holds, strongly; its context is the prompt embedding itself."""
    mask_id = MASK

    def apply(self, variables, *args, method=None):
        if method == "encode_context":
            return args[0]
        tokens, context = args  # method="logits"
        preferred = context[:, 0, 0].astype(jnp.int32)
        return jnp.broadcast_to(jax.nn.one_hot(preferred, K)[:, None] * 20.0,
                                (tokens.shape[0], N, K))


def _edit(iterations, mask_rate, batch=64):
    edit = sampling.make_edit(_PromptModel(), sampling.SamplingOptions(guidance=0.0),
                              sampling.EditOptions(iterations=iterations, mask_rate=mask_rate,
                                                   steps=2, top_k=1, keep=0))
    emb = jnp.full((batch, 1, 1), 2.0)  # the new prompt wants token 2 everywhere
    tokens = jnp.full((batch, N), 5, jnp.int32)
    return np.asarray(edit({}, emb, jnp.ones((batch, 1), bool), emb[:1] * 0, jnp.ones((1, 1), bool),
                           jax.random.key(0), tokens))


def test_each_edit_round_resamples_its_share_of_the_tokens():
    out = _edit(iterations=1, mask_rate=0.25)
    assert set(np.unique(out)) <= {2, 5}
    assert 0.2 < np.mean(out == 2) < 0.3  # 1024 tokens, 25% re-masked: std 1.4%
    out = _edit(iterations=40, mask_rate=0.25)
    assert np.mean(out == 2) > 0.99  # 1 - 0.75^40 of the tokens were re-masked at least once


def test_edit_defaults_are_the_papers():
    edit = sampling.EditOptions()
    assert (edit.iterations, edit.mask_rate, edit.top_k) == (100, 0.08, 3)
    assert sampling.SamplingOptions().guidance == 4.0


@pytest.mark.parametrize("field,value,message", [("iterations", 0, "iterations must be >= 1"),
                                                 ("mask_rate", 0.0, "mask rate"),
                                                 ("steps", 0, "edit steps"),
                                                 ("keep", -1, "edit keep must be >= 0")])
def test_bad_edit_options(field, value, message):
    with pytest.raises(UserError, match=message):
        sampling.EditOptions(**{field: value}).check()


def _ranked_logits_fn(order, batch):
    """Every position ranks the token ids in `order` first, second, ... (no unconditional pass)."""
    scores = jnp.zeros(K).at[jnp.asarray(order)].set(jnp.arange(len(order), 0, -1) * 4.0)
    return lambda tokens: jnp.broadcast_to(scores, (batch, N, K))


@pytest.mark.parametrize("keep,expected", [(0, 5), (1, 5), (2, 7), (3, 7), (K + 40, 7)])
def test_a_previous_token_ranked_among_the_keep_most_likely_stays(keep, expected):
    # Token 5 is the most likely everywhere, 7 the second; the tokens before the round were 7.
    canvas = jnp.full((4, N), MASK, jnp.int32)
    previous = jnp.full((4, N), 7, jnp.int32)
    options = sampling.SamplingOptions(steps=3, guidance=0.0, temperature=1e-3, top_k=1)
    out = sampling.decode(_ranked_logits_fn([5, 7, 1], 4), canvas, MASK, jax.random.key(0),
                          options, previous=previous, keep=keep)
    np.testing.assert_array_equal(out, np.full((4, N), expected))


class _RankedModel(_PromptModel):
    """Ranks token 2 first and 5 second everywhere, whatever the prompt."""

    def apply(self, variables, *args, method=None):
        if method == "encode_context":
            return args[0]
        return _ranked_logits_fn([2, 5], args[0].shape[0])(args[0])


@pytest.mark.parametrize("keep", [0, 2])
def test_edit_keeps_what_the_new_prompt_still_finds_likely(keep):
    # Before: 5 and 6 alternate. 5 is the model's second choice, 6 is unlikely: with keep 2 the
    # 5s stay and only the 6s become 2; with keep 0 (the paper) every token becomes 2.
    edit = sampling.make_edit(_RankedModel(), sampling.SamplingOptions(guidance=0.0),
                              sampling.EditOptions(iterations=60, mask_rate=0.25, steps=2,
                                                   top_k=1, keep=keep))
    tokens = jnp.asarray(np.where(np.arange(N) % 2, 5, 6)[None].repeat(8, 0), jnp.int32)
    emb = jnp.zeros((8, 1, 1))
    out = edit({}, emb, jnp.ones((8, 1), bool), emb[:1], jnp.ones((1, 1), bool),
               jax.random.key(0), tokens)
    expected = np.where(np.arange(N) % 2, 5, 2) if keep else np.full(N, 2)
    np.testing.assert_array_equal(out, np.broadcast_to(expected, (8, N)))


@pytest.mark.parametrize("k", [1, 3, 24, 64])
def test_kth_largest_is_top_ks_last_value_ties_and_infinities_included(k):
    """The CPU's argmax passes give exactly what XLA's TopK gives: repeated values count once
    each, and -inf (logits `_top_k` already cut) may be the answer."""
    rng = np.random.default_rng(k)
    x = rng.integers(-4, 5, (3, 7, 64)).astype(np.float32)  # many ties
    x[0, 0, :60] = -np.inf
    want = jax.lax.top_k(jnp.asarray(x), k)[0][..., -1]
    got = jax.jit(sampling.kth_largest, static_argnums=1)(jnp.asarray(x), k)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == (-np.inf if k > 4 else np.sort(x[0, 0])[-k])
