"""Reconstruction evaluation of the image tokenizer: PSNR/SSIM (SSIM cross-checked against scikit-image), offline
photographs, `evaluate_reconstruction` on a tiny random tokenizer, optional metrics (rFID/LPIPS/CLIP-I) and their
skip messages, the Fréchet distance in closed form, and the `eval-reconstruction` command."""

import importlib.util
import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from training_helpers import one_thread  # noqa: F401 (an autouse fixture)

from diffusers_bit import BinaryLatentTokenizer
from diffusers_bit.cli import main
from diffusers_bit.evaluation.reconstruction import (
    SKIP_MESSAGES,
    CLIPImageSimilarity,
    center_crop_resize,
    evaluate_reconstruction,
    feature_statistics,
    format_reconstruction_report,
    frechet_distance,
    load_clip,
    load_inception,
    load_lpips,
    real_photographs,
)
from diffusers_bit.metrics import LPIPS, load_perceptual_model, psnr, ssim
from diffusers_bit.presets import load_preset_config

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None


def tiny_tokenizer(seed: int = 0) -> BinaryLatentTokenizer:
    torch.manual_seed(seed)
    return BinaryLatentTokenizer.from_config(load_preset_config("tiny", "image_tokenizer")).eval()


def structured_image(index: int, size=(90, 70)) -> np.ndarray:
    """Asymmetric picture (gradient, disc, off-centre bar): a transposed, flipped or shifted copy differs a lot."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = (np.concatenate([x + 0 * y, y + 0 * x, 0.5 * (x * y) ** 0.5], axis=-1) * 200).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    draw.ellipse((w // 4, h // 5, w // 4 + h // 2, h // 5 + h // 2), fill=(255, 40 * index % 256, 30))
    draw.rectangle((w // 2, h // 8, w // 2 + 6, h - h // 3), fill=(0, 0, 90))
    return np.asarray(image).copy()


# ----------------------------------------------------------------------------------------------------------------------
# PSNR / SSIM
# ----------------------------------------------------------------------------------------------------------------------
def test_psnr_known_values_identical_images_and_layouts():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))  # MSE = 100
    assert psnr(np.full((8, 8), 0.5), np.full((8, 8), 0.6)) == pytest.approx(20.0)  # MSE = 0.01, range 1
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    b = a.copy()
    b[0, 0, 0] = 255  # one pixel off by 155: MSE = 155**2 / 768
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 * 768 / 155**2))
    assert psnr(a, b, data_range=1.0) == pytest.approx(10 * math.log10(768 / 155**2))
    # channel-first torch tensors, batches and PIL images agree with the numpy values
    ta, tb = torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1)
    assert psnr(ta, tb) == pytest.approx(psnr(a, b))
    assert psnr(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(psnr(a, b))
    batch = psnr(torch.stack([ta, ta]), torch.stack([tb, ta]))
    assert isinstance(batch, np.ndarray) and batch[0] == pytest.approx(psnr(a, b)) and batch[1] == math.inf
    with pytest.raises(ValueError, match="uint8"):
        psnr(a, a / 255.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:8])


@pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image not installed")
def test_ssim_matches_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    structured = structured_image(1)
    blurred = np.asarray(Image.fromarray(structured).resize((45, 35)).resize((90, 70)))
    for a, b in (
        (noisy, np.clip(noisy.astype(int) + rng.integers(-40, 40, noisy.shape), 0, 255).astype(np.uint8)),
        (structured, blurred),
        (structured[..., 0], blurred[..., 0]),
    ):
        expected = structural_similarity(
            a,
            b,
            data_range=255,
            channel_axis=-1 if a.ndim == 3 else None,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ssim(a, b) == pytest.approx(expected, abs=1e-10)
        assert ssim(a / 255.0, b / 255.0) == pytest.approx(expected, abs=1e-10)
        assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    assert 0 < ssim(structured, blurred) < 1
    with pytest.raises(ValueError, match="11x11"):
        ssim(noisy[:10, :10], noisy[:10, :10])


def test_center_crop_resize_keeps_the_centre():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 30:70] = 255  # the central 40x40 square is white, the sides black
    out = center_crop_resize(image, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8 and out.min() == 255
    assert center_crop_resize(Image.fromarray(image).convert("L"), 8).shape == (8, 8, 3)


@pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image not installed")
def test_real_photographs_are_rgb_uint8():
    photos = real_photographs()
    assert {"astronaut", "chelsea", "coffee", "rocket", "motorcycle"} <= set(photos)
    assert photos["astronaut"].shape == (512, 512, 3) and photos["coffee"].shape == (400, 600, 3)
    if importlib.util.find_spec("sklearn") is not None:
        assert photos["china"].shape == (427, 640, 3) and photos["flower"].shape == (427, 640, 3)
    for photo in photos.values():
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[-1] == 3 and photo.std() > 10
    for photo in real_photographs(size=48).values():
        assert photo.shape == (48, 48, 3) and photo.dtype == np.uint8


# ----------------------------------------------------------------------------------------------------------------------
# evaluate_reconstruction
# ----------------------------------------------------------------------------------------------------------------------
def test_evaluate_reconstruction_tiny_tokenizer_every_resolution():
    tokenizer = tiny_tokenizer().train()
    images = {f"img{i}": structured_image(i) for i in range(3)}
    report = evaluate_reconstruction(tokenizer, images, batch_size=2)
    assert tokenizer.training  # mode restored
    assert report["input_size"] == 64 and report["num_images"] == 3 and report["image_names"] == list(images)
    assert list(report["resolutions"]) == ["64", "96", "128"]
    for entry in report["resolutions"].values():
        assert math.isfinite(entry["psnr"]) and -1 <= entry["ssim"] <= 1
        assert len(entry["per_image"]["psnr"]) == len(entry["per_image"]["ssim"]) == 3
        assert entry["psnr"] == pytest.approx(np.mean(entry["per_image"]["psnr"]))
        assert entry["rfid"] is None and entry["lpips"] is None and entry["clip_similarity"] is None
    again = evaluate_reconstruction(tokenizer, list(images.values()), resolutions=[96], batch_size=3)
    assert again["image_names"] == ["image_0", "image_1", "image_2"]
    assert again["resolutions"]["96"]["per_image"] == report["resolutions"]["96"]["per_image"]  # deterministic

    # the 96 entry is exactly: encode the 64x64 crop, decode at 96, compare with the source resized to 96
    source = images["img1"]
    with torch.no_grad():
        x = torch.from_numpy(center_crop_resize(source, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1
        decoded = tokenizer.eval().decode(tokenizer.encode(x).bits, 96, 96).sample[0]
    recon = ((decoded + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    target = center_crop_resize(source, 96)
    assert report["resolutions"]["96"]["per_image"]["psnr"][1] == pytest.approx(psnr(recon, target), abs=1e-6)
    assert report["resolutions"]["96"]["per_image"]["ssim"][1] == pytest.approx(ssim(recon, target), abs=1e-6)

    # any dtype: a bfloat16 tokenizer gives finite float metrics
    low = evaluate_reconstruction(tiny_tokenizer().to(torch.bfloat16), images, resolutions=[64, 128])
    assert all(math.isfinite(e["psnr"]) and math.isfinite(e["ssim"]) for e in low["resolutions"].values())
    with pytest.raises(ValueError, match="not supported"):
        evaluate_reconstruction(tokenizer, images, resolutions=[80])


def test_reconstruction_is_compared_at_the_decode_resolution(monkeypatch):
    """A tokenizer whose 'bits' are the encoder input and whose decoder upsamples them: a good reconstruction at every
    resolution, so the PSNR is high only if each decode is compared with the source at that same resolution and
    with the same crop and orientation."""
    tokenizer = tiny_tokenizer()
    calls = []

    def encode(images, sample=None, **kwargs):
        calls.append(("encode", tuple(images.shape[-2:]), sample))
        return SimpleNamespace(bits=images)

    def decode(bits, height, width):
        calls.append(("decode", height, width))
        return SimpleNamespace(sample=F.interpolate(bits, (height, width), mode="bicubic", antialias=True))

    monkeypatch.setattr(tokenizer, "encode", encode)
    monkeypatch.setattr(tokenizer, "decode", decode)
    images = [structured_image(i, size=(320, 160)) for i in range(2)]
    report = evaluate_reconstruction(tokenizer, images, resolutions=[64, 128], input_size=96)
    assert calls == [("encode", (96, 96), False), ("decode", 64, 64), ("decode", 128, 128)]
    for entry in report["resolutions"].values():
        assert entry["psnr"] > 27 and entry["ssim"] > 0.9
    # the same decodes compared with a transposed or an uncropped-squashed source score far lower
    recon = (
        F.interpolate(
            torch.from_numpy(center_crop_resize(images[0], 96)).permute(2, 0, 1)[None].float(),
            (128, 128),
            mode="bicubic",
            antialias=True,
        )[0]
        .clamp(0, 255)
        .round()
    )
    right = center_crop_resize(images[0], 128)
    squashed = np.asarray(Image.fromarray(images[0]).resize((128, 128), Image.Resampling.LANCZOS))
    recon = recon.permute(1, 2, 0).numpy().astype(np.uint8)
    assert psnr(recon, right) == pytest.approx(report["resolutions"]["128"]["per_image"]["psnr"][0], abs=0.05)
    assert psnr(recon, right.transpose(1, 0, 2)) < 20 and psnr(recon, squashed) < 20


# ----------------------------------------------------------------------------------------------------------------------
# Optional metrics
# ----------------------------------------------------------------------------------------------------------------------
def test_optional_metrics_are_skipped_with_a_message(tmp_path, caplog):
    report = evaluate_reconstruction(
        tiny_tokenizer(), [structured_image(0)], resolutions=[64], lpips_weights=tmp_path / "missing"
    )
    assert report["skipped"]["rfid"] == "skipped: rFID needs Inception weights; pass --inception_weights PATH"
    assert report["skipped"]["clip_similarity"] == SKIP_MESSAGES["clip_similarity"]
    assert "--lpips_weights" in report["skipped"]["lpips"] and "does not exist" in report["skipped"]["lpips"]
    table = format_reconstruction_report(report)
    assert "| images | 1 | 64 | 64 |" in table and table.count("skipped") >= 3 and "pass --inception_weights" in table
    with caplog.at_level(logging.WARNING):
        assert load_inception(None) is None and load_lpips(tmp_path / "nope") is None and load_clip(None) is None
    assert "--inception_weights" in caplog.text and "--lpips_weights" in caplog.text and "--clip_model" in caplog.text
    (tmp_path / "not_clip").mkdir()
    assert load_clip(tmp_path / "not_clip") is None


class _Features(nn.Module):
    """A random stand-in for Inception: conv -> ReLU -> global average pool, scriptable with `return_features`."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return F.relu(self.conv(images.float() / 255)).mean(dim=(2, 3))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_rfid_and_lpips_with_local_weights(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(_Features()).save(str(tmp_path / "inception.pt"))
    load_perceptual_model("tiny").save_pretrained(tmp_path / "lpips")
    images = [structured_image(i) for i in range(4)]
    weights = dict(inception_weights=tmp_path / "inception.pt", lpips_weights=tmp_path / "lpips")
    report = evaluate_reconstruction(tiny_tokenizer(), images, resolutions=[64, 96], batch_size=3, **weights)
    assert set(report["skipped"]) == {"clip_similarity"}
    for entry in report["resolutions"].values():
        assert entry["rfid"] >= 0 and math.isfinite(entry["rfid"]) and entry["lpips"] > 0
        assert len(entry["per_image"]["lpips"]) == 4
    # loaded objects are accepted too; a perfect "reconstruction" has rFID 0 and LPIPS 0
    extractor = load_inception(tmp_path / "inception.pt")
    lpips = LPIPS.from_pretrained(tmp_path / "lpips")
    x = torch.rand(3, 3, 32, 32)
    stats = feature_statistics(extractor(x))
    assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-9)
    assert float(lpips(x * 2 - 1, x * 2 - 1)) == 0.0
    one = evaluate_reconstruction(tiny_tokenizer(), images[:1], resolutions=[64], inception_weights=extractor)
    assert one["resolutions"]["64"]["rfid"] is None and "at least 2 images" in one["skipped"]["rfid"]


