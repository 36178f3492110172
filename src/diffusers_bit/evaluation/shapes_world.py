# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Shapes world: a synthetic, compositional text-to-image data set for training tiny models on a CPU and grading
what they generate with [`~diffusers_bit.evaluation.shapes_eval`] (a GenEval-style evaluator that needs no detector).

World:

- shapes `circle`, `square`, `triangle` (upright isosceles triangle, base = height), all axis-aligned and defined by
  a square bounding box of side `diameter` in normalised image coordinates (`x` right, `y` down, both in `[0, 1]`);
- six saturated, hue-separated colours ([`PALETTE`]); every drawn object is its palette colour times a brightness
  factor in `[0.92, 1.04]` (the hue is unchanged);
- sizes `small` (diameter 0.22 of the image side) and `large` (0.34), each jittered by +-4%;
- a neutral, low-saturation background (per-channel tint of at most 6 levels): plain light or dark grey, or grey
  stripes, checks or smooth noise with a contrast of 10-30 levels.

Objects never overlap: the bounding boxes of two objects are at least [`OBJECT_GAP`] apart along some axis, and every
box keeps [`IMAGE_MARGIN`] from the image border. [`render`] draws a scene at any size with 4x4 supersampling, so
the same scene at 64 and 128 px shows the same picture.

Captions follow the GenEval categories ([`CATEGORIES`]); an image contains exactly the objects its caption names:

| category        | caption                                                     | image                          |
|-----------------|-------------------------------------------------------------|--------------------------------|
| `single_object` | `a circle`                                                  | 1 object, random colour        |
| `two_object`    | `a circle and a square` (different shapes)                  | 2 objects, random colours      |
| `counting`      | `two triangles`, `three ...`, `four ...`                    | N objects, random colours      |
| `colors`        | `a red square`, `an orange circle`                          | 1 object of that colour        |
| `position`      | `a circle to the left of a square`, `... to the right of`,  | 2 objects, random colours      |
|                 | `... above ...`, `... below ...` (different shapes)         |                                |
| `color_attr`    | `a red circle and a blue square` (different shapes/colours) | 2 objects of those colours     |

The structured spec of a caption ([`~diffusers_bit.evaluation.shapes_eval.parse_prompt`] inverts
[`spec_to_caption`]) is
`{"category": ..., "objects": [{"shape": ..., "color": name or None, "count": n}, ...], "relation": None or one of
"left of", "right of", "above", "below"}`; for a position caption the relation reads "objects[0] <relation>
objects[1]". In a `position` image the centroid offset along the relation's axis is at least the two half-diameters
plus [`OBJECT_GAP`] and at least 2.5 times the offset along the other axis.

Held-out compositions (never captioned in `train`; the `test` split is made of them only):

- colour-shape bindings [`HELD_OUT_COLOR_SHAPES`] = red square, yellow triangle, blue circle: the `colors` captions
  naming them (3 of 18) and every `color_attr` caption naming one of them (54 of 180);
- the captions in [`HELD_OUT_CAPTIONS`]: `a triangle` (1 of 3 `single_object`), `a triangle and a square` (1 of 6
  `two_object`), `three squares` and `four circles` (2 of 9 `counting`), and for `position` the three layouts
  circle-left-of-triangle, square-above-circle and triangle-above-square in both phrasings (6 of 24).

Every shape, colour, count and relation still occurs in `train` captions. Images of other categories may show a red
square etc. without naming its colour: only the captions are held out.

