# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""InstellaT2IPipeline: text-to-image with Bernoulli diffusion in a 1D binary latent space."""

from typing import Callable, Optional, Union

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# imported eagerly: diffusers resolves saved components through sys.modules
from ..models.binary_latent_tokenizer import BinaryLatentTokenizer
from ..models.lora import lora_scale_of
from ..models.transformer_bit_dit import BinaryDiT
from ..schedulers.scheduling_bernoulli import ALGORITHMS, BernoulliScheduler, _check_rho
from .pipeline_instella_common import InstellaPipelineBase

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_bit import InstellaT2IPipeline

        >>> pipe = InstellaT2IPipeline.from_pretrained("path/or/repo-id", torch_dtype=torch.bfloat16).to("cuda")
        >>> image = pipe("a watercolor painting of a lighthouse at dawn", generator=torch.manual_seed(0)).images[0]
        >>> # the paper's Table-1 setting: posterior sampling, alpha = 7.5, tau = 0.75, 100 steps
        >>> image = pipe("...", algorithm="posterior", guidance_scale=8.5, temperature=0.75, num_inference_steps=100)
        ```
"""


class InstellaT2IPipeline(InstellaPipelineBase):
    r"""Text-to-image generation with Instella-T2I's binary diffusion model.

    The prompt is encoded by a frozen LLM (every layer's hidden states); [`BinaryDiT`] predicts flip logits for 128 x
    64 bits from pure Bernoulli(1/2) noise over `num_inference_steps` steps of [`BernoulliScheduler`]; the
    [`BinaryLatentTokenizer`] decodes the bits at the requested resolution.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): Text tokenizer of `text_encoder`.
        text_encoder ([`~transformers.PreTrainedModel`]): Frozen text model returning hidden states (AMD-OLMo-1B for
            the released weights).
        image_tokenizer ([`BinaryLatentTokenizer`]): Bits <-> images.
        transformer ([`BinaryDiT`]): The diffusion model.
        scheduler ([`BernoulliScheduler`]): The sampler.
    """

    _callback_tensor_inputs = ["latents", "pred_original_sample"]
    _pipeline_kind = "InstellaT2IPipeline"
    _sampling_parameters = ("num_inference_steps", "guidance_scale", "temperature", "algorithm")

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: PreTrainedModel,
        image_tokenizer: BinaryLatentTokenizer,
        transformer: BinaryDiT,
        scheduler: BernoulliScheduler,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            image_tokenizer=image_tokenizer,
            transformer=transformer,
            scheduler=scheduler,
        )
        self._post_init()

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        height,
        width,
        num_inference_steps,
        guidance_scale,
        temperature,
        algorithm,
        rho,
        num_images_per_prompt,
        generator,
        latents,
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        output_type,
        callback_on_step_end_tensor_inputs,
        max_sequence_length,
    ) -> int:
        """Validate every argument (before any model runs); return the prompt batch size."""
        batch = self._check_common_inputs(
            prompt,
            negative_prompt,
            height,
            width,
            guidance_scale,
            temperature,
            num_images_per_prompt,
            generator,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            output_type,
            callback_on_step_end_tensor_inputs,
            max_sequence_length,
        )
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}")
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise ValueError(f"`algorithm` must be one of {list(ALGORITHMS)}, got {algorithm!r}")
        if rho is not None:
            _check_rho(rho)
        if latents is not None:
            self._check_latents_tensor(latents, batch * num_images_per_prompt)
        return batch

    def _denoise(
        self, latents, timesteps, text_kv, generator, temperature, algorithm, callback_on_step_end, callback_inputs
    ) -> torch.Tensor:
        r"""Run the sampler over `timesteps` (all of the scheduler's, or the tail of them for image-to-image) from
        the bits `latents` `(B, num_tokens, in_channels)`; returns the final bits."""
        self._num_timesteps = len(timesteps)
        pred_original_sample = None
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                model_input = torch.cat([latents, latents]) if self.do_classifier_free_guidance else latents
                output = self.transformer(
                    model_input, t.expand(len(model_input)), text_kv=text_kv, attention_kwargs=self.attention_kwargs
                )
                logits = self.guide(output.sample)
                step = self.scheduler.step(
                    logits, t, latents, generator=generator, temperature=temperature, algorithm=algorithm
                )
                latents, pred_original_sample = step.prev_sample, step.pred_original_sample
                outputs = self._run_callback(callback_on_step_end, i, t, callback_inputs, locals())
                latents = outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: Optional[Union[str, list[str]]] = None,
        negative_prompt: Optional[Union[str, list[str]]] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        temperature: float = 0.6,
        algorithm: Optional[str] = None,
        rho: Optional[float] = None,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[Union[torch.Tensor, list]] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[Union[torch.Tensor, list]] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 128,
        attention_kwargs: Optional[dict] = None,
    ) -> Union[ImagePipelineOutput, tuple]:
        r"""Generate images.

        Args:
            prompt (`str` or `list[str]`): What to draw. Or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*): The unconditional prompt of classifier-free guidance
                (default `""`, as the model was trained with prompts dropped to `""`).
            height, width (`int`, *optional*): Decode resolution; any the image tokenizer supports (512, 768 or 1024
                for the released model), default its largest. The sampled bits do not depend on it.
            num_inference_steps (`int`, defaults to 20): Model evaluations.
            guidance_scale (`float`, defaults to 5.0): Classifier-free guidance in the diffusers convention,
                `f_u + guidance_scale * (f_c - f_u)`, i.e. `guidance_scale = 1 + alpha` with the paper's `alpha`
                (5.0 = the paper's speed setting alpha = 4; its Table 1 used alpha = 7.5, i.e. 8.5). `<= 1` runs no
                unconditional branch.
            temperature (`float`, defaults to 0.6): Divides the guided logits (the paper's tau; 0.6 in its speed
                setting). 0 makes every step deterministic.
            algorithm (`str`, *optional*): `"simplified"` (paper Alg. 2, default) or `"posterior"` (Alg. 1); defaults
                to the scheduler config.
            rho (`float`, *optional*): Timestep spacing `t_i = (1 - i/N) ** rho`; defaults to the scheduler config.
            num_images_per_prompt (`int`, defaults to 1): Images per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): One RNG, or one per image (then
                image `k` depends only on `generator[k]`).
            latents (`torch.Tensor` of shape `(B * num_images_per_prompt, 128, 64)`, *optional*): Initial bits
                `z_1` instead of random ones.
            prompt_embeds (`torch.Tensor` `(L, B, T, C)` or list of `L` tensors `(B, T, C)`, *optional*): Precomputed
                per-layer text features (skips the text encoder), with `prompt_attention_mask` `(B, T)`.
            negative_prompt_embeds, negative_prompt_attention_mask (*optional*): Same for the unconditional branch.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` (images in [0, 1]) or `"latent"` (the
                bits, `(B, 128, 64)` float in {0, 1}).
            return_dict (`bool`, defaults to `True`): Return an [`~pipelines.ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): `callback(pipe, step, timestep, callback_kwargs)` after
                every step; may return `{"latents": ...}` to replace the bits.
            callback_on_step_end_tensor_inputs (`list[str]`): Tensors passed in `callback_kwargs`: `"latents"` (the
                bits after the step), `"pred_original_sample"` (the guided estimate of `p(z_0 = 1)`).
            max_sequence_length (`int`, defaults to 128): Prompt truncation length in tokens.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` multiplies the output of the loaded LoRA adapters by
                `s` (diffusers' convention; 0 gives the base model, 1 is the default). See `load_lora_weights`.

        Examples:
        """
        callback_on_step_end_tensor_inputs = self._callback_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        lora_scale_of(attention_kwargs)  # checked before any model runs
        batch = self.check_inputs(
            prompt,
            negative_prompt,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            temperature,
            algorithm,
            rho,
            num_images_per_prompt,
            generator,
            latents,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            output_type,
            callback_on_step_end_tensor_inputs,
            max_sequence_length,
        )
        text_kv = self._begin_call(
            prompt,
            negative_prompt,
            guidance_scale,
            num_images_per_prompt,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            max_sequence_length,
            attention_kwargs,
        )
        device, num_images = self._execution_device, batch * num_images_per_prompt

        self.scheduler.set_timesteps(num_inference_steps, device=device, rho=rho)
        config = self.transformer.config
        if latents is None:
            latents = self.scheduler.initial_sample(
                (num_images, config.num_tokens, config.in_channels), generator=generator, device=device
            )
        else:
            latents = latents.to(device=device, dtype=torch.float32)
        latents = self._denoise(
            latents,
            self.scheduler.timesteps,
            text_kv,
            generator,
            temperature,
            algorithm,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        images = self._finish(latents, height, width, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
