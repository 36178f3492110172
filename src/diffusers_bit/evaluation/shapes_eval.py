# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""ShapesEval: a deterministic, detector-free GenEval-style evaluator for images of the shapes world
([`~diffusers_bit.evaluation.shapes_world`]).

Analysis of an image ([`analyse_image`]), numpy only:

1. Images larger than 128 px are box-downsampled to fit 128 px, images smaller than 64 px are upsampled
   (bilinear) by an integer factor to at least 64 px: the analysis is resolution-independent. A Gaussian blur of
   0.8 px (at 64 px; `denoise`) then removes pixel noise.
2. Colour segmentation: a pixel is *saturated* when its chroma `max(R, G, B) - min(R, G, B)` is at least
   `chroma_threshold` (64 levels); the backgrounds of the shapes world are neutral grey (chroma <= 12), so plain and
   textured backgrounds alike fall below it. A saturated pixel takes the palette colour of the nearest hue (circular
   distance, at most `max_hue_distance` = 40 degrees; otherwise it counts as background). Hue is unchanged by blending
   with grey, so anti-aliased edges keep their colour.
3. Connected components (8-connectivity) per colour. A component smaller than half of a touching component of
   another colour is merged into it (colour fringes of a generated object do not become objects), then components
   smaller than `min_area` (1% of the image; the smallest object of the world covers 2.2%) are dropped. An object's
   pixels are those of its component whose chroma is at least half of the component's median chroma (its 50%
   coverage edge, which trims halos left by blur or chroma bleeding).