Splits: record `i` of a split has category `CATEGORIES[i % 6]`; in `train` and `validation` its composition is
drawn uniformly from that category's seen compositions, in `test` the category's held-out compositions are cycled
through in the order of [`compositions`] (324 test records cover all 67 held-out captions). Each record is drawn
with its own `numpy.random.Generator` seeded by `(seed, split, i)`, so records do not depend on the split sizes and
the same call writes byte-identical files.
"""

import functools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}

# name -> sRGB; hues 0, 29, 57, 133, 223, 276 degrees, chroma >= 140 (see `palette_hues`)
PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 130, 20),
    "yellow": (230, 220, 30),
    "green": (30, 170, 60),
    "blue": (40, 90, 220),
    "purple": (150, 60, 210),
}
COLORS = tuple(PALETTE)

SIZES = {"small": 0.22, "large": 0.34}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
SPLITS = ("train", "validation", "test")

IMAGE_MARGIN = 0.04
OBJECT_GAP = 0.06
MIN_IMAGE_SIZE = 32
SUPERSAMPLE = 4

HELD_OUT_COLOR_SHAPES = (("red", "square"), ("yellow", "triangle"), ("blue", "circle"))
HELD_OUT_CAPTIONS = {
    "single_object": ("a triangle",),
    "two_object": ("a triangle and a square",),
    "counting": ("three squares", "four circles"),
    "colors": ("a red square", "a yellow triangle", "a blue circle"),
    "position": (
        "a circle to the left of a triangle",
        "a triangle to the right of a circle",
        "a square above a circle",
        "a circle below a square",
        "a triangle above a square",
        "a square below a triangle",
    ),
    "color_attr": (),  # every caption naming a binding of HELD_OUT_COLOR_SHAPES, see `is_held_out`
}

_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
_BACKGROUND_KINDS = ("plain", "plain", "plain", "stripes", "checks", "noise")
_STRIPE_ORIENTATIONS = ("horizontal", "vertical", "diagonal", "antidiagonal")


# ----------------------------------------------------------------------------------------------------------------------
# Captions and specs
# ----------------------------------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _obj(shape: str, color: Optional[str] = None, count: int = 1) -> dict:
    return {"shape": shape, "color": color, "count": count}


def make_spec(category: str, objects: list, relation: Optional[str] = None) -> dict:
    r"""Build and validate a structured caption spec.

    Args:
        category (`str`): One of [`CATEGORIES`].
        objects (`list`): `(shape, color, count)` tuples or `{"shape", "color", "count"}` dicts.
        relation (`str`, *optional*): One of [`RELATIONS`], for `position` only.

    Returns:
        `dict`: `{"category", "objects", "relation"}`.
    """
    objs = [dict(o) if isinstance(o, dict) else _obj(*o) for o in objects]
    spec = {
        "category": category,
        "objects": [_obj(o["shape"], o.get("color"), o.get("count", 1)) for o in objs],
        "relation": relation,
    }
    validate_spec(spec)
    return spec


def validate_spec(spec: dict) -> None:
    r"""Raise `ValueError` unless `spec` is a well-formed spec of the caption grammar."""
    if not isinstance(spec, dict) or set(spec) != {"category", "objects", "relation"}:
        raise ValueError(f"a spec is a dict with the keys 'category', 'objects', 'relation', got {spec!r}")
    category, objects, relation = spec["category"], spec["objects"], spec["relation"]
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    for o in objects:
        if not isinstance(o, dict) or set(o) != {"shape", "color", "count"}:
            raise ValueError(f"a spec object is a dict with the keys 'shape', 'color', 'count', got {o!r}")
        if o["shape"] not in SHAPES:
            raise ValueError(f"unknown shape {o['shape']!r}; expected one of {SHAPES}")
        if o["color"] is not None and o["color"] not in PALETTE:
            raise ValueError(f"unknown color {o['color']!r}; expected one of {COLORS}")
    n = len(objects)
    counts = [o["count"] for o in objects]
    named = [o["color"] is not None for o in objects]
    shapes = [o["shape"] for o in objects]
    expected = {
        "single_object": (1, [1], [False]),
        "two_object": (2, [1, 1], [False, False]),
        "counting": (1, None, [False]),
        "colors": (1, [1], [True]),
        "position": (2, [1, 1], [False, False]),
        "color_attr": (2, [1, 1], [True, True]),
    }[category]
    if n != expected[0] or (expected[1] is not None and counts != expected[1]) or named != expected[2]:
        raise ValueError(f"malformed {category!r} spec: {spec!r}")
    if category == "counting" and counts[0] not in COUNT_WORDS:
        raise ValueError(f"counting specs have a count in {sorted(COUNT_WORDS)}, got {counts[0]!r}")
    if n == 2 and shapes[0] == shapes[1]:
        raise ValueError(f"the two objects of a {category!r} spec must have different shapes: {spec!r}")
    if category == "color_attr" and objects[0]["color"] == objects[1]["color"]:
        raise ValueError(f"the two objects of a 'color_attr' spec must have different colors: {spec!r}")
    if (relation is not None) != (category == "position") or (relation is not None and relation not in RELATIONS):
        raise ValueError(f"'relation' must be one of {RELATIONS} for 'position' and None otherwise, got {relation!r}")


def spec_to_caption(spec: dict) -> str:
    r"""The caption of a spec (the inverse of [`caption_to_spec`])."""
    validate_spec(spec)
    objs = spec["objects"]

    def noun(o):
        words = [o["color"], o["shape"]] if o["color"] else [o["shape"]]
        return f"{_article(words[0])} {' '.join(words)}"

    category = spec["category"]
    if category == "counting":
        return f"{COUNT_WORDS[objs[0]['count']]} {PLURALS[objs[0]['shape']]}"
    if category == "position":
        return f"{noun(objs[0])} {RELATION_PHRASES[spec['relation']]} {noun(objs[1])}"
    return " and ".join(noun(o) for o in objs)


def compositions(category: str) -> list[dict]:
    r"""Every spec of `category`, in a fixed order (shapes, then colours, then relations, in the order of
    [`SHAPES`], [`COLORS`], [`RELATIONS`])."""
    if category == "single_object":
        return [make_spec(category, [(s,)]) for s in SHAPES]
    if category == "counting":
        return [make_spec(category, [(s, None, n)]) for n in COUNT_WORDS for s in SHAPES]
    if category == "colors":
        return [make_spec(category, [(s, c)]) for s in SHAPES for c in COLORS]
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if category == "two_object":
        return [make_spec(category, [(a,), (b,)]) for a, b in pairs]
    if category == "position":
        return [make_spec(category, [(a,), (b,)], r) for r in RELATIONS for a, b in pairs]
    if category == "color_attr":
        return [make_spec(category, [(a, ca), (b, cb)]) for a, b in pairs for ca in COLORS for cb in COLORS if ca != cb]
    raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def is_held_out(spec: dict) -> bool:
    r"""Whether a spec's caption is held out of the `train` split (see the module docstring)."""
    if spec_to_caption(spec) in HELD_OUT_CAPTIONS[spec["category"]]:
        return True
    if spec["category"] in ("colors", "color_attr"):
        return any((o["color"], o["shape"]) in HELD_OUT_COLOR_SHAPES for o in spec["objects"])
    return False


