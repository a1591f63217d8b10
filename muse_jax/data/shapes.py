"""Synthetic shapes: procedural captioned images and the oracle that reads them back.

An image holds 1 to 3 flat-coloured objects (colour x shape) in distinct cells of a 3x3 grid on a
plain dark background; its caption names them ("a red circle at the top left and a blue square at
the bottom right"). Everything is a pure function of a numpy Generator, so `ShapesSource[i]` is
the same image on every machine and in every grain worker.

The oracle (`parse_image`, `score`) is the text-alignment metric of the later stages, which feed
it VQGAN reconstructions and generated samples: blurry, noisy, slightly off-colour. So it trusts
nothing pixel-exact. Presence is the foreground area of a cell; colour is the palette ray
(background -> colour) nearest the median of the object's core pixels, which forgives dimming by
blur and brightness shifts; shape comes from moments of the soft mask that a symmetric blur leaves
unchanged, where bounding boxes and corners would be wrecked by blur and blockiness.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from muse_jax.data import shapes_captions

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "orange": (250, 130, 20),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle")
CELLS = ("top left", "top center", "top right", "middle left", "center", "middle right",
         "bottom left", "bottom center", "bottom right")
# Near-black: every palette colour is >= 170 away from it in RGB (from light grey 200: >= 146).
BACKGROUND = (24, 24, 24)
EMPTY_CAPTION = "an empty image"

# Object side as a fraction of the cell side (canonical, jitter range) and the largest centre shift;
# the extremes still leave a margin of 7% of a cell so blur does not bleed into a neighbour.
_CANONICAL_SIZE = 0.67
_SIZE_RANGE = (0.58, 0.76)
_MAX_SHIFT = 0.05
_SPLITS = {"train": 0, "eval": 1}

_PALETTE = np.array(list(COLORS.values()), np.float32)
_BG = np.array(BACKGROUND, np.float32)


@dataclasses.dataclass(frozen=True, order=True)
class ShapeObject:
    color: str
    shape: str
    cell: str


def _row_major(objects: Sequence[ShapeObject]) -> list[ShapeObject]:
    return sorted(objects, key=lambda o: CELLS.index(o.cell))


def sample_objects(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 3,
                   colors: Sequence[str] = tuple(COLORS),
                   shapes: Sequence[str] = SHAPES) -> list[ShapeObject]:
    """Uniform count, distinct uniform cells, independent uniform colour and shape (of
    `colors` and `shapes`, a part of the palette: concepts a run never sees); row-major."""
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(len(CELLS), size=n, replace=False)
    color_ids = rng.integers(len(colors), size=n)
    shape_ids = rng.integers(len(shapes), size=n)
    return _row_major([ShapeObject(colors[c], shapes[s], CELLS[k])
                       for k, c, s in zip(cells, color_ids, shape_ids)])


def _coverage(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float,
              half: float) -> np.ndarray:
    """Anti-aliased coverage in [0,1] from a signed distance (pixels): a 1-pixel linear edge ramp.

    All shapes fill the square [cx-half, cx+half] x [cy-half, cy+half]; the triangle points up.
    """
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - half
    elif shape == "square":  # separable, so exact box-filter coverage
        return (np.clip(half + 0.5 - np.abs(dx), 0.0, 1.0)
                * np.clip(half + 0.5 - np.abs(dy), 0.0, 1.0))
    elif shape == "triangle":
        slant = (2.0 * np.abs(dx) - (dy + half)) / np.sqrt(5.0)
        sdf = np.maximum(slant, dy - half)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _cell_bounds(size: int) -> np.ndarray:
    return np.round(np.arange(4) * size / 3).astype(int)


def cell_mask(cell: str, image_size: int) -> np.ndarray:
    """bool [S,S], True on the pixels of grid cell `cell`: what inpainting one object masks."""
    row, col = divmod(CELLS.index(cell), 3)
    bounds = _cell_bounds(image_size)
    mask = np.zeros((image_size, image_size), bool)
    mask[bounds[row]:bounds[row + 1], bounds[col]:bounds[col + 1]] = True
    return mask


def render(objects: Sequence[ShapeObject], image_size: int,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 [S,S,3]: each object centred in its cell, with size/position jitter from `rng`.

    `rng=None` draws every object at the canonical size, exactly centred.
    """
    if image_size < 24:
        raise ValueError(f"image_size must be >= 24, got {image_size}")
    canvas = np.empty((image_size, image_size, 3), np.float32)
    canvas[:] = _BG
    cell = image_size / 3
    bounds = _cell_bounds(image_size)
    for obj in objects:
        k = CELLS.index(obj.cell)
        row, col = divmod(k, 3)
        if rng is None:
            frac, shift = _CANONICAL_SIZE, np.zeros(2)
        else:
            frac, shift = rng.uniform(*_SIZE_RANGE), rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, 2)
        cx, cy = (col + 0.5 + shift[0]) * cell, (row + 0.5 + shift[1]) * cell
        y0, y1, x0, x1 = bounds[row], bounds[row + 1], bounds[col], bounds[col + 1]
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        cov = _coverage(obj.shape, xs, ys, cx, cy, frac * cell / 2)[..., None]
        patch = canvas[y0:y1, x0:x1]
        patch += cov * (np.array(COLORS[obj.color], np.float32) - patch)
    return np.round(canvas).astype(np.uint8)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(objects: Sequence[ShapeObject]) -> str:
    """'a red circle at the top left, a blue square at the center and an orange ...' (row-major)."""
    parts = [f"{_article(o.color)} {o.color} {o.shape} at the {o.cell}"
             for o in _row_major(objects)]
    if not parts:
        return EMPTY_CAPTION
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


