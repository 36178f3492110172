"""PSNR, SSIM and LPIPS live in one package (`diffusers_bit.metrics`) that training and evaluation both import;
no other module defines its own copy. (The metrics' values are tested in test_reconstruction_eval.py and
test_tokenizer_losses.py.)"""

import ast
from pathlib import Path

import torch

import diffusers_bit
from diffusers_bit import metrics, training
from diffusers_bit.evaluation import reconstruction

PACKAGE = Path(diffusers_bit.__file__).resolve().parent
METRIC_NAMES = {"psnr", "ssim", "psnr_batch", "ssim_batch", "psnr_signed", "LPIPS", "LPIPSConfig"}


def test_metrics_are_defined_once():
    places = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in METRIC_NAMES:
                places.setdefault(node.name, set()).add(path.relative_to(PACKAGE).parts[0])
    assert places and all(folders == {"metrics"} for folders in places.values()), places


def test_training_and_evaluation_use_the_shared_metrics(tmp_path):
    assert reconstruction.psnr_batch is metrics.psnr_batch and reconstruction.ssim_batch is metrics.ssim_batch
    assert reconstruction.LPIPS is metrics.LPIPS and training.LPIPS is metrics.LPIPS
    assert training.load_perceptual_model is metrics.load_perceptual_model
    metrics.LPIPS.from_config({"channels": [4, 4, 4, 4, 4]}).save_pretrained(tmp_path / "lpips")
    assert isinstance(reconstruction.load_lpips(tmp_path / "lpips"), metrics.LPIPS)


def test_training_psnr_of_signed_images():
    """The tokenizer training's validation PSNR: images in [-1, 1], float32, clamped, MSE floored at 1e-10."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    recon = (target + 0.1 * torch.randn(3, 3, 16, 16, generator=g)).to(torch.bfloat16)
    rec, ref = (recon.float().clamp(-1, 1) + 1) / 2, (target.clamp(-1, 1) + 1) / 2
    expected = 10 * torch.log10(1.0 / (rec - ref).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10))
    values = metrics.psnr_signed(recon, target)
    assert values.dtype == torch.float32 and torch.equal(values, expected)
    assert torch.equal(metrics.psnr_signed(target, target), torch.full((3,), 100.0))
    # on [0, 1] images without clamping or ties it agrees with the evaluation PSNR
    batch = metrics.psnr(((recon.float().clamp(-1, 1) + 1) / 2).double(), ((target + 1) / 2).double())
    torch.testing.assert_close(torch.from_numpy(batch).float(), values, rtol=1e-5, atol=1e-4)
