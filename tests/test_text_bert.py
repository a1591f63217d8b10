"""The Flax BERT encoder against transformers' PyTorch BertModel: a tiny random one and real MiniLM."""
import numpy as np
import torch
import transformers

from muse_jax.text import bert, create_encoder, default_config

SENTENCES = [
    "A red square sits to the left of a small blue circle.",
    "Two green triangles on a white background",
    "a photograph of an astronaut riding a horse",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "An oil painting of a lighthouse at dusk, waves crashing against the rocks below.",
    "cat",
    "Three yellow stars above a purple hexagon, drawn in thick black outlines on grey paper.",
]


def reference(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids).long(),
                     attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()


def test_tiny_bert_matches_transformers_on_a_padded_batch(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=40)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(tmp_path)
    module, params = bert.load(tmp_path)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 99, (4, 24)).astype(np.int32)
    mask = np.arange(24)[None] < np.array([[24], [9], [2], [17]])
    ids[~mask] = 0
    ours = np.asarray(module.apply({"params": params}, ids, mask))
    diff = np.abs(ours - reference(model, ids, mask)).max()
    print(f"tiny BERT max abs diff (all positions): {diff:.3g}")
    assert diff < 1e-4


def test_real_minilm_matches_transformers_on_real_sentences():
    encoder = create_encoder(default_config())
    model = transformers.BertModel.from_pretrained(str(bert.minilm_dir())).eval()
    ids, mask = encoder.tokenize(SENTENCES)
    ours_raw = np.asarray(encoder.module.apply({"params": encoder.params}, ids, mask))
    ref = reference(model, ids, mask)
    valid = np.abs(ours_raw - ref)[mask].max()
    print(f"MiniLM max abs diff: {valid:.3g} on the {mask.sum()} real tokens, "
          f"{np.abs(ours_raw - ref).max():.3g} including padding positions")
    assert valid < 1e-4
    # Padding positions are ill-conditioned (PyTorch's own eager and SDPA paths differ there by
    # ~4e-5); encode() zeroes them, so only a loose bound is meaningful.
    assert np.abs(ours_raw - ref).max() < 1e-3
    emb, mask2 = encoder.encode(SENTENCES)
    np.testing.assert_array_equal(mask, mask2)
    assert np.abs(emb - ref * mask[..., None]).max() < 1e-4
    assert encoder.dim == 384 and emb.shape == (8, 32, 384)


def test_num_layers_returns_minilm_layer_2_states_as_transformers_hidden_states_2():
    """text.num_layers=2 (the demo's) is transformers' hidden_states[2], not the last layer."""
    config = default_config()
    config.num_layers = 2
    encoder = create_encoder(config)
    assert len([k for k in encoder.params if k.startswith("layers_")]) == 2
    model = transformers.BertModel.from_pretrained(str(bert.minilm_dir())).eval()
    emb, mask = encoder.encode(SENTENCES)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(encoder.tokenize(SENTENCES)[0]).long(),
                    attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
    layer2 = out.hidden_states[2].numpy() * mask[..., None]
    assert np.abs(emb - layer2).max() < 1e-4
    assert np.abs(emb - out.last_hidden_state.numpy() * mask[..., None]).max() > 0.1


def test_mean_with_embeddings_is_the_mean_of_transformers_hidden_states_0_and_2():
    """text.mean_with_embeddings averages layer 2's states (the demo's layer) with the
    embedding layer's output, transformers' hidden_states[0]."""
    config = default_config()
    config.num_layers = 2
    config.mean_with_embeddings = True
    encoder = create_encoder(config)
    model = transformers.BertModel.from_pretrained(str(bert.minilm_dir())).eval()
    emb, mask = encoder.encode(SENTENCES)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(encoder.tokenize(SENTENCES)[0]).long(),
                    attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True)
    hidden = [h.numpy() * mask[..., None] for h in out.hidden_states]
    assert np.abs(emb - (hidden[0] + hidden[2]) / 2).max() < 1e-4
    assert np.abs(emb - hidden[2]).max() > 0.1