_OBJECT_RE = re.compile(r"an? ({}) ({}) at the ({})".format(
    "|".join(COLORS), "|".join(SHAPES), "|".join(CELLS)))


def parse_caption(text: str) -> list[ShapeObject]:
    """Inverse of `caption`, forgiving case, outer spaces and a final '.'; else ValueError."""
    norm = text.strip().lower().rstrip(".").strip()
    if norm == EMPTY_CAPTION:
        return []
    objects = []
    for part in re.split(r", | and ", norm):
        m = _OBJECT_RE.fullmatch(part)
        if m is None:
            raise ValueError(f"cannot parse {part!r} in caption {text!r}: expected "
                             "'a <colour> <shape> at the <cell>' with colour in "
                             f"{list(COLORS)}, shape in {list(SHAPES)}, cell in {list(CELLS)}")
        objects.append(ShapeObject(*m.groups()))
    if len({o.cell for o in objects}) != len(objects):
        raise ValueError(f"caption {text!r} puts two objects in the same cell")
    return _row_major(objects)


# Oracle thresholds. Distances are fractions of the smallest background-to-palette distance,
# areas fractions of a cell. The shape features of the ideal shapes are below; the square/circle
# cut is halfway, the triangle cut at a third of its skew, as blockiness mostly shrinks skew.
_MIN_DIST = float(np.min(np.linalg.norm(_PALETTE - _BG, axis=1)))
_FG_THRESHOLD = 0.4 * _MIN_DIST
_MIN_AREA = 0.06  # the smallest object (a 58% triangle) covers 0.17 of its cell
_TRIANGLE_SKEW = -0.0209  # mu03 / m^2.5 of the apex-up triangle; 0 for the symmetric shapes
_SQUARE_ANISOTROPY = -1 / 240  # (mu40 + mu04 - 6 mu22) / (4 m^3) of a square; 0 for a disk
_CIRCLE_INSEPARABILITY = 0.28  # ||A - rows cols^T / m|| / ||A|| of a disk; 0 for a square


