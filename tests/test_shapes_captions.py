"""Captions of shapes scenes in many phrasings (muse_jax/data/shapes_captions.py)."""
import re

import numpy as np
import pytest

from muse_jax.data import shapes, shapes_captions


HELD_PLACES = [p for ps in shapes_captions._HELD_OUT_PLACES.values() for p in ps]
HELD_FRAMES = [f.split("{}")[0] for f in shapes_captions._HELD_OUT_FRAMES]
HELD_VERB = re.compile(r"(circles?|discs?|squares?|box(es)?|triangles?) (is|are) ")


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [shapes.sample_objects(rng) for _ in range(n)]


def test_no_training_caption_uses_a_held_out_phrasing_and_every_held_out_one_does():
    rng = np.random.default_rng(1)
    for objects in _scenes(3000):
        train = shapes_captions.describe(objects, rng, "varied").lower()
        held = shapes_captions.describe(objects, rng, "held_out").lower()
        assert not any(p in train for p in HELD_PLACES), train
        assert not any(train.startswith(f) for f in HELD_FRAMES), train
        assert ";" not in train and not HELD_VERB.search(train), train
        assert any(p in held for p in HELD_PLACES) and any(held.startswith(f) for f in HELD_FRAMES), held


def test_a_held_out_part_alone_holds_out_that_part_and_nothing_else():
    rng = np.random.default_rng(3)
    for objects in _scenes(500):
        places = shapes_captions.describe(objects, rng, "held_out", ("places",)).lower()
        assert any(p in places for p in HELD_PLACES), places
        assert ";" not in places and not any(places.startswith(f) for f in HELD_FRAMES), places
        verb = shapes_captions.describe(objects, rng, "held_out", ("verb",)).lower()
        assert not any(p in verb for p in HELD_PLACES) and ";" not in verb, verb
        assert HELD_VERB.search(verb), verb
    with pytest.raises(ValueError, match="unknown held-out parts"):
        shapes_captions.describe(objects, rng, "held_out", ("adverbs",))


def test_a_single_object_is_named_by_its_own_colour_shape_and_place_words():
    rng = np.random.default_rng(2)
    for objects in _scenes(2000):
        for phrasing, places in (("varied", shapes_captions._TRAIN_PLACES),
                                 ("held_out", shapes_captions._HELD_OUT_PLACES)):
            (obj,) = objects[:1]
            text = shapes_captions.describe([obj], rng, phrasing).lower()
            words = set(text.replace(",", " ").replace(".", " ").replace(";", " ").split())
            colours = {c for c, ws in shapes_captions._COLOR_WORDS.items() if words & set(ws)}
            assert colours == {obj.color}, text
            shape_words = {w for ws in shapes_captions._SHAPE_WORDS.values() for w in ws}
            named = {s for s, ws in shapes_captions._SHAPE_WORDS.items() if words & set(ws)}
            assert named == {obj.shape} and len(words & shape_words) == 1, text
            # The longest place phrase found is one of the object's cell.
            found = max((p for ps in places.values() for p in ps if p in text), key=len)
            assert found in places[obj.cell], text


def test_varied_captions_vary_order_counts_case_and_synonyms():
    rng = np.random.default_rng(3)
    texts = [shapes_captions.describe(o, rng, "varied") for o in _scenes(2000)]
    assert len(set(texts)) > 1990
    assert any(t[0].isupper() for t in texts) and any(t[0].islower() for t in texts)
    assert any(t.endswith(".") for t in texts)
    for word in ("two ", "violet", "turquoise", "disc", "box", "there is", "corner", " one ",
                 " sits ", " can be seen ", " plus ", " as well as ", ". ", "near the", "we see"):
        assert any(word in t.lower() for t in texts), word


def test_the_phrasing_changes_the_caption_never_the_image():
    canonical = shapes.ShapesSource(split="train", seed=5)
    varied = shapes.ShapesSource(split="train", seed=5, phrasing="varied")
    same = 0
    for i in range(20):
        a, b = canonical[i], varied[i]
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["caption"] == shapes.caption(canonical.objects(i))
        assert b["caption"] == varied.get_caption(i)  # drawn per record, stable
        same += b["caption"] == a["caption"]
    assert same < 10
    with pytest.raises(ValueError, match="phrasing must be one of"):
        shapes.ShapesSource(phrasing="poetic")


def test_a_share_of_training_captions_is_in_the_canonical_wording():
    varied = shapes.ShapesSource(split="train", seed=1, phrasing="varied", size=4000)
    held = shapes.ShapesSource(split="eval", seed=1, phrasing="held_out", size=500)
    canonical = sum(varied.get_caption(i) == shapes.caption(varied.objects(i))
                    for i in range(len(varied)))
    share = shapes_captions.CANONICAL_SHARE
    sigma = (share * (1 - share) / len(varied)) ** 0.5
    assert abs(canonical / len(varied) - share) < 4 * sigma + 1e-9
    assert not any(held.get_caption(i) == shapes.caption(held.objects(i)) for i in range(len(held)))