4. Shape ([`classify_shape`]) from features of the object in its bounding box: `fill_ratio` (area / box area:
   circle pi/4, square 1, triangle 1/2; measured with sub-pixel coverage estimated from the chroma of the pixels in
   and around the object), `top_fraction` (share of the pixels in the top half of the box: 1/2, 1/2, 1/4 for an
   upright triangle), `corner_fill` (filled share of the four corner triangles `u + v < 0.25` of the box: 0, 1, 1/3)
   and `width_trend` (correlation of a row's width with its height in the box: 1 for an upright triangle). An object
   that matches none of the shapes (e.g. a box with an aspect ratio outside `[0.55, 1.8]`, or an area above
   `max_area`) is `"unknown"`.

On the renderer's own images (32 to 256 px) the analysis is exact; at 64 px it stays exact under Gaussian pixel
noise of sigma 20 and a Gaussian blur of 1.5 px, and scores about 93% under JPEG quality 50 (chroma subsampling).

Scoring ([`score_image`], rules as in GenEval; shapes `"unknown"` never match):

- `single_object`: at least one object of the shape;  `two_object`: at least one of each shape;
- `counting`: exactly N objects of the shape (other shapes are ignored);
- `colors`: an object of the shape has the colour;  `color_attr`: both (colour, shape) objects are present;
- `position` ("A <relation> B"): both shapes present, and between the centroids of the largest A and the largest B
  the offset along the relation's axis has the right sign, exceeds `position_margin` (0.05 of the image side) and is
  larger than the offset along the other axis.

[`evaluate_images`] averages per category and reports the mean over categories as `overall`, as GenEval does;
[`format_report`] renders it as a Markdown table.
"""

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageFilter

from .shapes_world import (
    CATEGORIES,
    COLORS,
    COUNT_WORDS,
    MIN_IMAGE_SIZE,
    PALETTE,
    PLURALS,
    RELATION_PHRASES,
    SHAPES,
    make_spec,
    spec_to_caption,
    validate_spec,
)

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]

ANALYSIS_SIZE = 128
MIN_ANALYSIS_SIZE = 64
ASPECT_RANGE = (0.55, 1.8)
_BACKGROUND_CHROMA = 16.0


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma of `(..., 3)` float RGB."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = mx - mn
    c = np.maximum(chroma, 1e-6)
    hue = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4)) * 60.0
    return hue, chroma


def palette_hues() -> dict[str, float]:
    r"""The hue (degrees) of every palette colour."""
    hue, _ = _hue(np.asarray(list(PALETTE.values()), dtype=np.float32))
    return dict(zip(COLORS, (float(h) for h in hue)))


_PALETTE_HUES = np.asarray(list(palette_hues().values()), dtype=np.float32)


@dataclass
class DetectedObject:
    r"""An object found by [`analyse_image`]. Coordinates are normalised (`x` right, `y` down, in `[0, 1]`).

    Attributes:
        shape (`str`): `"circle"`, `"square"`, `"triangle"` or `"unknown"`.
        color (`str`): Palette colour name.
        centroid (`tuple[float, float]`): `(x, y)` of the pixels' mean.
        area (`float`): Pixel count over the image's pixel count.
        bbox (`tuple[float, float, float, float]`): `(x0, y0, x1, y1)`.
        fill_ratio, top_fraction, corner_fill, width_trend (`float`): The shape features (module docstring).
        color_purity (`float`): Share of the pixels that have `color` (below 1 after merging fringes).
    """

    shape: str
    color: str
    centroid: tuple[float, float]
    area: float
    bbox: tuple[float, float, float, float]
    fill_ratio: float
    top_fraction: float
    corner_fill: float
    width_trend: float
    color_purity: float = 1.0

    def to_dict(self) -> dict:
        return {
            k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
        }

    def __str__(self) -> str:
        return f"{self.color} {self.shape} @({self.centroid[0]:.2f}, {self.centroid[1]:.2f})"


def load_rgb(image: ImageLike) -> np.ndarray:
    r"""An `(H, W, 3)` uint8 array from a `PIL.Image`, an `(H, W, 3)`/`(H, W, 4)` uint8 array or an image path."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"`image` must be a PIL image, a numpy array or a path, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"`image` must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"`image` must be uint8, got {image.dtype}")
    if min(image.shape[:2]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"`image` must be at least {MIN_IMAGE_SIZE} px on each side, got {image.shape[1]}x{image.shape[0]}"
        )
    return np.ascontiguousarray(image[..., :3])


_SHIFTS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _connected_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of equal non-negative labels: `(component map with -1 for background, count)`."""
    h, w = labels.shape
    fg = labels >= 0
    if not fg.any():
        return np.full((h, w), -1, dtype=np.int64), 0
    big = h * w
    padded = np.pad(labels, 1, constant_values=-1)
    same = [fg & (padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] == labels) for dy, dx in _SHIFTS]
    ids = np.where(fg, np.arange(big, dtype=np.int64).reshape(h, w), big)
    fg_flat = fg.ravel()
    while True:
        p = np.pad(ids, 1, constant_values=big)
        new = ids.copy()
        for (dy, dx), s in zip(_SHIFTS, same):
            np.minimum(new, np.where(s, p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], big), out=new)
        flat = new.ravel()
        flat[fg_flat] = flat[flat[fg_flat]]  # pointer jumping: labels are indices of pixels in the same component
        if np.array_equal(new, ids):
            break
        ids = new
    roots, inverse = np.unique(ids[fg], return_inverse=True)
    comp = np.full(big, -1, dtype=np.int64)
    comp[fg_flat] = inverse
    return comp.reshape(h, w), len(roots)


def _merge_fragments(comp: np.ndarray, count: int, ratio: float = 0.5) -> np.ndarray:
    """Merge every component into its largest touching neighbour while it is smaller than `ratio` times that
    neighbour (smallest first); returns the root of each component."""
    area = np.bincount(comp[comp >= 0], minlength=count).astype(np.int64)
    neighbours = [set() for _ in range(count)]
    for a, b in (
        (comp[:, :-1], comp[:, 1:]),
        (comp[:-1], comp[1:]),
        (comp[:-1, :-1], comp[1:, 1:]),
        (comp[:-1, 1:], comp[1:, :-1]),
    ):
        touch = (a >= 0) & (b >= 0) & (a != b)
        for x, y in set(zip(a[touch].tolist(), b[touch].tolist())):
            neighbours[x].add(y)
            neighbours[y].add(x)
    parent = list(range(count))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    changed = True
    while changed:
        changed = False
        for c in sorted((c for c in range(count) if find(c) == c), key=lambda c: (area[c], c)):
            if find(c) != c:
                continue
            near = {find(n) for n in neighbours[c]} - {c}
            if not near:
                continue
            big = max(near, key=lambda n: (area[n], -n))
            if area[c] < ratio * area[big]:
                parent[c] = big
                area[big] += area[c]
                neighbours[big] |= neighbours[c]
                changed = True
    return np.asarray([find(c) for c in range(count)], dtype=np.int64)


def _shape_features(ys: np.ndarray, xs: np.ndarray, alpha: np.ndarray) -> dict:
    """`fill_ratio`, `top_fraction`, `corner_fill`, `width_trend` and `aspect` of an object (pixel coordinates `ys`,
    `xs`); `alpha` is the coverage estimate on its bounding box grown by one pixel (see `analyse_image`)."""
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = y1 - y0 + 1, x1 - x0 + 1
    # sub-pixel fill ratio: coverage over the product of the coverage-weighted width and height
    soft_w, soft_h = alpha.max(axis=0).sum(), alpha.max(axis=1).sum()
    fill = float(alpha.sum() / max(soft_w * soft_h, 1e-6))
    yn, xn = (ys - y0 + 0.5) / h, (xs - x0 + 0.5) / w
    top = float(np.mean(yn < 0.5))

    def corner_distance(u, v):  # to the nearest corner of the box, in the L1 norm
        return np.minimum(u, 1 - u) + np.minimum(v, 1 - v)

    gy, gx = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    zone = corner_distance(gx[None, :], gy[:, None]) < 0.25
    inside = corner_distance(xn, yn) < 0.25
    corner = float(inside.sum() / zone.sum()) if zone.any() else 0.5
    widths = np.bincount(ys - y0, minlength=h).astype(np.float64)
    rows = np.arange(h, dtype=np.float64)
    spread = widths.std() * rows.std()
    trend = float(((widths - widths.mean()) * (rows - rows.mean())).mean() / spread) if spread > 0 else 0.0
    aspect = w / float(h)
    return {"fill_ratio": fill, "top_fraction": top, "corner_fill": corner, "width_trend": trend, "aspect": aspect}


def classify_shape(
    fill_ratio: float, top_fraction: float, corner_fill: float, width_trend: float = 1.0, aspect: float = 1.0
) -> str:
    r"""The shape of a component from its features (see the module docstring), or `"unknown"`.

    An upright triangle is the only shape with most of its pixels in the bottom half and rows that widen downwards:
    `top_fraction < 0.39`, `width_trend > 0.4` and `0.4 <= fill_ratio < 0.88` is a triangle. Otherwise, with
    `top_fraction` in `[0.39, 0.61]` and `fill_ratio >= 0.62`, `squareness = 0.7 * clip((fill_ratio - pi/4) /
    (1 - pi/4), 0, 1) + 0.3 * corner_fill` tells a square (> 0.35) from a circle. Anything else, or a box with an
    aspect ratio outside `[0.55, 1.8]`, is `"unknown"`.
    """
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return "unknown"
    if top_fraction < 0.39:
        return "triangle" if width_trend > 0.4 and 0.4 <= fill_ratio < 0.88 else "unknown"
    if top_fraction > 0.61 or fill_ratio < 0.62:
        return "unknown"
    squareness = 0.7 * float(np.clip((fill_ratio - np.pi / 4) / (1 - np.pi / 4), 0, 1)) + 0.3 * corner_fill
    return "square" if squareness > 0.35 else "circle"


def analyse_image(
    image: ImageLike,
    min_area: float = 0.01,
    max_area: float = 0.35,
    chroma_threshold: float = 64.0,
    max_hue_distance: float = 40.0,
    denoise: float = 0.8,
) -> list[DetectedObject]:
    r"""Find the coloured objects of an image (see the module docstring for the method).

    Args:
        image (`PIL.Image.Image`, `np.ndarray` or path): RGB image, uint8 `(H, W, 3)` when an array, sides >= 32.
        min_area (`float`, defaults to 0.01): Smallest object, as a fraction of the image's area.
        max_area (`float`, defaults to 0.35): Larger components are reported with the shape `"unknown"` (the largest
            object of the shapes world covers 0.13 of the image; a colour flood is not a shape).
        chroma_threshold (`float`, defaults to 64): Smallest `max - min` channel difference of an object pixel.
        max_hue_distance (`float`, defaults to 40): Largest hue distance (degrees) to a palette colour.
        denoise (`float`, defaults to 0.8): Radius of the Gaussian blur applied first, in pixels of a 64 px image
            (scaled with the analysis size); 0 disables it.

    Returns:
        `list[DetectedObject]`, largest first (ties: top to bottom, left to right).
    """
    rgb = load_rgb(image)
    h, w = rgb.shape[:2]
    if max(h, w) > ANALYSIS_SIZE:
        scale = ANALYSIS_SIZE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))
    elif max(h, w) < MIN_ANALYSIS_SIZE:  # interpolate small images: edges then fall between the original pixels
        factor = -(-MIN_ANALYSIS_SIZE // max(h, w))
        rgb = np.asarray(Image.fromarray(rgb).resize((w * factor, h * factor), Image.BILINEAR))
    h, w = rgb.shape[:2]
    if denoise > 0:
        radius = denoise * max(h, w) / MIN_ANALYSIS_SIZE
        rgb = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))
    hue, chroma = _hue(rgb.astype(np.float32))
    dist = np.abs(hue[..., None] - _PALETTE_HUES)
    dist = np.minimum(dist, 360.0 - dist)
    labels = dist.argmin(axis=-1)
    labels = np.where((chroma >= chroma_threshold) & (dist.min(axis=-1) <= max_hue_distance), labels, -1)
    comp, count = _connected_components(labels)
    if count == 0:
        return []
    roots = _merge_fragments(comp, count)
    merged = np.where(comp >= 0, roots[np.maximum(comp, 0)], -1)
    objects = []
    sizes = np.bincount(merged[merged >= 0], minlength=count)
    for root in np.flatnonzero(sizes >= min_area * h * w):
        own = merged == root
        color_label = int(labels[comp == root][0])
        # the object's edge is where its colour is half as strong as in its core (50% coverage): this trims
        # colour halos (blur, chroma bleeding) whatever the colour's own chroma
        core = float(np.median(chroma[own]))
        refined = own & (chroma >= 0.5 * core)
        ys, xs = np.nonzero(refined if refined.sum() >= min_area * h * w else own)
        purity = float(np.mean(labels[ys, xs] == color_label))
        # coverage estimate around the object: chroma scaled between the background's (16) and the object's core,
        # counting only the object's own pixels and unassigned ones (not those of other objects)
        by0, by1, bx0, bx1 = max(ys.min() - 1, 0), min(ys.max() + 2, h), max(xs.min() - 1, 0), min(xs.max() + 2, w)
        box = chroma[by0:by1, bx0:bx1]
        usable = own[by0:by1, bx0:bx1] | (labels[by0:by1, bx0:bx1] < 0)
        alpha = np.where(usable, np.clip((box - _BACKGROUND_CHROMA) / max(core - _BACKGROUND_CHROMA, 1.0), 0, 1), 0)
        features = _shape_features(ys, xs, alpha)
        shape = classify_shape(**features) if len(ys) <= max_area * h * w else "unknown"
        objects.append(
            DetectedObject(
                shape=shape,
                color=COLORS[color_label],
                centroid=(float((xs.mean() + 0.5) / w), float((ys.mean() + 0.5) / h)),
                area=float(len(ys) / (h * w)),
                bbox=(float(xs.min() / w), float(ys.min() / h), float((xs.max() + 1) / w), float((ys.max() + 1) / h)),
                fill_ratio=features["fill_ratio"],
                top_fraction=features["top_fraction"],
                corner_fill=features["corner_fill"],
                width_trend=features["width_trend"],
                color_purity=purity,
            )
        )
    objects.sort(key=lambda o: (-o.area, o.centroid[1], o.centroid[0]))
    return objects


# ----------------------------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------------------------
_ALT = lambda words: "(" + "|".join(re.escape(w) for w in words) + ")"  # noqa: E731
_SHAPE, _COLOR = _ALT(SHAPES), _ALT(COLORS)
_PLURAL_TO_SHAPE = {p: s for s, p in PLURALS.items()}
_WORD_TO_COUNT = {w: n for n, w in COUNT_WORDS.items()}
_PHRASE_TO_RELATION = {p: r for r, p in RELATION_PHRASES.items()}
_GRAMMAR = [
    ("counting", re.compile(rf"^{_ALT(_WORD_TO_COUNT)} {_ALT(_PLURAL_TO_SHAPE)}$")),
    ("position", re.compile(rf"^an? {_SHAPE} {_ALT(_PHRASE_TO_RELATION)} an? {_SHAPE}$")),
    ("color_attr", re.compile(rf"^an? {_COLOR} {_SHAPE} and an? {_COLOR} {_SHAPE}$")),
    ("two_object", re.compile(rf"^an? {_SHAPE} and an? {_SHAPE}$")),
    ("colors", re.compile(rf"^an? {_COLOR} {_SHAPE}$")),
    ("single_object", re.compile(rf"^an? {_SHAPE}$")),
]


def parse_prompt(prompt: str) -> dict:
    r"""The spec of a caption of the shapes-world grammar (the inverse of
    [`~diffusers_bit.evaluation.shapes_world.spec_to_caption`]). Case, surrounding blanks, repeated spaces, a final
    period and `a`/`an` are not checked.

    Raises:
        `ValueError`: for a prompt outside the grammar (including two objects of the same shape, or the same colour in
        a `color_attr` prompt).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.strip().lower().rstrip(".").split())
    for category, pattern in _GRAMMAR:
        m = pattern.match(text)
        if m is None:
            continue
        g = m.groups()
        try:
            if category == "counting":
                return make_spec(category, [(_PLURAL_TO_SHAPE[g[1]], None, _WORD_TO_COUNT[g[0]])])
            if category == "position":
                return make_spec(category, [(g[0],), (g[2],)], _PHRASE_TO_RELATION[g[1]])
            if category == "color_attr":
                return make_spec(category, [(g[1], g[0]), (g[3], g[2])])
            if category == "two_object":
                return make_spec(category, [(g[0],), (g[1],)])
            if category == "colors":
                return make_spec(category, [(g[1], g[0])])
            return make_spec(category, [(g[0],)])
        except ValueError as err:
            raise ValueError(f"prompt {prompt!r} is outside the shapes-world grammar: {err}") from None
    raise ValueError(
        f"prompt {prompt!r} is outside the shapes-world grammar; examples: 'a circle', 'a circle and a square', "
        "'three triangles', 'a red square', 'a circle to the left of a square', 'a red circle and a blue square'"
    )


