"""The Flax CLIP text tower against transformers' CLIPTextModelWithProjection (tiny, random).

What aMUSEd reads from it: `hidden_states[-2]` (penultimate layer, cross-attention) and
`text_embeds` (pooled at the end-of-text token, projected), from prompts padded to max_length
and run without an attention mask, as diffusers' AmusedPipeline runs them.
"""
import json
import string

import numpy as np
import pytest
import torch
import transformers

from muse_jax.text import clip, create_encoder, default_config

PROMPTS = ["the cat and the dog", "", "a red square.", "thethethethethethethe and and and the"]
MAX_LENGTH = 16


def write_tokenizer(path, pad_token):
    """A tiny byte-pair CLIP tokenizer: letters, word-final letters, four merges, BOS/EOS."""
    chars = list(string.ascii_lowercase) + ["."]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    merges = ["t h", "th e</w>", "a n", "an d</w>"]
    for token in [m.replace(" ", "") for m in merges] + ["<|startoftext|>", "<|endoftext|>", "!"]:
        vocab[token] = len(vocab)
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"),
                                           pad_token=pad_token, model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(path)
    return tokenizer, len(vocab)


def tiny_model(path, vocab_size, eos_token_id):
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=MAX_LENGTH, projection_dim=24,
        bos_token_id=vocab_size - 3, eos_token_id=eos_token_id, pad_token_id=vocab_size - 1)
    model = transformers.CLIPTextModelWithProjection(config).eval()
    model.save_pretrained(path)
    return model


def reference(model, ids):
    with torch.no_grad():
        out = model(torch.from_numpy(ids).long(), output_hidden_states=True)
    return out.hidden_states[-2].numpy(), out.text_embeds.numpy()


@pytest.mark.parametrize("pad_token", ["!", "<|endoftext|>"])
def test_clip_text_matches_transformers_as_amused_reads_it(tmp_path, pad_token):
    tokenizer, vocab_size = write_tokenizer(tmp_path / "tokenizer", pad_token)
    model = tiny_model(tmp_path / "text_encoder", vocab_size, tokenizer.eos_token_id)
    c = default_config()
    c.encoder, c.path, c.tokenizer_path = "clip", str(tmp_path / "text_encoder"), str(tmp_path / "tokenizer")
    c.max_length = MAX_LENGTH
    encoder = create_encoder(c)
    emb, mask, pooled = encoder.encode_with_pooled(PROMPTS)
    ids = np.asarray(tokenizer(PROMPTS, padding="max_length", truncation=True,
                               max_length=MAX_LENGTH)["input_ids"])
    np.testing.assert_array_equal(encoder.tokenize(PROMPTS)[0], ids)
    ref_hidden, ref_pooled = reference(model, ids)
    hidden_diff, pooled_diff = np.abs(emb - ref_hidden).max(), np.abs(pooled - ref_pooled).max()
    print(f"CLIP text (pad {pad_token}): penultimate hidden max abs diff {hidden_diff:.3g}, "
          f"pooled projection {pooled_diff:.3g}")
    assert hidden_diff < 1e-4 and pooled_diff < 1e-4
    assert mask.all() and emb.shape == (4, MAX_LENGTH, 32) and pooled.shape == (4, 24)
    assert encoder.dim == 32 and encoder.pooled_dim == 24
    # encode() gives the same token states (every position valid: the tower is causal).
    np.testing.assert_allclose(encoder.encode(PROMPTS)[0], emb, atol=1e-6)
    # The last prompt fills max_length: pooled at its (truncated-in) end-of-text token.
    assert ids[3, -1] == tokenizer.eos_token_id


def test_legacy_eos_token_id_pools_at_the_largest_id():
    """Configs with eos_token_id 2 (before transformers PR 24773) pool at argmax(ids)."""
    ids = np.array([[5, 9, 3, 2, 0], [7, 1, 2, 2, 8]])
    np.testing.assert_array_equal(clip.pooled_index(ids, 2), [1, 4])
    np.testing.assert_array_equal(clip.pooled_index(ids, 8), [0, 4])
    np.testing.assert_array_equal(clip.pooled_index(ids, 3), [2, 0])


def test_pooled_embedding_needs_the_clip_encoder():
    encoder = create_encoder(default_config())
    with pytest.raises(Exception, match="no pooled embedding"):
        encoder.encode_with_pooled(["a"])


def test_every_clip_parameter_has_logical_axis_names():
    """So the one rules table shards CLIP-L (and the vision tower built on the same stack)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    module = clip.CLIPTextEncoder(clip.CLIP_L14_TEXT)
    boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 77), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim
               for x in leaves)
    count = sum(x.value.size for x in leaves)
    assert count == 123_650_304, count  # openai/clip-vit-large-patch14's text tower + projection