def split_compositions(split: str) -> dict[str, list[dict]]:
    r"""Per category, the compositions a split draws from: seen ones for `train`/`validation`, held-out for `test`."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    return {c: [_copy_spec(s) for s in specs] for c, specs in _split_pool(split).items()}


def _copy_spec(spec: dict) -> dict:
    return {"category": spec["category"], "objects": [dict(o) for o in spec["objects"]], "relation": spec["relation"]}


@functools.lru_cache(maxsize=None)
def _split_pool(split: str) -> dict:
    held = split == "test"
    return {c: tuple(s for s in compositions(c) if is_held_out(s) == held) for c in CATEGORIES}


# ----------------------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeObject:
    r"""One drawn object: its bounding box is the square of side `diameter` centred on `(cx, cy)` (normalised)."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    diameter: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Background:
    r"""A neutral background: `rgb` is the base grey (with a small tint); `kind` is `plain`, `stripes`, `checks` or
    `noise`, with a grey modulation of amplitude `contrast` (levels). `period` is the stripe period / check size
    (normalised), `phase` its offset; `noise` is a small grid of values in `[-0.5, 0.5]` interpolated bilinearly."""

    kind: str
    rgb: tuple[float, float, float]
    contrast: float = 0.0
    orientation: Optional[str] = None
    period: float = 0.0
    phase: tuple[float, float] = (0.0, 0.0)
    noise: Optional[tuple[tuple[float, ...], ...]] = None


