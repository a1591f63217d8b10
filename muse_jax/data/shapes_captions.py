"""Captions of a shapes scene in many phrasings, and phrasings that training never sees.

Muse's point is that a pretrained language encoder gives the image model language
understanding: a model trained on one caption template only learns that template. So the shapes
world describes each training scene in wording drawn per example (object order, article and
capitalisation, synonyms of positions, colours and shapes, sentence frames, verbs and joiners,
counts of alike objects; a tenth of them in the canonical wording, `ShapesSource` draws that),
and evaluation asks either in the canonical wording (`shapes.caption`) or in phrasings held
out of training: sentence frames, a verb, a joiner and position phrases ("in
the upper left corner", "on the left edge") that no training caption uses, made of words that
training captions do use, so that following them must come from the text encoder. The oracle
reads the scene, not the words: every phrasing is scored the same way.

`describe(objects, rng, "varied")` is a training caption, `describe(objects, rng, "held_out")`
an evaluation one; the two share no frame (a test checks that no held-out caption could have
been drawn for training).
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

PHRASINGS = ("canonical", "varied", "held_out")
# What a held-out caption holds out: position phrases, sentence frames, a verb ("is", "are")
# and the joiner ("; and").
HELD_OUT_PARTS = ("places", "frames", "verb", "joiner")

# Synonyms seen in training; the canonical word is always among them.
_COLOR_WORDS = {"red": ("red",), "green": ("green",), "blue": ("blue",),
                "yellow": ("yellow",), "purple": ("purple", "violet"),
                "orange": ("orange",), "cyan": ("cyan", "turquoise")}
_SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"),
                "triangle": ("triangle",)}
_PLURAL = {"circle": "circles", "disc": "discs", "square": "squares", "box": "boxes",
           "triangle": "triangles"}
_COUNT = {2: "two", 3: "three"}

# Where an object is, per cell: training phrases, and held-out ones no training caption uses.
# Held out are whole phrases, not words: each is a new combination of words that training
# captions use elsewhere ("in the upper left corner" from "in the top left corner" and "at the
# upper left"), a hyphenated form, or a paraphrase that a small pretrained encoder reads alike
# ("centre", "very top", "left edge"). Words training never shows would test MiniLM-L6's
# lexicon, not the model: held out as words, "upper" and "lower" were read right 0-14% of the
# time by a reader of MiniLM's states that read the training words ~100% right
# (benchmarks/text_probe.py, 2026-12-03). The phrases and frames below were picked among
# paraphrases by that reader (layer 2, 1500 steps, 2026-12-04), so the held-out figure says how
# far the model follows paraphrases its encoder carries, not arbitrary ones. Misread candidates,
# not kept: "right in the middle" 0% (read as the right), "dead center" 0%, "on the left-hand
# side" 5%, "in the very middle" 47%; frames "on a dark canvas, ..." 48%, "in this image: ..." 80%.
_TRAIN_PLACES = {
    "top left": ("at the top left", "in the top left corner", "top left", "at the upper left",
                 "near the top left", "top left corner", "in the top left", "at the far top left"),
    "top center": ("at the top center", "at the top", "top middle", "at the upper center",
                   "near the top", "in the top middle", "up top", "top center"),
    "top right": ("at the top right", "in the top right corner", "top right", "at the upper right",
                  "near the top right", "top right corner", "in the top right",
                  "at the far top right"),
    "middle left": ("at the middle left", "on the left", "at the left", "on the left side",
                    "near the left", "at the far left", "left", "along the left"),
    "center": ("at the center", "in the middle", "in the center", "at the middle", "centered",
               "center", "middle", "at the center point"),
    "middle right": ("at the middle right", "on the right", "at the right", "on the right side",
                     "near the right", "at the far right", "right", "along the right"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "bottom left",
                    "at the lower left", "near the bottom left", "bottom left corner",
                    "in the bottom left", "at the far bottom left"),
    "bottom center": ("at the bottom center", "at the bottom", "bottom middle",
                      "at the lower center", "near the bottom", "in the bottom middle",
                      "down low", "bottom center"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "bottom right",
                     "at the lower right", "near the bottom right", "bottom right corner",
                     "in the bottom right", "at the far bottom right"),
}
_HELD_OUT_PLACES = {
    "top left": ("in the upper left corner", "at the top-left"),
    "top center": ("at the very top", "at the upper middle"),
    "top right": ("in the upper right corner", "at the top-right"),
    "middle left": ("at the left side", "on the left edge"),
    "center": ("in the centre", "in the middle of the picture"),
    "middle right": ("at the right side", "on the right edge"),
    "bottom left": ("in the lower left corner", "at the bottom-left"),
    "bottom center": ("at the very bottom", "at the lower middle"),
    "bottom right": ("in the lower right corner", "at the bottom-right"),
}
# Which part costs what, for a reader of MiniLM's layer-2 states alone (benchmarks/text_probe.py
# --layers=2 --text_depths=0 --steps=1500 --seeds=0,1,2 --parts, 512 held-out scenes,
# 2026-12-05, these tables): canonical 100 %, held-out phrasings 59.0 / 75.0 / 71.5 %; each part
# alone, the rest phrased as in training: places 71-75 %, verb 93-95 %, frames 95-97 %, joiner
# 94-98 %. The position phrases are what the encoder carries least. Variety in training is what
# lets a reader pass over words it has not seen: with the tables of 2026-12-04 (8 frames instead
# of 18, 4 place phrases a cell instead of 8, no verbs, no joiner but "and", no canonical share)
# it read 65-68 % (two seeds); four captions a training scene instead of one added nothing
# beyond the seeds' spread (62-77 %, ad hoc).
# The share of training ("varied") captions in the canonical wording (`shapes.caption`). Without
# it the reader reads more held-out phrasings (77-83 %, three seeds) but the demo's image model
# draws fewer canonical prompts right: two demo runs a share (2026-12-05, base seeds 0 and 1,
# 256 prompts a wording, canonical / held-out phrasings exactly right): share 0 85.9 / 64.5 %
# and 84.4 / 57.4 %, share 0.1 89.8 / 54.7 % and 92.6 / 68.0 %, share 0.25 (seed 0) 91.4 /
# 57.0 %; with the tables of 2026-12-04, 94.5 / 53.5 % (one run).
CANONICAL_SHARE = 0.1
# Sentence frames around the list of objects ("{}" is the list).
_TRAIN_FRAMES = ("{}", "there is {}", "an image of {}", "a picture with {}", "{}, on black",
                 "a scene with {}", "{} on a dark background", "this picture shows {}",
                 "a photo of {}", "we see {}", "the image contains {}", "a drawing of {}",
                 "look at {}", "{} against black", "a canvas with {}", "it shows {}",
                 "{} drawn on black", "a render of {}")
# Verbs between an object and its place in training captions, for one object and for several
# (held out: "is" / "are"); drawn for 40 % of the objects, the rest name the place directly.
_TRAIN_VERBS = {1: ("sits", "lies", "placed", "located", "appears", "drawn", "can be seen"),
                2: ("sit", "lie", "placed", "located", "appear", "drawn", "can be seen")}
# Joiners between the objects of a training caption: ", " then "and" before the last, or one of
# the others throughout (held out: "; and").
_TRAIN_JOINERS = (", ", " plus ", " as well as ", " along with ", " with ", ". ")
_HELD_OUT_FRAMES = ("in this scene, {}", "in this picture, {}", "shown here: {}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(parts: list[str], rng: np.random.Generator, held_out: bool) -> str:
    if len(parts) == 1:
        return parts[0]
    if held_out:  # "A; B; and C": no training caption joins with ";"
        return "; ".join(parts[:-1]) + "; and " + parts[-1]
    joiner = _pick(rng, _TRAIN_JOINERS)
    last = _pick(rng, (" and ", ", and ")) if joiner == ", " else joiner
    return joiner.join(parts[:-1]) + last + parts[-1]


def _places(cells: Sequence[str], rng, held_out: bool) -> str:
    table = _HELD_OUT_PLACES if held_out else _TRAIN_PLACES
    words = [_pick(rng, table[c]) for c in cells]
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def describe(objects: Sequence, rng: np.random.Generator, phrasing: str,
             held_out_parts: Collection[str] = HELD_OUT_PARTS) -> str:
    """A caption of `objects` (ShapeObjects) in `phrasing`: "varied" for training, "held_out"
    for evaluation ("canonical" is `shapes.caption`, which needs no rng). `held_out_parts`, a
    subset of HELD_OUT_PARTS, says which parts of a "held_out" caption are held out, the rest
    phrased as in training: benchmarks/text_probe.py scores each part alone."""
    if phrasing not in ("varied", "held_out"):
        raise ValueError(f"phrasing must be 'varied' or 'held_out' here, got {phrasing!r}")
    unknown = set(held_out_parts) - set(HELD_OUT_PARTS)
    if unknown:
        raise ValueError(f"unknown held-out parts {sorted(unknown)} (known: {HELD_OUT_PARTS})")
    held_out = phrasing == "held_out"
    parts_held = set(held_out_parts) if held_out else set()
    objects = list(objects)
    if not objects:
        return "an empty image" if held_out else _pick(
            rng, ("an empty image", "nothing", "a black image", "no objects"))
    # Object order: as read (row-major), reversed or shuffled.
    order = int(rng.integers(3))
    if order == 1:
        objects = objects[::-1]
    elif order == 2:
        objects = [objects[i] for i in rng.permutation(len(objects))]
    # Alike objects (same colour and shape) told as a count: "two red circles at ... and ...".
    groups: dict[tuple[str, str], list[str]] = {}
    if rng.random() < 0.5:
        for o in objects:
            groups.setdefault((o.color, o.shape), []).append(o.cell)
    else:
        groups = {(o.color, o.shape, i): [o.cell] for i, o in enumerate(objects)}
    parts = []
    for key, cells in groups.items():
        color = _pick(rng, _COLOR_WORDS[key[0]])
        shape = _pick(rng, _SHAPE_WORDS[key[1]])
        where = _places(cells, rng, "places" in parts_held)
        if len(cells) > 1:
            thing = f"{_COUNT[len(cells)]} {color} {_PLURAL[shape]}"
        else:
            article = _article(color) if held_out else _pick(rng, (_article(color), "one", "the"))
            thing = f"{article} {color} {shape}"
        if "verb" in parts_held:  # "a red circle is in the upper left corner": no training verb
            parts.append(f"{thing} {'are' if len(cells) > 1 else 'is'} {where}")
        elif not held_out and rng.random() < 0.4:  # "a red circle sits at the top left"
            parts.append(f"{thing} {_pick(rng, _TRAIN_VERBS[min(len(cells), 2)])} {where}")
        else:
            parts.append(f"{thing} {where}")
    frame = _pick(rng, _HELD_OUT_FRAMES if "frames" in parts_held else _TRAIN_FRAMES)
    text = frame.format(_join(parts, rng, "joiner" in parts_held))
    if text.startswith("there is ") and len(next(iter(groups.values()))) > 1:
        text = "there are " + text[len("there is "):]
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        text += "."
    return text
