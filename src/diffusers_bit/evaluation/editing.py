# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Image-to-image on the shapes world, scored with ShapesEval.

Two edits of a shapes-world image with [`InstellaT2IImg2ImgPipeline`]:

- **keep**: the image's own caption at a low strength (re-noise a little, denoise towards the same caption). The
  edited images are scored on the source caption beside the source images themselves; `retention` is the ratio.
- **recolour**: a caption that changes the colour of one object ([`recolor_spec`]) at a high strength. The edited
  images are scored on the new caption beside text-to-image with the same pipeline, caption and seeds, and beside the
  source images (which should fail the new caption).
"""

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from PIL import Image

from .shapes_eval import evaluate_images
from .shapes_world import COLORS, is_held_out, spec_to_caption, validate_spec

EDITS = ("keep", "recolour")


def recolor_spec(spec: Union[dict, str], index: int = 0) -> Optional[dict]:
    r"""The spec with the colour of its first coloured object changed, or `None` when no object has a colour.

    The new colour is the `index`-th (cyclically) of the palette colours that no object of the spec already has and
    that does not make a composition held out of training ([`is_held_out`]), so the edit asks for something the
    model has seen. `index` lets a caller spread the new colours over a data set deterministically.
    """
    spec = json.loads(spec) if isinstance(spec, str) else spec
    validate_spec(spec)
    objects = [dict(o) for o in spec["objects"]]
    target = next((i for i, o in enumerate(objects) if o.get("color")), None)
    if target is None:
        return None
    used = {o["color"] for o in objects if o.get("color")}
    candidates = []
    for color in COLORS:
        if color in used:
            continue
        trial = {**spec, "objects": [dict(o, color=color) if i == target else o for i, o in enumerate(objects)]}
        if not is_held_out(trial):
            candidates.append(trial)
    return candidates[index % len(candidates)] if candidates else None


def _source_records(data_dir: Union[str, os.PathLike], limit: Optional[int]) -> list[dict]:
    folder = Path(data_dir)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise FileNotFoundError(f"{folder} has no metadata.jsonl (a shapes-world split folder, e.g. data/validation)")
    rows = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit is not None else rows


def _run(pipe, prompts: Sequence[str], images, seed: int, batch_size: int, **call_kwargs) -> list:
    import torch

    outputs = []
    for start in range(0, len(prompts), batch_size):
        stop = min(start + batch_size, len(prompts))
        generators = [torch.Generator().manual_seed(seed + k) for k in range(start, stop)]
        kwargs = {} if images is None else {"image": list(images[start:stop])}
        out = pipe(prompt=list(prompts[start:stop]), generator=generators, output_type="pil", **kwargs, **call_kwargs)
        outputs.extend(out.images)
    return outputs


def _summary(report: dict) -> dict:
    return {
        "overall": report["overall"],
        "num_images": report["num_images"],
        "categories": {c: v["accuracy"] for c, v in report["categories"].items()},
    }


def evaluate_img2img(
    pipe,
    data_dir: Union[str, os.PathLike],
    edit: str = "keep",
    strength: float = 0.3,
    num_images: Optional[int] = 100,
    seed: int = 0,
    batch_size: int = 16,
    return_images: bool = False,
    **call_kwargs,
):
    r"""Edit the images of a shapes-world split folder and score the edits with ShapesEval.

    Image `k` is edited with `torch.Generator().manual_seed(seed + k)`; text-to-image for the recolour baseline uses
    the same generators.

    Args:
        pipe: An [`InstellaT2IImg2ImgPipeline`] (an [`InstellaT2IPipeline`] is converted with `from_pipe`).
        data_dir: A split folder written by `write_shapes_dataset` (PNG files and `metadata.jsonl` with `spec`).
        edit (`str`): `"keep"` (own caption) or `"recolour"` (one object's colour changed; images without a
            coloured object are skipped).
        strength (`float`): The img2img strength.
        num_images (`int`, *optional*, defaults to 100): Source images read (the first ones of the split).
        seed, batch_size: As in [`evaluate_pipeline`].
        return_images (`bool`): Also return `(sources, edited, prompts)` for pictures.
        call_kwargs: Further pipeline arguments (`num_inference_steps`, `guidance_scale`, ...).

    Returns:
        `dict`: `edit`, `strength`, `num_images`, `edited` (ShapesEval summary on the target captions), `source`
        (the source images on the same captions), and `retention` (`edited / source`, keep) or `text_to_image` (the
        text-to-image summary on the new captions, recolour). With `return_images`, `(report, pictures)`.
    """
    from ..pipelines.pipeline_instella_img2img import InstellaT2IImg2ImgPipeline

    if edit not in EDITS:
        raise ValueError(f"`edit` must be one of {list(EDITS)}, got {edit!r}")
    if not isinstance(pipe, InstellaT2IImg2ImgPipeline):
        pipe = InstellaT2IImg2ImgPipeline.from_pipe(pipe)
    rows = _source_records(data_dir, num_images)
    specs = []
    for k, row in enumerate(rows):
        spec = json.loads(row["spec"])
        specs.append(spec if edit == "keep" else recolor_spec(spec, index=k))
    pairs = [(row, spec) for row, spec in zip(rows, specs) if spec is not None]
    if not pairs:
        raise ValueError(f"no image in {data_dir} can take the {edit!r} edit")
    sources = [Image.open(Path(data_dir) / row["file_name"]).convert("RGB") for row, _ in pairs]
    prompts = [spec_to_caption(spec) for _, spec in pairs]
    edited = _run(pipe, prompts, sources, seed, batch_size, strength=strength, **call_kwargs)
    scored = {
        "edited": evaluate_images({"image": im, "spec": spec} for im, (_, spec) in zip(edited, pairs)),
        "source": evaluate_images({"image": im, "spec": spec} for im, (_, spec) in zip(sources, pairs)),
    }
    report = {
        "edit": edit,
        "strength": strength,
        "num_images": len(pairs),
        "seed": seed,
        **{name: _summary(r) for name, r in scored.items()},
    }
    if edit == "keep":
        source = scored["source"]["overall"]
        report["retention"] = scored["edited"]["overall"] / source if source > 0 else float("nan")
    else:
        from ..pipelines.pipeline_instella_t2i import InstellaT2IPipeline

        t2i = InstellaT2IPipeline.from_pipe(pipe)
        generated = _run(t2i, prompts, None, seed, batch_size, **call_kwargs)
        baseline = evaluate_images({"image": im, "spec": spec} for im, (_, spec) in zip(generated, pairs))
        report["text_to_image"] = _summary(baseline)
    if return_images:
        return report, (sources, edited, prompts)
    return report