def _as_spec(prompt_or_spec: Union[str, Mapping]) -> dict:
    if isinstance(prompt_or_spec, Mapping):
        spec = dict(prompt_or_spec)
        validate_spec(spec)
        return spec
    if isinstance(prompt_or_spec, str) and prompt_or_spec.lstrip().startswith("{"):
        return _as_spec(json.loads(prompt_or_spec))
    return parse_prompt(prompt_or_spec)


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ImageScore:
    r"""The verdict on one image; truthy when `correct`.

    Attributes:
        correct (`bool`): Whether the image satisfies the prompt.
        reason (`str`): Why (what was expected and what was found).
        category (`str`): The prompt's category.
        objects (`list[DetectedObject]`): What [`analyse_image`] found.
    """

    correct: bool
    reason: str
    category: str
    objects: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.correct


def _relation_holds(a: DetectedObject, b: DetectedObject, relation: str, margin: float) -> tuple[bool, str]:
    dx, dy = b.centroid[0] - a.centroid[0], b.centroid[1] - a.centroid[1]  # offset of B from A
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    ok = along > margin and along > abs(across)
    return ok, f"offset along the relation's axis {along:+.3f} (needs > {margin} and > |{across:+.3f}|)"


def score_image(
    image: Union[ImageLike, Sequence[DetectedObject]],
    prompt_or_spec: Union[str, Mapping],
    position_margin: float = 0.05,
    **analyse_kwargs,
) -> ImageScore:
    r"""Score one image against a prompt of the grammar (or its spec) with GenEval's rules (module docstring).

    Args:
        image: An image for [`analyse_image`], or the list of [`DetectedObject`] it returned.
        prompt_or_spec (`str` or `dict`): A caption, a spec dict, or a spec as a JSON string.
        position_margin (`float`, defaults to 0.05): Smallest centroid offset (fraction of the image side) along a
            relation's axis.
        analyse_kwargs: Passed to [`analyse_image`].

    Returns:
        [`ImageScore`] (truthy when correct), with a human-readable `reason`.
    """
    spec = _as_spec(prompt_or_spec)
    if isinstance(image, (list, tuple)) and all(isinstance(o, DetectedObject) for o in image):
        objects = list(image)
    else:
        objects = analyse_image(image, **analyse_kwargs)
    category, wanted = spec["category"], spec["objects"]
    found = ", ".join(str(o) for o in objects) or "nothing"

    def of_shape(shape, color=None):
        return [o for o in objects if o.shape == shape and (color is None or o.color == color)]

    def name(o):
        return f"{o['color']} {o['shape']}" if o["color"] else o["shape"]

    if category == "counting":
        n, shape = wanted[0]["count"], wanted[0]["shape"]
        k = len(of_shape(shape))
        ok, why = k == n, f"{k} {shape}(s), expected exactly {n}"
    elif category == "position":
        missing = [name(o) for o in wanted if not of_shape(o["shape"])]
        if missing:
            ok, why = False, f"missing {', '.join(missing)}"
        else:
            a, b = (max(of_shape(o["shape"]), key=lambda x: x.area) for o in wanted)
            ok, detail = _relation_holds(a, b, spec["relation"], position_margin)
            why = f"{a} {'is' if ok else 'is not'} {spec['relation']} {b}: {detail}"
    else:  # single_object, two_object, colors, color_attr: presence of each (colour, shape)
        missing = [name(o) for o in wanted if not of_shape(o["shape"], o["color"])]
        ok = not missing
        why = f"missing {', '.join(missing)}" if missing else f"found {', '.join(name(o) for o in wanted)}"
    return ImageScore(ok, f"{'correct' if ok else 'wrong'}: {why}; detected: {found}", category, objects)


