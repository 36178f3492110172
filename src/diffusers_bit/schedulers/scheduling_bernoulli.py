# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Continuous-time Bernoulli diffusion over binary latents (Instella-T2I, after Binary Latent Diffusion)."""

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..utils.checks import StrictConfigMixin, check_bits, check_number
from ..utils.remote_code import SCHEDULER_ENTRY, RemoteCodeMixin
from ..utils.torch_utils import GeneratorType, bernoulli, tempered_sigmoid, uniform_bits

ALGORITHMS = ("simplified", "posterior")
POSTERIOR_KEEP_RATES = ("official", "exact")
TIMESTEP_DISTRIBUTIONS = ("logit_normal", "uniform")


@dataclass
class BernoulliSchedulerOutput(BaseOutput):
    r"""
    Args:
        prev_sample (`torch.Tensor` of shape `(B, N, K)`): Bits `z_{t'}` at the next (smaller) time, in {0, 1}.
        pred_original_sample (`torch.Tensor` of shape `(B, N, K)`): The model's estimate `p(z_0 = 1)`.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class BernoulliScheduler(RemoteCodeMixin, StrictConfigMixin, SchedulerMixin, ConfigMixin):
    r"""Bernoulli diffusion in continuous time `t` in [0, 1] (1 = pure noise).

    Forward process: `z_t ~ Bernoulli((1 - t) * z_0 + t / 2)`, so `z_1` is uniform noise and `z_0` the data.
    The model predicts a **flip logit** `f` per bit: `p = sigmoid(f)` is the probability that `z_t` differs from `z_0`,
    hence `p(z_0 = 1) = z_t * (1 - p) + (1 - z_t) * p`.

    Sampling runs `N` model evaluations at `t_i = (1 - i / N) ** rho`, `i = 0 .. N - 1`; step `i` moves to
    `t' = t_{i+1}` (0 after the last step) with one of two algorithms:

    - `"simplified"` (paper Alg. 2, the authors' default): `z_{t'} ~ Bernoulli((1 - t') * x_0 + t' / 2)` with
      `x_0 = p(z_0 = 1)`, i.e. re-noise the prediction to the next time.
    - `"posterior"` (paper Alg. 1, Binary Latent Diffusion Eq. 8): combine that prior with the likelihood of the
      current bits, `A_1 = [(1 - t') x_0 + t'/2] [k z + (1 - k)/2]`, `A_0 = [(1 - t')(1 - x_0) + t'/2]
      [k (1 - z) + (1 - k)/2]`, `z_{t'} ~ Bernoulli(A_1 / (A_0 + A_1))`, where `k` is the one-step keep rate.
      `posterior_keep_rate="official"` uses `k = 1 - (t - t')` like the authors' code; `"exact"` uses
      `k = (1 - t) / (1 - t')`, the rate under which `Bernoulli((1 - t) z_0 + t/2)` is exactly the composition of the
      two marginals for this linear schedule. They agree to first order in the step size.

    The last step is deterministic for both: `z_0 = (x_0 > 0.5)`.

    Where guidance and temperature enter: the pipeline combines the conditional and unconditional flip logits with
    classifier-free guidance on the **logits**, `f = f_u + guidance_scale * (f_c - f_u)` (= `(1 + alpha) f_c - alpha
    f_u` with the paper's `alpha = guidance_scale - 1`), then [`step`] divides `f` by `temperature` before the
    sigmoid. Because both are linear in the logits this equals the paper's Eq. 6, `sigmoid(((1 + alpha) f_c -
    alpha f_u) / tau)`. Temperature 0 makes `p` a hard 0/1 (1/2 on exact ties).

    Parameters:
        algorithm (`str`, defaults to `"simplified"`): `"simplified"` or `"posterior"`.
        rho (`float`, defaults to 1.0): Timestep spacing exponent, `t_i = (1 - i/N) ** rho`; > 1 spends more steps
            near t = 0.
        posterior_keep_rate (`str`, defaults to `"official"`): `"official"` or `"exact"`, see above.
        timestep_distribution (`str`, defaults to `"logit_normal"`): Training-time distribution of `t`:
            `"logit_normal"` (`sigmoid(N(logit_mean, logit_std))`, the paper) or `"uniform"`.
        logit_mean (`float`, defaults to 0.0), logit_std (`float`, defaults to 1.0): Logit-normal parameters.
    """

    order = 1
    _compatibles = []
    _remote_code_entry = SCHEDULER_ENTRY
    _optional_config_keys = (
        "algorithm",
        "rho",
        "posterior_keep_rate",
        "timestep_distribution",
        "logit_mean",
        "logit_std",
    )  # every sampling setting has a safe default

    @register_to_config
    def __init__(
        self,
        algorithm: str = "simplified",
        rho: float = 1.0,
        posterior_keep_rate: str = "official",
        timestep_distribution: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ):
        _check_choice("algorithm", algorithm, ALGORITHMS)
        _check_choice("posterior_keep_rate", posterior_keep_rate, POSTERIOR_KEEP_RATES)
        _check_choice("timestep_distribution", timestep_distribution, TIMESTEP_DISTRIBUTIONS)
        _check_rho(rho)
        self.timesteps: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self.init_noise_sigma = 1.0
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None

    # ------------------------------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------------------------------
    @property
    def step_index(self) -> Optional[int]:
        """Index of the current step in `timesteps`; `None` before the first [`step`]."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling from `timesteps[begin_index]` (e.g. to refine given bits from an intermediate time)."""
        self._begin_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: Optional[Union[str, torch.device]] = None,
        rho: Optional[float] = None,
    ) -> None:
        r"""Set `timesteps = [(1 - i / N) ** rho for i in range(N)]` (float32), starting at t = 1.

        Args:
            num_inference_steps (`int`): `N >= 1` model evaluations.
            rho (`float`, *optional*): Overrides `config.rho` for this schedule.
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}")
        rho = self.config.rho if rho is None else rho
        _check_rho(rho)
        steps = [(1.0 - i / num_inference_steps) ** rho for i in range(num_inference_steps)]
        self.timesteps = torch.tensor(steps, dtype=torch.float32, device=device)
        self.num_inference_steps = num_inference_steps
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[Union[float, torch.Tensor]] = None):
        """Identity (bits go to the model as they are); present for API compatibility."""
        return sample

    def initial_sample(
        self, shape: tuple, generator: GeneratorType = None, device=None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Pure noise `z_1 ~ Bernoulli(1/2)` of `shape` `(B, N, K)`."""
        return uniform_bits(shape, generator=generator, device=device, dtype=dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator: GeneratorType = None,
        temperature: float = 1.0,
        algorithm: Optional[str] = None,
        return_dict: bool = True,
    ) -> Union[BernoulliSchedulerOutput, tuple]:
        r"""Move the bits from `t = timestep` to the next time of the schedule.

        Args:
            model_output (`torch.Tensor` of shape `(B, N, K)`): Flip logits (after classifier-free guidance).
            timestep (`float` or scalar tensor): The current time, an entry of `timesteps`.
            sample (`torch.Tensor` of shape `(B, N, K)`): Current bits `z_t`.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): One RNG, or one per batch row.
            temperature (`float`, defaults to 1.0): Divides the logits; 0 = hard probabilities.
            algorithm (`str`, *optional*): Overrides `config.algorithm` for this step.

        Returns:
            [`BernoulliSchedulerOutput`] `(prev_sample, pred_original_sample)`, or that tuple. `prev_sample` has the
            dtype of `sample`; the arithmetic runs in float32.
        """
        if self.timesteps is None:
            raise ValueError("call `set_timesteps` before `step`")
        check_number("temperature", temperature, low=0, hint=" (0 = hard probabilities)")
        algorithm = self.config.algorithm if algorithm is None else algorithm
        _check_choice("algorithm", algorithm, ALGORITHMS)
        if self._step_index is None:
            self._init_step_index(timestep)
        index = self._step_index
        if index >= len(self.timesteps):
            raise ValueError(
                f"the schedule of {len(self.timesteps)} steps is exhausted; call `set_timesteps` to sample again"
            )
        t = float(self.timesteps[index])
        t_next = float(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else 0.0

        z = sample.float()
        x0 = self.predict_original(model_output, z, temperature)
        if index + 1 == len(self.timesteps):
            prev = (x0 > 0.5).float()
        else:
            prior_one = (1.0 - t_next) * x0 + t_next / 2
            if algorithm == "simplified":
                probs = prior_one
            else:
                keep = 1.0 - (t - t_next) if self.config.posterior_keep_rate == "official" else (1 - t) / (1 - t_next)
                prior_zero = (1.0 - t_next) * (1.0 - x0) + t_next / 2
                a1 = prior_one * (keep * z + (1 - keep) / 2)
                a0 = prior_zero * (keep * (1 - z) + (1 - keep) / 2)
                probs = a1 / (a0 + a1)
            prev = bernoulli(probs, generator)
        self._step_index += 1
        prev = prev.to(sample.dtype)
        return BernoulliSchedulerOutput(prev, x0) if return_dict else (prev, x0)

    @staticmethod
    def predict_original(model_output: torch.Tensor, sample: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        r"""`p(z_0 = 1) = z (1 - p) + (1 - z) p` with the flip probability `p = sigmoid(model_output / temperature)`
        (float32) of [`~utils.torch_utils.tempered_sigmoid`]: at temperature 0, `p` is 1 for a positive logit, 0 for
        a negative one and 1/2 for a zero logit."""
        flip = tempered_sigmoid(model_output, temperature)
        z = sample.float()
        return z * (1 - flip) + (1 - z) * flip

    def _init_step_index(self, timestep: Union[float, torch.Tensor]) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        value = float(timestep)
        distances = (self.timesteps.cpu() - value).abs()
        index = int(distances.argmin())
        if float(distances[index]) > 1e-6:
            raise ValueError(f"`timestep`={value} is not in the schedule {self.timesteps.tolist()}")
        self._step_index = index

    # ------------------------------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------------------------------
    def add_noise(
        self,
        original_samples: torch.Tensor,
        timesteps: Union[float, torch.Tensor],
        generator: GeneratorType = None,
    ) -> torch.Tensor:
        r"""Draw `z_t ~ Bernoulli((1 - t) * z_0 + t / 2)`.

        Args:
            original_samples (`torch.Tensor` of shape `(B, N, K)`): Clean bits `z_0`.
            timesteps (`float` or `torch.Tensor` of shape `(B,)`): `t` per row, in [0, 1].
        """
        if not isinstance(original_samples, torch.Tensor):
            raise TypeError(f"`original_samples` must be a torch.Tensor of bits, got {type(original_samples).__name__}")
        check_bits("original_samples", original_samples)
        t = torch.as_tensor(timesteps, device=original_samples.device, dtype=torch.float32)
        if not bool(((t >= 0) & (t <= 1)).all()):  # NaN fails both comparisons
            raise ValueError(f"`timesteps` must lie in [0, 1] (1 = pure noise), got {t.flatten()[:8].tolist()}")
        if t.numel() not in (1, original_samples.shape[0]):
            raise ValueError(
                f"`timesteps` must be a scalar or have one entry per row ({original_samples.shape[0]}), got {t.numel()}"
            )
        t = t.reshape(-1, *([1] * (original_samples.ndim - 1)))
        probs = (1.0 - t) * original_samples.float() + t / 2
        return bernoulli(probs, generator).to(original_samples.dtype)

    def sample_timesteps(
        self,
        batch_size: int,
        generator: Optional[torch.Generator] = None,
        device=None,
        distribution: Optional[str] = None,
    ) -> torch.Tensor:
        r"""Training times `(batch_size,)` in (0, 1): `sigmoid(N(logit_mean, logit_std))` or `U(0, 1)`."""
        check_number("batch_size", batch_size, low=1, integer=True)
        distribution = self.config.timestep_distribution if distribution is None else distribution
        _check_choice("distribution", distribution, TIMESTEP_DISTRIBUTIONS)
        gen_device = generator.device if generator is not None else device
        if distribution == "uniform":
            t = torch.rand(batch_size, generator=generator, device=gen_device)
        else:
            normal = torch.randn(batch_size, generator=generator, device=gen_device)
            t = torch.sigmoid(normal * self.config.logit_std + self.config.logit_mean)
        return t.to(device) if device is not None else t

    @staticmethod
    def original_logits(model_output: torch.Tensor, noisy_samples: torch.Tensor) -> torch.Tensor:
        r"""Logit of `p(z_0 = 1)` from the flip logit `f`: `f` where `z_t = 0`, `-f` where `z_t = 1`."""
        return model_output * (1 - 2 * noisy_samples.to(model_output.dtype))

    def loss(
        self,
        model_output: torch.Tensor,
        noisy_samples: torch.Tensor,
        original_samples: torch.Tensor,
        reduction: str = "mean",
    ) -> torch.Tensor:
        r"""Training loss: binary cross-entropy between `p(z_0 = 1)` (from the flip logits) and `z_0`, computed
        stably on logits. Same value as the authors' `BCEWithLogits(z_t * (-f) + (1 - z_t) * f, z_0)`."""
        logits = self.original_logits(model_output.float(), noisy_samples)
        return F.binary_cross_entropy_with_logits(logits, original_samples.float(), reduction=reduction)

    def __len__(self) -> int:
        return self.num_inference_steps or 0


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def _check_rho(rho) -> None:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0 or math.isinf(rho):
        raise ValueError(f"`rho` must be a finite number > 0, got {rho!r}")
