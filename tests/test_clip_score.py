"""CLIP vision tower and CLIP score against transformers' CLIPModel (tiny, random weights)."""
import numpy as np
import pytest
import torch
import transformers

from muse_jax.models import clip
from muse_jax.quality import scorers
from test_text_clip import write_tokenizer

PROMPTS = ["the cat and the dog", "a red square.", "", "and the"]
IMAGE_SIZE, MAX_LENGTH = 32, 16


def _tiny_clip(path, tokenizer, vocab_size, sign):
    torch.manual_seed(0)
    text = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=MAX_LENGTH,
                bos_token_id=vocab_size - 3, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                  image_size=IMAGE_SIZE, patch_size=8)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        model.visual_projection.weight.mul_(sign)  # flips every cosine's sign
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


# This random model's cosines are all negative (scores clipped to 0); flipped, all positive.
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clip_score_matches_transformers(tmp_path, sign):
    tokenizer, vocab_size = write_tokenizer(tmp_path / "tokenizer", "!")
    model = _tiny_clip(tmp_path / "clip", tokenizer, vocab_size, sign)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    pixels = (((images + 1) / 2 - np.array(clip.IMAGE_MEAN)) / np.array(clip.IMAGE_STD)).astype(np.float32)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids["input_ids"], pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    ref_image = out.image_embeds.numpy()  # normalised, as text_embeds
    ref_cos = np.sum(ref_image * out.text_embeds.numpy(), -1)
    ref_score = 100 * np.maximum(ref_cos, 0)

    score = scorers.ClipScore(str(tmp_path / "clip"))
    tower = np.asarray(score.tower.apply({"params": score.vision.weights}, pixels))
    ours_image = tower / np.linalg.norm(tower, axis=-1, keepdims=True)
    # Resizing the 32 px images to the tower's 32 px changes nothing.
    ours_cos, ours_score = score.cosine(images, PROMPTS), score(images, PROMPTS)
    image_diff, cos_diff = np.abs(ours_image - ref_image).max(), np.abs(ours_cos - ref_cos).max()
    score_diff = np.abs(ours_score - ref_score).max()
    print(f"CLIP image embeds max |diff| {image_diff:.2e}; cosine {cos_diff:.2e}; CLIP score "
          f"{score_diff:.2e} (scores {np.round(ref_score, 2)})")
    assert image_diff < 1e-4 and cos_diff < 1e-4 and score_diff < 1e-4
    assert np.all(ref_cos * sign < 0) and np.all((ref_score > 0) == (sign < 0))


def test_every_vision_parameter_has_logical_axis_names():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    module = clip.CLIPVisionTransformer(clip.CLIPVisionConfig())  # ViT-L/14 at 224 px
    boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim
               for x in leaves)
    count = sum(x.value.size for x in leaves)
    # openai/clip-vit-large-patch14: vision_model 303,179,776 + visual_projection 786,432.
    assert count == 303_179_776 + 1024 * 768, count