@dataclass(frozen=True)
class Scene:
    r"""A caption spec with the objects and background that depict it."""

    spec: dict
    objects: tuple[ShapeObject, ...]
    background: Background
    caption: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "caption", spec_to_caption(self.spec))

    def layout(self) -> dict:
        r"""JSON-serialisable description of the drawn objects and background."""
        return {"objects": [asdict(o) for o in self.objects], "background": asdict(self.background)}


def _round(x: float) -> float:
    return round(float(x), 4)


def _sample_background(rng: np.random.Generator) -> Background:
    kind = _BACKGROUND_KINDS[rng.integers(len(_BACKGROUND_KINDS))]
    grey = rng.uniform(165, 230) if rng.random() < 0.6 else rng.uniform(30, 95)
    tint = rng.integers(-6, 7, size=3)
    rgb = tuple(_round(grey + t) for t in tint)
    if kind == "plain":
        return Background(kind, rgb)
    contrast = _round(rng.uniform(10, 30))
    if kind == "noise":
        k = int(rng.integers(3, 7))
        grid = rng.uniform(-0.5, 0.5, size=(k, k))
        return Background(kind, rgb, contrast, noise=tuple(tuple(_round(v) for v in row) for row in grid))
    orientation = _STRIPE_ORIENTATIONS[rng.integers(4)] if kind == "stripes" else None
    period = _round(rng.uniform(0.05, 0.14) if kind == "stripes" else rng.uniform(0.08, 0.2))
    phase = (_round(rng.random()), _round(rng.random()))
    return Background(kind, rgb, contrast, orientation, period, phase)


def _separated(cx, cy, d, placed) -> np.ndarray:
    ok = np.ones(np.shape(cx), dtype=bool)
    for px, py, pd in placed:
        gap = (d + pd) / 2 + OBJECT_GAP
        ok &= (np.abs(cx - px) >= gap) | (np.abs(cy - py) >= gap)
    return ok


def _place_free(rng: np.random.Generator, diameters: list) -> Optional[list]:
    placed = []
    for d in diameters:
        lo, hi = IMAGE_MARGIN + d / 2, 1 - IMAGE_MARGIN - d / 2
        cand = rng.uniform(lo, hi, size=(2, 48))
        ok = np.flatnonzero(_separated(cand[0], cand[1], d, placed))
        if ok.size == 0:
            return None
        placed.append((cand[0, ok[0]], cand[1, ok[0]], d))
    return [(x, y) for x, y, _ in placed]


def _place_relation(rng: np.random.Generator, da: float, db: float, relation: str) -> list:
    # "near" is the object with the smaller coordinate along the relation's axis ("along"); the far one's centre is
    # `offset` >= half sizes + gap further along, and `across` (|across| <= 0.4 offset) off the axis
    swap = relation in ("right of", "below")
    dn, df = (db, da) if swap else (da, db)
    lo_n, hi_n = IMAGE_MARGIN + dn / 2, 1 - IMAGE_MARGIN - dn / 2
    lo_f, hi_f = IMAGE_MARGIN + df / 2, 1 - IMAGE_MARGIN - df / 2
    offset = rng.uniform((dn + df) / 2 + OBJECT_GAP, hi_f - lo_n)
    across = rng.uniform(-1, 1) * min(0.4 * offset, hi_f - lo_n)
    n_along = rng.uniform(lo_n, hi_f - offset)
    n_across = rng.uniform(max(lo_n, lo_f - across), min(hi_n, hi_f - across))
    near, far = (n_along, n_across), (n_along + offset, n_across + across)
    a, b = (far, near) if swap else (near, far)
    if relation in ("above", "below"):  # (along, across) = (y, x)
        a, b = a[::-1], b[::-1]
    return [a, b]