def test_clip_similarity_from_a_local_folder(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    clip = load_clip(tmp_path / "clip")
    assert isinstance(clip, CLIPImageSimilarity)
    x = torch.rand(2, 3, 40, 40)
    assert clip(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    report = evaluate_reconstruction(
        tiny_tokenizer(), [structured_image(0)], resolutions=[64], clip_model=tmp_path / "clip"
    )
    assert -1 <= report["resolutions"]["64"]["clip_similarity"] <= 1 and "clip_similarity" not in report["skipped"]


def test_frechet_distance_closed_forms():
    # 1D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # diagonal (commuting) covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2, including a singular one
    a, b = np.array([1.0, 4.0, 0.0]), np.array([9.0, 1.0, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # rotating both Gaussians leaves the distance unchanged
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected)
    # general full covariances: sigma2 = c^2 sigma1 gives tr(sigma1) (1 - c)^2
    m = np.random.default_rng(1).normal(size=(5, 5))
    sigma = m @ m.T
    assert frechet_distance(np.zeros(5), sigma, np.zeros(5), 4 * sigma) == pytest.approx(np.trace(sigma))
    # statistics of samples drawn from known Gaussians approach the closed form
    rng = np.random.default_rng(2)
    s1, s2 = feature_statistics(rng.normal(0, 1, (20000, 2))), feature_statistics(rng.normal(1, 2, (20000, 2)))
    assert frechet_distance(*s1, *s2) == pytest.approx(2 * 1 + 2 * 1, rel=0.05)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def test_eval_reconstruction_cli(tmp_path, capsys):
    tiny_tokenizer().save_pretrained(tmp_path / "pipe" / "image_tokenizer")
    split = tmp_path / "shapes" / "test"
    split.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(structured_image(i, size=(64, 64))).save(split / f"{i:05d}.png")
    output = tmp_path / "report.json"
    args = [
        "eval-reconstruction",
        "--image_tokenizer",
        str(tmp_path / "pipe"),
        "--shapes_dir",
        str(tmp_path / "shapes"),
        "--resolutions",
        "64",
        "128",
        "--num_images",
        "2",
        "--output",
        str(output),
    ]
    main(args)
    printed = capsys.readouterr().out
    assert "| shapes | 2 | 64 | 128 |" in printed and "pass --inception_weights PATH" in printed
    report = json.loads(output.read_text())
    shapes = report["datasets"]["shapes"]
    assert list(shapes["resolutions"]) == ["64", "128"] and shapes["image_names"] == ["00000", "00001"]
    with pytest.raises(SystemExit, match="already exists"):
        main(args)
    # a tokenizer folder directly, the flat image folder, and the offline photographs
    more = [
        "eval-reconstruction",
        "--image_tokenizer",
        str(tmp_path / "pipe" / "image_tokenizer"),
        "--shapes_dir",
        str(split),
        "--resolutions",
        "96",
        "--num_images",
        "1",
    ]
    main(more + (["--photos"] if HAS_SKIMAGE else []))
    printed = capsys.readouterr().out
    assert "| shapes | 1 | 64 | 96 |" in printed
    assert ("| photos | 1 | 64 | 96 |" in printed) == HAS_SKIMAGE
    with pytest.raises(SystemExit, match="--photos"):
        main(["eval-reconstruction", "--image_tokenizer", str(tmp_path / "pipe")])
    with pytest.raises(SystemExit, match="image_tokenizer"):
        main(["eval-reconstruction", "--image_tokenizer", str(tmp_path / "shapes"), "--photos"])