def _nearest_color(rgb: np.ndarray) -> str:
    """Palette colour whose ray from the background passes nearest `rgb`.

    Blur mixes an object's colour with the background and brightness shifts scale it; both move
    it along that ray, not across to another colour's."""
    rays = _PALETTE - _BG
    t = np.clip((rays @ (rgb - _BG)) / np.sum(rays * rays, axis=1), 0.4, 1.3)
    dist = np.linalg.norm(_BG + t[:, None] * rays - rgb, axis=1)
    return list(COLORS)[int(np.argmin(dist))]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        p = np.pad(mask, 1)
        mask = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return mask


def _shape_features(alpha: np.ndarray) -> tuple[float, float, float]:
    """(skew, anisotropy, inseparability) of a soft mask: shape cues that blur leaves intact.

    Under convolution with a symmetric kernel, mass, centroid and third central moments are
    unchanged and the fourth-order combination mu40 + mu04 - 6 mu22 only gains the kernel's own
    (tiny) value, so these are the cumulants that survive blur and resampling. Inseparability is
    0 for an axis-aligned rectangle under any separable blur (box, Gaussian, resize) and, while
    blur lowers it for a disk, it stays well above 0.
    """
    mass = float(alpha.sum())
    ys = np.arange(alpha.shape[0], dtype=np.float64)[:, None]
    xs = np.arange(alpha.shape[1], dtype=np.float64)[None, :]
    rows, cols = alpha.sum(1), alpha.sum(0)
    dy = ys - float(rows @ ys[:, 0]) / mass
    dx = xs - float(cols @ xs[0]) / mass
    skew = float(rows @ dy[:, 0] ** 3) / mass**2.5
    mu22 = float((alpha * (dx * dx) * (dy * dy)).sum())
    aniso = (float(cols @ dx[0] ** 4) + float(rows @ dy[:, 0] ** 4) - 6 * mu22) / (4 * mass**3)
    insep = float(np.linalg.norm(alpha - np.outer(rows, cols) / mass) / np.linalg.norm(alpha))
    return skew, aniso, insep


def _classify_shape(skew: float, aniso: float, insep: float) -> str:
    """Triangle by its skew alone; square vs circle by two cues, each scaled to 0 = disk and
    1 = square, averaged, so that blockiness fooling one cue is outvoted by the other."""
    if skew < _TRIANGLE_SKEW / 3:
        return "triangle"
    squareness = (aniso / _SQUARE_ANISOTROPY + 1 - insep / _CIRCLE_INSEPARABILITY) / 2
    return "square" if squareness > 0.5 else "circle"