def _record_image(record: Any):
    if isinstance(record, Mapping):
        return record["image"], record.get("spec") or record.get("text")
    image, prompt = record
    return image, prompt


def evaluate_images(
    records: Iterable, position_margin: float = 0.05, skip_unreadable: bool = False, **analyse_kwargs
) -> dict:
    r"""Score many images and aggregate per category.

    Args:
        records (`Iterable`): Mappings with `image` (PIL image, array or path) and `spec` (dict or JSON string) or
            `text` (a caption); or `(image, prompt_or_spec)` pairs. A mapping's `file_name` is kept in the results.
        position_margin, analyse_kwargs: As in [`score_image`].
        skip_unreadable (`bool`, defaults to `False`): Skip images given as paths that cannot be decoded (missing,
            truncated or not images) and list them under `skipped` instead of raising.

    Returns:
        `dict`: `overall` (mean of the per-category accuracies, as in GenEval), `num_images`, `num_correct`,
        `categories` (`{category: {"accuracy", "correct", "total"}}` in the order of `CATEGORIES`) and `results`
        (per image: `text`, `category`, `correct`, `reason`, `objects`, and `file_name` when given); with
        `skip_unreadable`, `skipped` lists the paths of the images that could not be read.
    """
    results, skipped = [], []
    for record in records:
        image, prompt = _record_image(record)
        if prompt is None:
            raise ValueError("every record needs a `text` or a `spec`")
        spec = _as_spec(prompt)
        if skip_unreadable and isinstance(image, (str, os.PathLike)):
            try:
                image = load_rgb(image)
            except (OSError, ValueError, SyntaxError):  # PIL raises all three for damaged files
                skipped.append(str(image))
                continue
        score = score_image(image, spec, position_margin=position_margin, **analyse_kwargs)
        row = {
            "text": spec_to_caption(spec),
            "category": spec["category"],
            "correct": score.correct,
            "reason": score.reason,
            "objects": [o.to_dict() for o in score.objects],
        }
        if isinstance(record, Mapping) and "file_name" in record:
            row = {"file_name": record["file_name"], **row}
        results.append(row)
    categories = {}
    for category in CATEGORIES:
        rows = [r for r in results if r["category"] == category]
        if rows:
            correct = sum(r["correct"] for r in rows)
            categories[category] = {"accuracy": correct / len(rows), "correct": correct, "total": len(rows)}
    overall = float(np.mean([c["accuracy"] for c in categories.values()])) if categories else float("nan")
    report = {
        "overall": overall,
        "num_images": len(results),
        "num_correct": sum(r["correct"] for r in results),
        "categories": categories,
        "results": results,
    }
    if skip_unreadable:
        report["skipped"] = skipped
    return report


