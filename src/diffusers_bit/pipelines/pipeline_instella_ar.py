# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""InstellaARPipeline: text-to-image by autoregressive prediction of 1D binary latent tokens, with a KV cache."""

from typing import Callable, Optional, Union

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# imported eagerly: diffusers resolves saved components through sys.modules
from ..models.binary_latent_tokenizer import BinaryLatentTokenizer
from ..models.lora import lora_scale_of
from ..models.transformer_bit_ar import BinaryARTransformer
from ..utils.checks import check_bits
from ..utils.torch_utils import sample_bits
from .pipeline_instella_common import InstellaPipelineBase

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_bit import InstellaARPipeline

        >>> pipe = InstellaARPipeline.from_pretrained("path/or/repo-id", torch_dtype=torch.bfloat16).to("cuda")
        >>> image = pipe("a watercolor painting of a lighthouse at dawn", generator=torch.manual_seed(0)).images[0]
        ```
"""


class InstellaARPipeline(InstellaPipelineBase):
    r"""Text-to-image generation with Instella-T2I's autoregressive model.

    [`BinaryARTransformer`] predicts the 128 latent tokens one at a time (64 independent bits each), conditioned on
    the frozen LLM's per-layer features; classifier-free guidance runs the conditional and unconditional rows in one
    forward per token. A KV cache makes each token cost one token's forward pass; `use_kv_cache=False` recomputes the
    whole prefix every token, as the authors' script does, and gives the same bits.

    Args:
        tokenizer, text_encoder, image_tokenizer: As in [`InstellaT2IPipeline`].
        transformer ([`BinaryARTransformer`]): The autoregressive model.
    """

    _pipeline_kind = "InstellaARPipeline"
    _sampling_parameters = ("guidance_scale", "temperature", "use_kv_cache")

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: PreTrainedModel,
        image_tokenizer: BinaryLatentTokenizer,
        transformer: BinaryARTransformer,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, image_tokenizer=image_tokenizer, transformer=transformer
        )
        self._post_init()

    def check_inputs(
        self,
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
        use_kv_cache,
        prefix_latents=None,
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
        if not isinstance(use_kv_cache, bool):
            raise TypeError(f"`use_kv_cache` must be a bool, got {type(use_kv_cache).__name__}")
        if prefix_latents is not None:
            config = self.transformer.config
            if not isinstance(prefix_latents, torch.Tensor):
                raise TypeError(f"`prefix_latents` must be a torch.Tensor of bits, got {type(prefix_latents).__name__}")
            rows = (1, batch, batch * num_images_per_prompt)
            if (
                prefix_latents.ndim != 3
                or prefix_latents.shape[0] not in rows
                or prefix_latents.shape[-1] != config.in_channels
                or not 1 <= prefix_latents.shape[1] <= config.num_tokens
            ):
                raise ValueError(
                    f"`prefix_latents` must have shape (B, k, {config.in_channels}) with B in {sorted(set(rows))} "
                    f"and 1 <= k <= {config.num_tokens}, got {tuple(prefix_latents.shape)}"
                )
            check_bits("prefix_latents", prefix_latents)
        return batch

    def _next_logits(self, tokens, new_tokens, text_kv, cache, rebuild_cache: bool):
        """Logits `(rows, K)` for the next token; `tokens` / `new_tokens` are the conditional rows only."""
        duplicate = lambda x: torch.cat([x, x]) if self.do_classifier_free_guidance else x  # noqa: E731
        kwargs = {"text_kv": text_kv, "attention_kwargs": self.attention_kwargs}
        if cache is None:
            return self.transformer(duplicate(tokens), **kwargs).sample[:, -1].float()
        if rebuild_cache:
            cache = self.transformer.allocate_kv_cache(text_kv.batch_size)
            self._cache = cache
            return self.transformer(duplicate(tokens), kv_cache=cache, **kwargs).sample[:, -1].float()
        return self.transformer(duplicate(new_tokens), kv_cache=cache, **kwargs).sample[:, -1].float()

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: Optional[Union[str, list[str]]] = None,
        negative_prompt: Optional[Union[str, list[str]]] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        guidance_scale: float = 8.5,
        temperature: float = 0.6,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        prompt_embeds: Optional[Union[torch.Tensor, list]] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[Union[torch.Tensor, list]] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 128,
        use_kv_cache: bool = True,
        prefix_latents: Optional[torch.Tensor] = None,
        attention_kwargs: Optional[dict] = None,
    ) -> Union[ImagePipelineOutput, tuple]:
        r"""Generate images token by token.

        Args:
            prompt, negative_prompt, height, width, num_images_per_prompt, generator, prompt_embeds,
            prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask, output_type, return_dict,
            max_sequence_length: As in [`InstellaT2IPipeline.__call__`].
            guidance_scale (`float`, defaults to 8.5): `f_u + guidance_scale * (f_c - f_u)` on the bit logits, i.e.
                `1 + alpha` (the paper's AR samples used alpha = 7.5). `<= 1` runs no unconditional branch.
            temperature (`float`, defaults to 0.6): Divides the guided logits (the paper's AR tau); 0 = greedy bits.
            callback_on_step_end (`Callable`, *optional*): Called after every token as `callback(pipe, i, i,
                callback_kwargs)`; `callback_kwargs["latents"]` holds the `(B, i + 1, 64)` bits so far and may be
                replaced (the KV cache is then rebuilt).
            use_kv_cache (`bool`, defaults to `True`): Reuse keys/values of earlier tokens.
            prefix_latents (`torch.Tensor` of shape `(B, k, bits_per_token)`, *optional*): Keep these first `k`
                tokens (bits of an existing latent, e.g. `image_tokenizer.encode(image).bits[:, :k]`) and generate
                only the rest: the AR model continues any prefix. `B` is 1, the prompt batch or the number of images.
                What the prefix fixes depends on what the tokenizer put into its first tokens; in a 1D tokenizer
                these are not an image region, so the kept part shows up as global traits (layout, colours) rather
                than a fixed crop, and more tokens keep more of the image.
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
            use_kv_cache,
            prefix_latents,
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
        config = self.transformer.config
        self._cache = self.transformer.allocate_kv_cache(text_kv.batch_size) if use_kv_cache else None

        start = 0
        if prefix_latents is None:
            latents = torch.zeros(num_images, 0, config.in_channels, device=device)
            logits = (
                self.transformer(
                    None,
                    text_kv=text_kv,
                    kv_cache=self._cache,
                    batch_size=text_kv.batch_size,
                    attention_kwargs=self.attention_kwargs,
                )
                .sample[:, -1]
                .float()
            )
        else:
            latents = prefix_latents.to(device=device, dtype=torch.float32)
            if latents.shape[0] == 1:
                latents = latents.expand(num_images, -1, -1)
            elif latents.shape[0] == batch and num_images_per_prompt > 1:
                latents = latents.repeat_interleave(num_images_per_prompt, dim=0)
            latents, start = latents.contiguous(), latents.shape[1]
            if start < config.num_tokens:
                logits = self._next_logits(latents, None, text_kv, self._cache, rebuild_cache=True)
        with self.progress_bar(total=config.num_tokens - start) as progress_bar:
            for i in range(start, config.num_tokens):
                if self.interrupt:
                    break
                new_tokens = sample_bits(self.guide(logits)[:, None], temperature, generator)
                latents = torch.cat([latents, new_tokens], dim=1)
                outputs = self._run_callback(callback_on_step_end, i, i, callback_on_step_end_tensor_inputs, locals())
                replaced = "latents" in outputs and outputs["latents"] is not latents
                if replaced:
                    latents = outputs.pop("latents").to(device=device, dtype=torch.float32)
                if i + 1 < config.num_tokens:
                    logits = self._next_logits(latents, new_tokens, text_kv, self._cache, replaced)
                progress_bar.update()
        self._cache = None

        if latents.shape[1] < config.num_tokens:  # interrupted: no complete latent to decode
            output_type = "latent"
        images = self._finish(latents, height, width, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
