"""Helpers shared by the tests: analytic images, tiny component builders."""

from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "official_parity"


def analytic_images(batch: int, size: int) -> torch.Tensor:
    """Deterministic smooth images in [-1, 1], `(batch, 3, size, size)`, computed in float64 (the parity fixtures were
    made from exactly these)."""
    y = torch.linspace(-1, 1, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(y, y, indexing="ij")
    imgs = []
    for b in range(batch):
        chans = [
            torch.sin((3 + b + c) * xx + (2 - c) * (1 + b) * yy) * torch.cos((1 + c) * 4 * xx * yy) for c in range(3)
        ]
        imgs.append(torch.stack(chans))
    return torch.stack(imgs).float()