def _to_float255(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image [H,W,3], got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        lo, hi = float(image.min()), float(image.max())
        if lo < -0.05 or hi > 1.05:  # decoder outputs overshoot a little; [-1,1] or [0,255] do not
            raise ValueError(f"float images must be in [0,1], got values in [{lo:.3g}, {hi:.3g}]; "
                             "map [-1,1] with (x + 1) / 2")
        return np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0
    raise ValueError(f"expected uint8 or float in [0,1], got dtype {image.dtype}")


def _cell_objects(image: np.ndarray):
    """Yields (cell, colour, soft mask) for each cell that holds an object."""
    x = _to_float255(image)
    height, width = x.shape[:2]
    dist = np.linalg.norm(x - _BG, axis=-1)
    rows, cols = _cell_bounds(height), _cell_bounds(width)
    # Keep a blurred edge's tail, but not background blotches far away: they would dominate the
    # fourth moments.
    grow = max(2, round(min(height, width) / 32))
    for k, cell in enumerate(CELLS):
        r, c = divmod(k, 3)
        patch = x[rows[r]:rows[r + 1], cols[c]:cols[c + 1]]
        d = dist[rows[r]:rows[r + 1], cols[c]:cols[c + 1]]
        fg = d > _FG_THRESHOLD
        if fg.sum() < _MIN_AREA * d.size:
            continue
        color = _nearest_color(np.median(patch[fg & (d >= np.median(d[fg]))], axis=0))
        # Alpha in units of the *palette* colour: the object's own core is dimmed when blur
        # shrinks it, and rescaling by it would distort the moments. No clipping at 1 either:
        # moments survive blur only if alpha stays linear in the image.
        ray = np.array(COLORS[color], np.float32) - _BG
        alpha = np.where(_dilate(fg, grow), np.maximum((patch - _BG) @ ray / (ray @ ray), 0), 0)
        yield cell, color, alpha


def parse_image(image: np.ndarray) -> list[ShapeObject]:
    """Reads the objects (row-major) from a uint8 [H,W,3] image or a float one in [0,1].

    Per cell: present if >= 6% of it is foreground (>= 0.4 x the smallest palette distance from
    the background); colour from the median of the brighter half of the foreground; shape from
    blur-invariant moments of the soft foreground alpha (see `_shape_features`).
    """
    return [ShapeObject(color, _classify_shape(*_shape_features(alpha)), cell)
            for cell, color, alpha in _cell_objects(image)]


def score(image: np.ndarray, target: str | Sequence[ShapeObject]) -> dict[str, float]:
    """How well `image` depicts `target` (a caption or objects), by `parse_image`.

    "match": 1.0 iff the parsed set equals the target set. Per-attribute accuracies share one
    denominator, N = target objects + extra parsed objects in cells the target leaves empty, so
    hallucinated objects lower every score: "cell" counts target cells where some object was found,
    "color" / "shape" those where the found object also has the right colour / shape. With N = 0
    (empty target, nothing found) all scores are 1.0.
    """
    want = parse_caption(target) if isinstance(target, str) else list(target)
    got = {o.cell: o for o in parse_image(image)}
    want_cells = {o.cell for o in want}
    extra = sum(cell not in want_cells for cell in got)
    n = len(want) + extra
    if n == 0:
        return {"match": 1.0, "color": 1.0, "shape": 1.0, "cell": 1.0}
    hits = [got.get(o.cell) for o in want]
    return {
        "match": float(set(got.values()) == set(want)),
        "color": sum(h is not None and h.color == o.color for h, o in zip(hits, want)) / n,
        "shape": sum(h is not None and h.shape == o.shape for h, o in zip(hits, want)) / n,
        "cell": sum(h is not None for h in hits) / n,
    }


def score_each(images: Sequence[np.ndarray] | np.ndarray,
               targets: Sequence[str | Sequence[ShapeObject]]) -> list[dict[str, float]]:
    """`score` of each image (images [B,H,W,3] or a sequence of images) against its target."""
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} captions")
    return [score(im, t) for im, t in zip(images, targets)]


def mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each of `score`'s figures over `scores`."""
    return {k: float(np.mean([s[k] for s in scores])) for k in ("match", "color", "shape", "cell")}


def score_batch(images: Sequence[np.ndarray] | np.ndarray,
                targets: Sequence[str | Sequence[ShapeObject]]) -> dict[str, float]:
    """Mean of `score` over a batch (images [B,H,W,3] or a sequence of images)."""
    return mean_scores(score_each(images, targets))


def match_by_count(scores: Sequence[dict[str, float]],
                   targets: Sequence[str | Sequence[ShapeObject]]) -> dict[str, float]:
    """`score_each`'s "match" averaged by how many objects the target names ({"1": ..., "3":
    ...}): a model's binding of colour, shape and place fails with more objects first, which one
    mean hides (the demo's recipe without text blocks, 2026-12-06, 256 held-out phrasings: 89 /
    65 / 49 % exactly right with 1 / 2 / 3 objects; with them, 95 / 94 / 89 %)."""
    if len(scores) != len(targets):
        raise ValueError(f"{len(scores)} scores but {len(targets)} captions")
    by_count: dict[int, list[float]] = {}
    for result, target in zip(scores, targets):
        count = len(parse_caption(target) if isinstance(target, str) else target)
        by_count.setdefault(count, []).append(result["match"])
    return {str(n): float(np.mean(v)) for n, v in sorted(by_count.items())}