def format_report(report: dict) -> str:
    r"""A Markdown table of a report from [`evaluate_images`]: accuracy per category and overall."""
    lines = ["| category | accuracy | correct / images |", "|---|---:|---:|"]
    for category, c in report["categories"].items():
        lines.append(f"| {category} | {100 * c['accuracy']:.1f}% | {c['correct']} / {c['total']} |")
    lines.append(
        f"| **overall** (mean over categories) | **{100 * report['overall']:.1f}%** | "
        f"{report['num_correct']} / {report['num_images']} |"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------------
def _prompt_entries(prompts) -> list[dict]:
    if isinstance(prompts, (str, os.PathLike)) and Path(prompts).suffix == ".jsonl" and Path(prompts).is_file():
        from .shapes_world import read_prompts

        prompts = read_prompts(prompts)
    elif isinstance(prompts, str):
        prompts = [prompts]
    entries = []
    for p in prompts:
        if isinstance(p, Mapping):
            spec = _as_spec(p.get("spec") or p["text"])
            entries.append({"text": p.get("text") or spec_to_caption(spec), "spec": spec})
        else:
            entries.append({"text": p, "spec": _as_spec(p)})
    if not entries:
        raise ValueError("`prompts` is empty")
    return entries


def evaluate_pipeline(
    pipe,
    prompts: Union[str, os.PathLike, Sequence[Union[str, Mapping]]],
    images_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    height: Optional[int] = None,
    width: Optional[int] = None,
    position_margin: float = 0.05,
    **call_kwargs,
) -> tuple[dict, list]:
    r"""Generate images for shapes-world prompts with a diffusers-bit pipeline and score them.

    Image `k` (in the order prompt 0 x `images_per_prompt`, prompt 1 x ..., ...) is drawn with its own generator
    `torch.Generator().manual_seed(seed + k)`, so the images do not depend on `batch_size`.

    Args:
        pipe: An [`InstellaT2IPipeline`] or [`InstellaARPipeline`] (anything called as
            `pipe(prompt=[...], num_images_per_prompt=1, generator=[...], output_type="pil", **kwargs).images`).
        prompts: Captions, records with `text` and/or `spec` (e.g. from `read_prompts`), or the path of a
            `prompts_*.jsonl` file. Every prompt is parsed before anything is generated.
        images_per_prompt (`int`, defaults to 4): Images per prompt.
        seed (`int`, defaults to 0): Seed of the first image.
        batch_size (`int`, defaults to 16): Images per pipeline call.
        height, width (`int`, *optional*): Decode resolution, passed to the pipeline when given.
        position_margin (`float`, defaults to 0.05): As in [`score_image`].
        call_kwargs: Further pipeline arguments (`num_inference_steps`, `guidance_scale`, `temperature`, ...).

    Returns:
        `(report, images)`: the report of [`evaluate_images`] (plus `images_per_prompt` and `seed`; result `k` has
        `prompt_index` and `seed`) and the list of generated `PIL.Image`s, aligned with `report["results"]`.
    """
    import torch

    checks = (("images_per_prompt", images_per_prompt, 1), ("batch_size", batch_size, 1), ("seed", seed, 0))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    entries = _prompt_entries(prompts)
    jobs = [(i, e) for i, e in enumerate(entries) for _ in range(images_per_prompt)]
    size_kwargs = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    images = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + j) for j in range(len(batch))]
        out = pipe(
            prompt=[e["text"] for _, e in batch],
            num_images_per_prompt=1,
            generator=generators,
            output_type="pil",
            **size_kwargs,
            **call_kwargs,
        )
        images.extend(out.images)
    if len(images) != len(jobs):
        raise RuntimeError(f"the pipeline returned {len(images)} images for {len(jobs)} requests")
    report = evaluate_images(({"image": im, "spec": e["spec"]} for im, (_, e) in zip(images, jobs)), position_margin)
    for k, (row, (i, _)) in enumerate(zip(report["results"], jobs)):
        row.update(prompt_index=i, seed=seed + k)
    report.update(images_per_prompt=images_per_prompt, seed=seed)
    return report, images