def sample_scene(spec: dict, rng: np.random.Generator) -> Scene:
    r"""Draw a scene that depicts `spec` (random sizes, colours that the spec leaves open, layout, background).

    Args:
        spec (`dict`): A spec of the caption grammar (see [`make_spec`]).
        rng (`numpy.random.Generator`): The only source of randomness.

    Returns:
        [`Scene`]
    """
    validate_spec(spec)
    items = []
    for o in spec["objects"]:
        for _ in range(o["count"]):
            items.append((o["shape"], o["color"] or COLORS[rng.integers(len(COLORS))]))
    sizes = [("small", "large")[rng.integers(2)] for _ in items]
    while True:
        diameters = [SIZES[s] * rng.uniform(0.96, 1.04) for s in sizes]
        if spec["relation"] is not None:
            centres = _place_relation(rng, diameters[0], diameters[1], spec["relation"])
            break
        for _ in range(8):
            centres = _place_free(rng, diameters)
            if centres is not None:
                break
        if centres is not None:
            break
        sizes = ["small"] * len(items)  # four large objects rarely fit: shrink and retry
    objects = []
    for (shape, color), size, d, (cx, cy) in zip(items, sizes, diameters, centres):
        rgb = tuple(int(v) for v in np.clip(np.rint(np.array(PALETTE[color]) * rng.uniform(0.92, 1.04)), 0, 255))
        objects.append(ShapeObject(shape, color, size, _round(cx), _round(cy), _round(d), rgb))
    return Scene(spec, tuple(objects), _sample_background(rng))