class ShapesSource:
    """grain-compatible random-access source of {"image": uint8 [S,S,3], "caption": str}.

    Record `i` is drawn from `np.random.default_rng([seed, split_id, i])`, so it does not depend on
    which worker reads it or in what order; "train" and "eval" are independent streams (of
    jitter, mostly: there are only ~0.8M distinct 1-3 object captions). Sizes and shifts are
    drawn in units of a cell, so record `i` is the same scene at every `image_size`: the
    super-resolution stage scores its 128 px outputs against the 128 px render of the scenes
    it was shown at 64 px. `jitter=False` draws every object at the canonical size, centred in
    its cell (`render(..., rng=None)`): the same scenes and captions, one look per object.
    """

    def __init__(self, image_size: int = 64, split: str = "train", seed: int = 0,
                 min_objects: int = 1, max_objects: int = 3, size: int | None = None,
                 phrasing: str = "canonical", exclude_colors: Sequence[str] = (),
                 exclude_shapes: Sequence[str] = (), jitter: bool = True):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
        if image_size < 24:
            raise ValueError(f"image_size must be >= 24, got {image_size}")
        if not 0 <= min_objects <= max_objects <= len(CELLS):
            raise ValueError(f"need 0 <= min_objects <= max_objects <= 9, got "
                             f"{min_objects}, {max_objects}")
        if phrasing not in shapes_captions.PHRASINGS:
            raise ValueError(f"phrasing must be one of {shapes_captions.PHRASINGS}, got {phrasing!r}")
        unknown = (sorted(set(exclude_colors) - set(COLORS))
                   + sorted(set(exclude_shapes) - set(SHAPES)))
        if unknown:
            raise ValueError(f"unknown colour or shape to exclude: {unknown} (colours "
                             f"{list(COLORS)}, shapes {list(SHAPES)})")
        # Excluded concepts (a fine-tune's new ones) never appear; the oracle still reads them.
        self.colors = tuple(c for c in COLORS if c not in exclude_colors)
        self.shapes = tuple(s for s in SHAPES if s not in exclude_shapes)
        if not self.colors or not self.shapes:
            raise ValueError("at least one colour and one shape must be left")
        self.image_size, self.split, self.seed = image_size, split, seed
        self.phrasing, self.jitter = phrasing, jitter
        self.min_objects, self.max_objects = min_objects, max_objects
        # Train is effectively infinite; 2**31 - 1 keeps indices in grain's int32-safe range.
        self.size = size if size is not None else (2**31 - 1 if split == "train" else 10_000)

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} records")
        return np.random.default_rng([self.seed, _SPLITS[self.split], index])

    def objects(self, index: int) -> list[ShapeObject]:
        return sample_objects(self._rng(index), self.min_objects, self.max_objects,
                              self.colors, self.shapes)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        objects = sample_objects(rng, self.min_objects, self.max_objects, self.colors, self.shapes)
        return {"image": render(objects, self.image_size, rng if self.jitter else None),
                "caption": self._caption(index, objects)}

    def get_caption(self, index: int) -> str:
        return self._caption(index, self.objects(index))

    def _caption(self, index: int, objects: list[ShapeObject]) -> str:
        """The canonical caption, or one drawn in `phrasing` from the record's own stream (apart
        from the scene's, so the image is the same in every phrasing)."""
        if self.phrasing == "canonical":
            return caption(objects)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], int(index), 1])
        if self.phrasing == "varied" and rng.random() < shapes_captions.CANONICAL_SHARE:
            return caption(objects)
        return shapes_captions.describe(objects, rng, self.phrasing)

    def __repr__(self) -> str:
        return (f"ShapesSource(image_size={self.image_size}, split={self.split!r}, "
                f"seed={self.seed}, objects={self.min_objects}..{self.max_objects}, "
                f"size={self.size}, phrasing={self.phrasing!r}, jitter={self.jitter})")
