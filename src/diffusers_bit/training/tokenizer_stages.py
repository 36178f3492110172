# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The three training stages of the binary latent tokenizer (Instella-T2I §2.1 "Multi-stage training", §4, App. B).
`training_scripts/train_tokenizer.py` builds them from the data of [`~diffusers_bit.training.tokenizer_data`] and the
objective of [`~diffusers_bit.training.tokenizer_objectives`].

| stage | encoder input | decoder output | temperature | trains | losses |
| --- | --- | --- | --- | --- | --- |
| 1 | `--resolution` (512) | the same size | 0.5 | everything | smooth L1 + LPIPS + code loss |
| 2 | `--resolution` (512) | one of `sample_sizes` (512/768/1024) per step | 0.1 | everything | smooth L1 + LPIPS + code loss |
| 3 | `--resolution` (512) | one of `sample_sizes` per step | 0.1 | quantizer + decoder + pixel head (encoder frozen) | + adversarial (DINO discriminator, hinge, adaptive weight) |

Random draws are pure functions of `(seed, epoch, batch index)` (decode size: no process index, so every process
decodes at the same size and none waits for another) and of `(seed, process, epoch, batch index)` (quantizer noise,
perceptual crops), which is what makes a resumed run identical to an uninterrupted one.
"""

from dataclasses import dataclass

# stream ids of `derive_seed(seed, ..., stream)`: one independent random stream per kind of draw
QUANTIZER_STREAM, CROP_STREAM, DECODE_SIZE_STREAM = 11, 12, 13


@dataclass(frozen=True)
class StagePreset:
    r"""Defaults of one tokenizer training stage.

    Attributes:
        temperature (`float`): Bernoulli temperature of the quantizer in training (paper: 0.5 then 0.1).
        multi_resolution (`bool`): Decode at the tokenizer's `sample_sizes` (one drawn per step) instead of the
            encoder resolution.
        train_encoder (`bool`): Whether the encoder trains (stage 3 freezes it).
        adversarial (`bool`): Whether the discriminator and the adversarial loss are used.
    """

    stage: int
    temperature: float
    multi_resolution: bool
    train_encoder: bool
    adversarial: bool
    summary: str


STAGES = {
    1: StagePreset(
        1,
        0.5,
        False,
        True,
        False,
        "all parameters, smooth L1 + LPIPS + code loss at the encoder resolution, quantizer temperature 0.5",
    ),
    2: StagePreset(
        2,
        0.1,
        True,
        True,
        False,
        "all parameters, smooth L1 + LPIPS + code loss, decoding at several resolutions, temperature 0.1",
    ),
    3: StagePreset(
        3,
        0.1,
        True,
        False,
        True,
        "encoder frozen; quantizer, decoder and pixel head trained with smooth L1 + LPIPS + code loss + an "
        "adversarial loss against a frozen-DINO discriminator with adaptive weighting",
    ),
}