def record_rng(seed: int, split: str, index: int) -> np.random.Generator:
    r"""The generator of record `index` of `split`: a function of `(seed, split, index)` only."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


def make_scene(split: str, index: int, seed: int = 0) -> Scene:
    r"""Record `index` of `split` (see the module docstring for how categories and compositions are chosen)."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    pool = _split_pool(split)
    rng = record_rng(seed, split, index)
    category = CATEGORIES[index % len(CATEGORIES)]
    specs = pool[category]
    if split == "test":
        spec = specs[(index // len(CATEGORIES)) % len(specs)]
    else:
        spec = specs[rng.integers(len(specs))]
    return sample_scene(_copy_spec(spec), rng)


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------
def _box_reduce(values: np.ndarray, factor: int) -> np.ndarray:
    h, w = values.shape[0] // factor, values.shape[1] // factor
    return values.reshape(h, factor, w, factor).mean(axis=(1, 3), dtype=np.float32)


def _background_array(bg: Background, size: int) -> np.ndarray:
    base = np.asarray(bg.rgb, dtype=np.float32)
    if bg.kind == "plain":
        return np.broadcast_to(base, (size, size, 3)).copy()
    if bg.kind == "noise":  # smooth: sampled at the pixel centres
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        grid = np.asarray(bg.noise, dtype=np.float32)
        k = grid.shape[0]
        p = coords * (k - 1)
        i0 = np.minimum(np.floor(p).astype(np.int64), k - 2)
        f = (p - i0).astype(np.float32)
        rows = grid[i0] * (1 - f[:, None]) + grid[i0 + 1] * f[:, None]  # (size, k): interpolated along y
        mod = rows[:, i0] * (1 - f[None, :]) + rows[:, i0 + 1] * f[None, :]
    else:  # sharp edges: supersampled, then box-filtered
        n = size * SUPERSAMPLE
        coords = (np.arange(n, dtype=np.float32) + 0.5) / n
        u, v = coords[None, :], coords[:, None]
        if bg.kind == "stripes":
            t = {
                "horizontal": v + 0 * u,
                "vertical": u + 0 * v,
                "diagonal": (u + v) / np.sqrt(2),
                "antidiagonal": (u - v) / np.sqrt(2),
            }[bg.orientation]
            mod = (np.floor(t / bg.period + bg.phase[0]) % 2) - 0.5
        elif bg.kind == "checks":
            mod = ((np.floor(u / bg.period + bg.phase[0]) + np.floor(v / bg.period + bg.phase[1])) % 2) - 0.5
        else:
            raise ValueError(f"unknown background kind {bg.kind!r}")
        mod = _box_reduce(mod.astype(np.float32), SUPERSAMPLE)
    return base + (bg.contrast * mod).astype(np.float32)[..., None]


def _shape_mask(obj: ShapeObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    r = obj.diameter / 2
    dx, dy = xs[None, :] - obj.cx, ys[:, None] - obj.cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if obj.shape == "triangle":  # apex at the top centre, base at the bottom
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    r"""Rasterise `scene` to a `(size, size, 3)` uint8 array. Object coverage is computed with 4x4 supersampling
    per pixel (box filter), as are the edges of striped and checked backgrounds."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"`size` must be an int >= {MIN_IMAGE_SIZE}, got {size!r}")
    size = int(size)
    canvas = _background_array(scene.background, size)
    sub = (np.arange(size * SUPERSAMPLE, dtype=np.float32) + 0.5) / (size * SUPERSAMPLE)
    for obj in scene.objects:
        r = obj.diameter / 2
        x0, x1 = max(int(np.floor((obj.cx - r) * size)), 0), min(int(np.ceil((obj.cx + r) * size)), size)
        y0, y1 = max(int(np.floor((obj.cy - r) * size)), 0), min(int(np.ceil((obj.cy + r) * size)), size)
        mask = _shape_mask(obj, sub[x0 * SUPERSAMPLE : x1 * SUPERSAMPLE], sub[y0 * SUPERSAMPLE : y1 * SUPERSAMPLE])
        alpha = _box_reduce(mask.astype(np.float32), SUPERSAMPLE)[..., None]
        patch = canvas[y0:y1, x0:x1]
        patch += alpha * (np.asarray(obj.rgb, dtype=np.float32) - patch)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64) -> Image.Image:
    r"""Rasterise `scene` to a `size` x `size` RGB `PIL.Image` (see [`render_array`])."""
    return Image.fromarray(render_array(scene, size), mode="RGB")


# ----------------------------------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------------------------------
def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {value!r}")
    return int(value)


def _prompt_note(prompt_counts: dict, split: str) -> str:
    n = prompt_counts.get(split, 0)
    return f"{n} distinct captions, `prompts_{split}.jsonl`" if n else "not written"


def _data_card(counts: dict, size: int, seed: int, prompt_counts: dict) -> str:
    held_lines = []
    for category in CATEGORIES:
        captions = [repr(spec_to_caption(s)) for s in split_compositions("test")[category]]
        listed = f", e.g. {', '.join(captions[:3])}" if len(captions) > 6 else f": {', '.join(captions)}"
        held_lines.append(f"- `{category}`: {len(captions)} of {len(compositions(category))} captions{listed}")
    held = "\n".join(held_lines)
    palette = ", ".join(f"{name} {rgb}" for name, rgb in PALETTE.items())
    configs = "".join(f"  - split: {split}\n    path: {split}/*\n" for split in SPLITS if counts[split])
    return f"""---
license: apache-2.0
task_categories:
- text-to-image
pretty_name: Shapes world
configs:
- config_name: default
  data_files:
{configs}---

# Shapes world

Synthetic compositional text-to-image data written by `diffusers_bit.evaluation.write_shapes_dataset` (command line:
`diffusers-bit shapes-data`) with `seed={seed}`, `size={size}`: {counts["train"]} train, {counts["validation"]}
validation and {counts["test"]} test images of {size}x{size} px. Regenerating with the same arguments gives
byte-identical files.

- Shapes: circle, square, upright triangle; sizes small (0.22 of the side) and large (0.34); no overlaps.
- Palette (sRGB, times a brightness factor in [0.92, 1.04]): {palette}.
- Backgrounds: neutral grey, plain or with low-contrast stripes, checks or smooth noise.
- Categories (GenEval-style): {", ".join(CATEGORIES)}; every image shows exactly the objects its caption names.

## Splits

- `train`: seen compositions only.
- `validation`: seen compositions, new layouts ({_prompt_note(prompt_counts, "validation")}).
- `test`: held-out compositions only ({_prompt_note(prompt_counts, "test")}).

Held-out compositions (never captioned in `train`; in `colors` and `color_attr`, every caption that binds
{", ".join(f"{c} to {s}" for c, s in HELD_OUT_COLOR_SHAPES)}):

{held}

Every shape, colour, count and relation still appears in `train` captions.

## Files

`<split>/metadata.jsonl` rows: `file_name`, `text` (the caption), `category`, `spec` (JSON string: `category`,
`objects` [`shape`, `color`, `count`], `relation`), `layout` (JSON string: the drawn objects and background).

```python
import datasets

data = datasets.load_dataset("imagefolder", data_dir="<this folder>")  # train / validation / test
data = datasets.load_dataset("<this folder>")  # the same, through the configuration above
```

Score generated images with `diffusers-bit shapes-eval` or `diffusers_bit.evaluation.evaluate_images`.
"""


def write_shapes_dataset(
    output_dir: Union[str, os.PathLike],
    num_train: int = 20000,
    num_validation: int = 600,
    num_test: int = 600,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    r"""Write the shapes world as a `datasets` imagefolder.

    Layout: `output_dir/{train,validation,test}/` with `000000.png`, ... and a `metadata.jsonl` (`file_name`, `text`,
    `category`, `spec`, `layout`; `spec` and `layout` are JSON strings), `output_dir/prompts_validation.jsonl` and
    `output_dir/prompts_test.jsonl` (the distinct captions of the split: `text`, `category`, `spec`, `num_images`)
    and a data card `output_dir/README.md`. A split of 0 records is not written.

    Load all splits with `datasets.load_dataset("imagefolder", data_dir=output_dir)` (the split folders are found by
    name; the root files are ignored), or one with `split="train"`; the training scripts take
    `--train_data_dir output_dir`.

    Args:
        output_dir (`str` or `os.PathLike`): Target folder; it must be empty or absent unless `overwrite=True`.
        num_train, num_validation, num_test (`int`): Records per split (>= 0, not all 0).
        size (`int`, defaults to 64): Image side in pixels (>= 32).
        seed (`int`, defaults to 0): Seed (>= 0); record `i` of a split depends on `(seed, split, i)` only.
        overwrite (`bool`, defaults to `False`): Replace the split folders, prompt files and data card of a
            non-empty `output_dir` (other files there are left alone).

    Returns:
        `dict`: `{"output_dir", "counts", "seconds"}`.
    """
    counts = {
        "train": _check_count("num_train", num_train),
        "validation": _check_count("num_validation", num_validation),
        "test": _check_count("num_test", num_test),
    }
    if not any(counts.values()):
        raise ValueError("`num_train`, `num_validation` and `num_test` are all 0: nothing to write")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"`size` must be an int >= {MIN_IMAGE_SIZE}, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` {str(output_dir)!r} exists and is not a folder")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"`output_dir` {str(output_dir)!r} is not empty; pass `overwrite=True` (command line: "
                "--overwrite) to replace the shapes data in it"
            )
        for split in SPLITS:
            if (output_dir / split).is_dir():
                shutil.rmtree(output_dir / split)
        for name in ("prompts_validation.jsonl", "prompts_test.jsonl", "README.md"):
            (output_dir / name).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    prompt_counts = {}
    for split in SPLITS:
        if counts[split] == 0:
            continue
        folder = output_dir / split
        folder.mkdir()
        prompts = {}
        width = max(6, len(str(counts[split] - 1)))
        with open(folder / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for index in range(counts[split]):
                scene = make_scene(split, index, seed)
                file_name = f"{index:0{width}d}.png"
                render(scene, size).save(folder / file_name, format="PNG")
                row = {
                    "file_name": file_name,
                    "text": scene.caption,
                    "category": scene.spec["category"],
                    "spec": json.dumps(scene.spec),
                    "layout": json.dumps(scene.layout()),
                }
                meta.write(json.dumps(row) + "\n")
                entry = prompts.setdefault(
                    scene.caption,
                    {"text": scene.caption, "category": row["category"], "spec": row["spec"], "num_images": 0},
                )
                entry["num_images"] += 1
        prompt_counts[split] = len(prompts)
        if split != "train":
            order = sorted(prompts.values(), key=lambda p: (CATEGORIES.index(p["category"]), p["text"]))
            with open(output_dir / f"prompts_{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(p) + "\n" for p in order)
    (output_dir / "README.md").write_text(_data_card(counts, int(size), int(seed), prompt_counts), encoding="utf-8")
    return {"output_dir": str(output_dir), "counts": counts, "seconds": time.time() - started}


def read_prompts(path: Union[str, os.PathLike]) -> list[dict]:
    r"""Read a `prompts_*.jsonl` file (or any JSON-lines file with a `text` key); `spec` is decoded to a dict."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if isinstance(row.get("spec"), str):
                    row["spec"] = json.loads(row["spec"])
                rows.append(row)
    return rows
