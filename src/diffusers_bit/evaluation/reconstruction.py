# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Reconstruction quality of the binary latent image tokenizer.

[`evaluate_reconstruction`] encodes images once at the tokenizer's encoder input size, decodes the bits at every
supported resolution and compares each decode with the source image resized to that resolution:

- PSNR and SSIM ([`~diffusers_bit.metrics.psnr`], [`~diffusers_bit.metrics.ssim`], shared with training in
  [`diffusers_bit.metrics`]) always; both need nothing but torch and numpy.
- rFID, LPIPS and CLIP image similarity only when local weights are given (no installable wheel ships them). Without
  them the metric is reported as skipped, with the flag to pass, instead of failing.

Offline test images: [`real_photographs`] reads the sample photographs that scikit-image, scikit-learn and
matplotlib ship inside their wheels (whichever are installed; none of them is imported).

Conventions: numpy arrays and PIL images are channel-last, torch tensors channel-first.
"""

import importlib.util
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..metrics import LPIPS, ImageLike, psnr_batch, ssim_batch
from ..utils.checks import read_metadata_rows

logger = logging.getLogger(__name__)

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]

# Sample photographs shipped inside wheels: (name, distribution, top-level package, path inside the package).
OFFLINE_PHOTOGRAPHS = (
    ("astronaut", "scikit-image", "skimage", "data/astronaut.png"),
    ("chelsea", "scikit-image", "skimage", "data/chelsea.png"),
    ("coffee", "scikit-image", "skimage", "data/coffee.png"),
    ("rocket", "scikit-image", "skimage", "data/rocket.jpg"),
    ("motorcycle", "scikit-image", "skimage", "data/motorcycle_left.png"),
    ("china", "scikit-learn", "sklearn", "datasets/images/china.jpg"),
    ("flower", "scikit-learn", "sklearn", "datasets/images/flower.jpg"),
    ("grace_hopper", "matplotlib", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)

SKIP_MESSAGES = {
    "rfid": "skipped: rFID needs Inception weights; pass --inception_weights PATH",
    "lpips": "skipped: LPIPS needs VGG16 + LPIPS weights; pass --lpips_weights PATH",
    "clip_similarity": "skipped: CLIP similarity needs a local CLIP model folder; pass --clip_model PATH",
}
_FLAGS = {"rfid": "--inception_weights", "lpips": "--lpips_weights", "clip_similarity": "--clip_model"}
OPTIONAL_METRICS = ("rfid", "lpips", "clip_similarity")


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------
def center_crop_resize(image: ImageLike, size: int) -> np.ndarray:
    r"""Center-crop an image to a square and resize it to `size x size` with PIL's antialiased Lanczos filter.

    Args:
        image: PIL image, `uint8` numpy array `(H, W)` / `(H, W, C)`, or a path to an image file.

    Returns:
        `uint8` RGB array `(size, size, 3)`.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8, got {image.dtype}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, uint8 numpy array or path, got {type(image).__name__}")
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def _package_dir(package: str) -> Optional[Path]:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def real_photographs(size: Optional[int] = None) -> dict[str, np.ndarray]:
    r"""Photographs available offline inside installed wheels (see `OFFLINE_PHOTOGRAPHS`): scikit-image's
    astronaut, chelsea, coffee, rocket and motorcycle (left stereo view); scikit-learn's china and flower; matplotlib's
    grace_hopper. Packages that are not installed are skipped; the files are read with PIL, the packages are never
    imported.

    Args:
        size (`int`, *optional*): Center-crop to a square and resize to `size x size` (antialiased). By default the
            photographs keep their original size.

    Returns:
        `dict` name -> `uint8` RGB array `(H, W, 3)`, in the order of `OFFLINE_PHOTOGRAPHS`.
    """
    photos = {}
    for name, _, package, relative in OFFLINE_PHOTOGRAPHS:
        root = _package_dir(package)
        path = None if root is None else root / relative
        if path is None or not path.is_file():
            continue
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        photos[name] = center_crop_resize(rgb, size) if size is not None else np.asarray(rgb, dtype=np.uint8).copy()
    return photos


def load_image_folder(folder: Union[str, os.PathLike], limit: Optional[int] = None) -> dict[str, np.ndarray]:
    r"""The PNG / JPEG images of a folder, sorted by file name, as `dict` file stem -> `uint8` RGB array."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = {}
    for path in files[:limit]:
        with Image.open(path) as image:
            images[path.stem] = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return images


def _named_images(images: Union[Mapping[str, ImageLike], Sequence[ImageLike]]) -> tuple[list[str], list]:
    if isinstance(images, Mapping):
        return [str(k) for k in images], list(images.values())
    images = list(images)
    return [f"image_{i}" for i in range(len(images))], images


def _to_model_input(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 `(H, W, 3)` arrays -> float32 `(B, 3, H, W)` in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


# ----------------------------------------------------------------------------------------------------------------------
# Optional metrics (need local weights)
# ----------------------------------------------------------------------------------------------------------------------
def skip_message(metric: str, path: Optional[Union[str, os.PathLike]] = None) -> str:
    """Why `metric` (`"rfid"`, `"lpips"`, `"clip_similarity"`) is skipped, naming the flag that enables it."""
    if path is None:
        return SKIP_MESSAGES[metric]
    return f"{SKIP_MESSAGES[metric]}; {_FLAGS[metric]} {str(path)!r} does not exist"


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    r"""Fréchet distance between the Gaussians `N(mu1, sigma1)` and `N(mu2, sigma2)`:
    `|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))`.

    The trace of the matrix square root is taken from the eigenvalues of the symmetric PSD matrix
    `sigma1^(1/2) sigma2 sigma1^(1/2)` (same spectrum as `sigma1 sigma2`), so it stays real for singular covariances
    (fewer samples than feature dimensions). Computed in float64.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"inconsistent shapes: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")

    def psd_sqrt(matrix):
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root1 = psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def feature_statistics(features: Union[np.ndarray, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(D,)` and covariance `(D, D)` (unbiased, `N - 1`) of features `(N, D)`, float64."""
    features = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else features
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


class TorchScriptInception:
    r"""Inception feature extractor from a TorchScript file, e.g. the `inception-2015-12-05.pt` of the StyleGAN2-ADA
    / StyleGAN3 metrics (the TensorFlow FID Inception graph ported to TorchScript). It is called the way those
    projects call it: `module(images_uint8_nchw, return_features=True)` -> `(B, 2048)` pool features (the module
    resizes to 299 itself); modules without that keyword are called with the images alone.

    Only this calling convention is checked here: the tests exercise [`frechet_distance`] with a random network.
    """

    def __init__(self, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"):
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """`images` float `(B, 3, H, W)` in [0, 1] -> features `(B, D)`."""
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).to(self.device)
        try:
            features = self.module(pixels, return_features=True)
        except (RuntimeError, TypeError):
            features = self.module(pixels)
        return features.float().flatten(1)


def load_inception(
    inception_weights: Optional[Union[str, os.PathLike]], device: Union[str, torch.device] = "cpu"
) -> Optional[TorchScriptInception]:
    r"""The rFID feature extractor from a local TorchScript Inception file (see [`TorchScriptInception`]), or `None`
    (with a logged message) when no path is given or the path does not exist."""
    if inception_weights is None or not Path(inception_weights).exists():
        logger.warning(skip_message("rfid", inception_weights))
        return None
    return TorchScriptInception(inception_weights, device)


def load_lpips(lpips_weights: Optional[Union[str, os.PathLike]], device: Union[str, torch.device] = "cpu"):
    r"""The project's LPIPS-VGG network ([`~diffusers_bit.metrics.LPIPS`]) from local weights (any layout
    `LPIPS.from_pretrained` accepts), or `None` (with a logged message) when no path is given or it does not exist."""
    if lpips_weights is None or not Path(lpips_weights).exists():
        logger.warning(skip_message("lpips", lpips_weights))
        return None
    return LPIPS.from_pretrained(lpips_weights).to(device)


class CLIPImageSimilarity:
    r"""Cosine similarity of CLIP image embeddings of a reconstruction and its source ("CLIP-I"), from a local
    `transformers` CLIP folder (`CLIPModel` weights plus its image processor config)."""

    def __init__(self, model, processor, device: Union[str, torch.device] = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, folder: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"):
        from transformers import CLIPImageProcessor, CLIPModel

        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
        return cls(model, processor, device)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """`images` float `(B, 3, H, W)` in [0, 1] -> unit-norm embeddings `(B, D)`."""
        arrays = list((images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        pixels = self.processor(images=arrays, return_tensors="pt")["pixel_values"].to(self.device)
        features = self.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
        return F.normalize(features.float(), dim=-1)

    def __call__(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Per-image cosine similarity `(B,)` between two batches in [0, 1]."""
        return (self.embed(images) * self.embed(references)).sum(dim=-1).cpu()


def load_clip(
    clip_model: Optional[Union[str, os.PathLike]], device: Union[str, torch.device] = "cpu"
) -> Optional[CLIPImageSimilarity]:
    r"""[`CLIPImageSimilarity`] from a local folder, or `None` (with a logged message) when no folder is given, it
    does not exist or `transformers` cannot load a `CLIPModel` from it."""
    if clip_model is None or not Path(clip_model).exists():
        logger.warning(skip_message("clip_similarity", clip_model))
        return None
    try:
        return CLIPImageSimilarity.from_pretrained(clip_model, device)
    except (OSError, ValueError, KeyError) as error:
        logger.warning(
            "%s; %r does not load as a CLIPModel (%s)", SKIP_MESSAGES["clip_similarity"], str(clip_model), error
        )
        return None


def _resolve(metric: str, value, loader, device) -> tuple[Any, Optional[str]]:
    """`(metric object, None)` from a path or an already-loaded object, or `(None, skip message)`."""
    if value is None:
        return None, skip_message(metric)
    if not isinstance(value, (str, os.PathLike)):
        return value, None
    if not Path(value).exists():
        return None, skip_message(metric, value)
    loaded = loader(value, device)
    if loaded is None:
        return None, f"{SKIP_MESSAGES[metric]}; {str(value)!r} could not be loaded"
    return loaded, None


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@torch.no_grad()
def evaluate_reconstruction(
    tokenizer,
    images: Union[Mapping[str, ImageLike], Sequence[ImageLike]],
    resolutions: Optional[Sequence[int]] = None,
    batch_size: int = 8,
    input_size: Optional[int] = None,
    inception_weights: Optional[Union[str, os.PathLike, FeatureExtractor]] = None,
    lpips_weights: Optional[Union[str, os.PathLike, nn.Module]] = None,
    clip_model: Optional[Union[str, os.PathLike, CLIPImageSimilarity]] = None,
    return_images: bool = False,
) -> dict[str, Any]:
    r"""Reconstruction quality of a [`BinaryLatentTokenizer`] at every resolution it decodes.

    Each image is center-cropped to a square and resized (antialiased) to `input_size`, encoded to bits (thresholded,
    no sampling) and decoded at each resolution `R`; the decode, clamped to [0, 1] and rounded to 8 bits like a saved
    PNG, is compared with the source image center-cropped and resized directly to `R x R`. The tokenizer runs in eval
    mode under `torch.no_grad` on its own device and dtype (its train/eval mode is restored afterwards); metrics are
    computed in float32/float64 on the CPU.

    Args:
        tokenizer ([`BinaryLatentTokenizer`]): The image tokenizer.
        images: `dict` name -> image, or a sequence of images (named `image_0`, ...): `uint8` arrays `(H, W[, C])`,
            PIL images or paths, any size.
        resolutions (`list[int]`, *optional*): Decode resolutions; default: all of `config.sample_sizes` (or
            `[input_size]` for a tokenizer without a size list).
        batch_size (`int`, defaults to 8): Images per encode/decode batch.
        input_size (`int`, *optional*): Encoder input side; default: the smallest of `config.sample_sizes` (or
            `tokenizer.default_size` when the tokenizer has no size list). Must be a size the encoder accepts.
        inception_weights, lpips_weights, clip_model (*optional*): Local weight paths (or already-loaded metric
            objects: a feature extractor `(B, 3, H, W) in [0, 1] -> (B, D)`, an LPIPS module taking [-1, 1] inputs,
            a [`CLIPImageSimilarity`]). Metrics without weights are reported as `None` with a message in
            `report["skipped"]`. rFID needs at least 2 images and is strongly biased for small sets.
        return_images (`bool`, defaults to `False`): Also return the 8-bit reconstructions (`uint8 (R, R, 3)`
            arrays, in the order of the images) as `resolutions[str(R)]["images"]`.

    Returns:
        `dict` with `input_size`, `num_images`, `image_names`, `skipped` (metric -> message) and `resolutions`:
        `{str(R): {"psnr", "ssim", "rfid", "lpips", "clip_similarity", "per_image": {"psnr": [...], "ssim": [...],
        ...}}}` (means over images; optional metrics `None` when skipped).
    """
    names, sources = _named_images(images)
    if not sources:
        raise ValueError("`images` is empty")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    sizes = tokenizer.supported_sizes
    if input_size is None:
        input_size = min(sizes) if sizes else tokenizer.default_size
    resolutions = list(resolutions) if resolutions else (list(sizes) if sizes else [input_size])
    for resolution in resolutions:
        tokenizer._output_size(int(resolution), int(resolution))  # validates every size before any work

    device = tokenizer.device
    inception, skip_fid = _resolve("rfid", inception_weights, load_inception, device)
    lpips, skip_lpips = _resolve("lpips", lpips_weights, load_lpips, device)
    clip, skip_clip = _resolve("clip_similarity", clip_model, load_clip, device)
    skipped = {k: v for k, v in (("rfid", skip_fid), ("lpips", skip_lpips), ("clip_similarity", skip_clip)) if v}
    if inception is not None and len(sources) < 2:
        inception, skipped["rfid"] = None, "skipped: rFID needs at least 2 images"

    per_image = {r: {"psnr": [], "ssim": []} for r in resolutions}
    decoded_images = {r: [] for r in resolutions}
    for r in resolutions:
        if lpips is not None:
            per_image[r]["lpips"] = []
        if clip is not None:
            per_image[r]["clip_similarity"] = []
    features = {r: ([], []) for r in resolutions}

    was_training = tokenizer.training
    tokenizer.eval()
    try:
        for start in range(0, len(sources), batch_size):
            batch = sources[start : start + batch_size]
            inputs = _to_model_input([center_crop_resize(image, input_size) for image in batch])
            bits = tokenizer.encode(inputs.to(device) * 2 - 1, sample=False).bits
            for r in resolutions:
                decoded = tokenizer.decode(bits, r, r).sample.float().cpu()
                recon = ((decoded + 1) / 2).clamp(0, 1).mul(255).round().div(255)
                if return_images:
                    decoded_images[r] += list(recon.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
                target = _to_model_input([center_crop_resize(image, r) for image in batch])
                x, y = recon.double(), target.double()
                per_image[r]["psnr"] += psnr_batch(x, y, 1.0).tolist()
                per_image[r]["ssim"] += ssim_batch(x, y, 1.0).tolist()
                if lpips is not None:
                    values = lpips(recon.to(device) * 2 - 1, target.to(device) * 2 - 1, reduction="none")
                    per_image[r]["lpips"] += values.float().cpu().tolist()
                if clip is not None:
                    per_image[r]["clip_similarity"] += clip(recon, target).float().tolist()
                if inception is not None:
                    features[r][0].append(inception(target.to(device)).float().cpu())
                    features[r][1].append(inception(recon.to(device)).float().cpu())
    finally:
        tokenizer.train(was_training)

    results = {}
    for r in resolutions:
        entry = {metric: _mean(per_image[r][metric]) for metric in ("psnr", "ssim")}
        for metric in ("lpips", "clip_similarity"):
            entry[metric] = _mean(per_image[r][metric]) if metric in per_image[r] else None
        entry["rfid"] = None
        if inception is not None:
            real, fake = (feature_statistics(torch.cat(f)) for f in features[r])
            entry["rfid"] = frechet_distance(*real, *fake)
        entry["per_image"] = per_image[r]
        if return_images:
            entry["images"] = decoded_images[r]
        results[str(r)] = entry
    return {
        "input_size": int(input_size),
        "num_images": len(sources),
        "image_names": names,
        "skipped": skipped,
        "resolutions": results,
    }


def read_shapes_records(folder: Union[str, os.PathLike], limit: Optional[int] = None) -> list[dict]:
    r"""The records of a shapes-world split folder (`metadata.jsonl` with `file_name` and `spec` or `text`), in file
    order, each with the image loaded as a `uint8` array under `image`. Errors name the file and line."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise ValueError(f"{metadata} not found: a shapes-world split folder has a metadata.jsonl")
    records = []
    for row in read_metadata_rows(metadata, need_caption=True):
        if limit is not None and len(records) >= limit:
            break
        with Image.open(folder / row["file_name"]) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
        records.append(
            {"file_name": row["file_name"], "text": row.get("text"), "spec": row.get("spec"), "image": array}
        )
    if not records:
        raise ValueError(f"{metadata} lists no images")
    return records


def evaluate_shapes_reconstruction(
    tokenizer, folder: Union[str, os.PathLike], limit: Optional[int] = None, batch_size: int = 64
) -> dict[str, Any]:
    r"""How much of a shapes-world split survives the tokenizer: PSNR / SSIM of the reconstructions (bits
    thresholded, encoded and decoded at the tokenizer's smallest size, see [`evaluate_reconstruction`]) and ShapesEval
    of the reconstructions beside ShapesEval of the originals (the ceiling a generator on these bits can reach).

    Returns:
        `dict` with `num_images`, `size`, `bits_per_image`, `psnr`, `ssim`, `shapes_eval` and
        `shapes_eval_originals` (reports of [`~diffusers_bit.evaluation.evaluate_images`], without per-image results).
    """
    from .shapes_eval import evaluate_images

    records = read_shapes_records(folder, limit)
    report = evaluate_reconstruction(
        tokenizer, [r["image"] for r in records], batch_size=batch_size, return_images=True
    )
    size = report["input_size"]
    entry = (
        report["resolutions"][str(size)]
        if str(size) in report["resolutions"]
        else next(iter(report["resolutions"].values()))
    )

    def shapes(images):
        result = evaluate_images([{**r, "image": image} for r, image in zip(records, images)])
        return {k: v for k, v in result.items() if k != "results"}

    config = tokenizer.config
    return {
        "num_images": len(records),
        "size": size,
        "bits_per_image": config.num_latent_tokens * config.bits_per_token,
        "psnr": entry["psnr"],
        "ssim": entry["ssim"],
        "shapes_eval": shapes(entry["images"]),
        "shapes_eval_originals": shapes([r["image"] for r in records]),
    }


def _cell(value: Optional[float], digits: int) -> str:
    if value is None:
        return "skipped"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_reconstruction_report(report: Mapping[str, Any]) -> str:
    r"""Markdown table of one [`evaluate_reconstruction`] result, or of `{"datasets": {name: result, ...}}`: one row
    per data set and resolution; columns PSNR (dB), SSIM, rFID, LPIPS and CLIP-I ("skipped" without weights), followed
    by the skip messages."""
    datasets = report["datasets"] if "datasets" in report else {"images": report}
    lines = [
        "| data set | images | input | resolution | PSNR (dB) | SSIM | rFID | LPIPS | CLIP-I |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    messages = {}
    for name, result in datasets.items():
        for resolution, entry in result["resolutions"].items():
            cells = [
                _cell(entry["psnr"], 2),
                _cell(entry["ssim"], 4),
                _cell(entry.get("rfid"), 2),
                _cell(entry.get("lpips"), 4),
                _cell(entry.get("clip_similarity"), 4),
            ]
            lines.append(
                f"| {name} | {result['num_images']} | {result['input_size']} | {resolution} | "
                + " | ".join(cells)
                + " |"
            )
        messages.update(result.get("skipped", {}))
    notes = [f"- {messages[metric]}" for metric in OPTIONAL_METRICS if metric in messages]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# Rate-distortion: the tokenizer as a codec beside JPEG and WebP
# ----------------------------------------------------------------------------------------------------------------------
CODEC_FORMATS = ("JPEG", "WEBP")


def _encode_at_quality(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()


def _nearest_quality(image: Image.Image, fmt: str, target_bytes: int) -> tuple[int, bytes]:
    """The quality (1-100) whose encoding is closest in size to `target_bytes` (sizes grow with quality, nearly
    monotonically: scan all, it is cheap at these sizes)."""
    best = None
    for quality in range(1, 101):
        data = _encode_at_quality(image, fmt, quality)
        gap = abs(len(data) - target_bytes)
        if best is None or gap < best[0]:
            best = (gap, quality, data)
    return best[1], best[2]


def rate_distortion(
    tokenizer, images: Union[Mapping[str, ImageLike], Sequence[ImageLike]], size: Optional[int] = None
) -> dict[str, Any]:
    r"""Bytes per image, PSNR and SSIM of the tokenizer's `.bits` code (header included) beside JPEG and WebP
    (Pillow) at the quality whose file size is nearest to it, on the same images (centre-cropped and resized to the
    tokenizer's encoder size `size`, 8-bit).

    Returns:
        `dict`: `size`, `num_images`, and per codec (`"bits"`, `"JPEG"`, `"WEBP"`) the mean `bytes`, `psnr`,
        `ssim` (and for JPEG/WebP the mean chosen `quality`).
    """
    from ..codec import HEADER_SIZE

    names, sources = _named_images(images)
    if not sources:
        raise ValueError("`images` is empty")
    size = size or (min(tokenizer.supported_sizes) if tokenizer.supported_sizes else tokenizer.default_size)
    report = evaluate_reconstruction(tokenizer, images, resolutions=[size], input_size=size, return_images=True)
    entry = report["resolutions"][str(size)]
    config = tokenizer.config
    code_bytes = HEADER_SIZE + (config.num_latent_tokens * config.bits_per_token + 7) // 8
    results = {"bits": {"bytes": float(code_bytes), "psnr": entry["psnr"], "ssim": entry["ssim"]}}
    originals = [center_crop_resize(image, size) for image in sources]
    for fmt in CODEC_FORMATS:
        sizes, qualities, decoded = [], [], []
        for array in originals:
            quality, data = _nearest_quality(Image.fromarray(array), fmt, code_bytes)
            with Image.open(io.BytesIO(data)) as opened:
                decoded.append(np.asarray(opened.convert("RGB"), dtype=np.uint8).copy())
            sizes.append(len(data))
            qualities.append(quality)
        x, y = _to_model_input(decoded).double(), _to_model_input(originals).double()
        results[fmt] = {
            "bytes": float(np.mean(sizes)),
            "quality": float(np.mean(qualities)),
            "psnr": _mean(psnr_batch(x, y, 1.0).tolist()),
            "ssim": _mean(ssim_batch(x, y, 1.0).tolist()),
        }
    return {"size": int(size), "num_images": len(sources), "codecs": results}


def format_rate_distortion(report: Mapping[str, Any]) -> str:
    """Markdown table of [`rate_distortion`]."""
    lines = [
        f"Rate-distortion at {report['size']} px ({report['num_images']} images):",
        "",
        "| codec | bytes per image | PSNR (dB) | SSIM |",
        "|---|---:|---:|---:|",
    ]
    for name, entry in report["codecs"].items():
        label = "diffusers-bit .bits" if name == "bits" else f"{name} (quality {entry['quality']:.0f})"
        lines.append(f"| {label} | {entry['bytes']:.0f} | {entry['psnr']:.2f} | {entry['ssim']:.3f} |")
    return "\n".join(lines) + "\n"
