# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""InstellaT2IImg2ImgPipeline: edit an image (or refine bits) by partially re-noising its binary latent."""

from typing import Callable, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring

from ..models.lora import lora_scale_of
from ..utils.checks import check_finite, check_number
from .pipeline_instella_t2i import InstellaT2IPipeline

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import PIL.Image
        >>> import torch
        >>> from diffusers_bit import InstellaT2IImg2ImgPipeline

        >>> pipe = InstellaT2IImg2ImgPipeline.from_pretrained("pipelines/shapes-64-diffusion")
        >>> # or, sharing the weights of a loaded text-to-image pipeline:
        >>> # pipe = InstellaT2IImg2ImgPipeline.from_pipe(t2i_pipe)
        >>> init_image = PIL.Image.open("red_circle.png")
        >>> edited = pipe("a blue circle", image=init_image, strength=0.7, generator=torch.manual_seed(0)).images[0]
        >>> # variations: the image's own caption (or "") at a low strength
        >>> variation = pipe("a red circle", image=init_image, strength=0.3, generator=torch.manual_seed(1)).images[0]
        ```
"""

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, list]


class InstellaT2IImg2ImgPipeline(InstellaT2IPipeline):
    r"""Image-to-image with Instella-T2I's binary diffusion model: the image is encoded to bits, noised with the
    scheduler's forward process `z_t ~ Bernoulli((1 - t) z_0 + t / 2)` to `t = strength`, and denoised over the rest
    of the schedule with the prompt. `strength=1` is text-to-image (the same bits for the same generator);
    `strength=0` returns the image's own reconstruction. Same components (and folders) as
    [`InstellaT2IPipeline`]; `InstellaT2IImg2ImgPipeline.from_pipe(t2i_pipe)` shares the loaded modules.
    """

    def prepare_image_bits(self, image: ImageInput) -> torch.Tensor:
        r"""The bits `z_0` `(B, num_tokens, bits_per_token)` of `image`.

        `image` is one or a list of `PIL.Image`s, a numpy array (`(H, W, 3)` / `(B, H, W, 3)`, uint8 or float in
        [0, 1]), a tensor (`(3, H, W)` / `(B, 3, H, W)` in [0, 1], diffusers' convention), or bits
        `(B, num_tokens, bits_per_token)` (a generated latent to refine without decoding). Images are resized
        (shorter edge) and centre-cropped to the tokenizer's encoder size, as in training, then encoded with
        thresholded bits.
        """
        tok = self.image_tokenizer
        layout = (tok.config.num_latent_tokens, tok.config.bits_per_token)
        if isinstance(image, torch.Tensor) and image.ndim == 3 and tuple(image.shape[1:]) == layout:
            tok.check_bits(image, "image")
            return image.to(self._execution_device, torch.float32)
        pixels = self._image_tensor(image)
        with torch.no_grad():
            bits = tok.encode(pixels.to(tok.device, tok.dtype), sample=False).bits
        return bits.to(self._execution_device, torch.float32)

    def _image_tensor(self, image: ImageInput) -> torch.Tensor:
        """`image` -> `(B, 3, S, S)` float32 in [-1, 1] at the encoder size `S` (errors name `image`)."""
        from ..training.data import resize_and_center_crop

        tok = self.image_tokenizer
        size = min(tok.supported_sizes) if tok.supported_sizes else tok.default_size
        items = image if isinstance(image, list) else [image]
        if not items:
            raise ValueError("`image` is an empty list")
        if len(items) == 1 and isinstance(items[0], (np.ndarray, torch.Tensor)) and items[0].ndim == 4:
            items = list(items[0])
        pils = []
        for item in items:
            if isinstance(item, PIL.Image.Image):
                pils.append(item.convert("RGB"))
                continue
            if isinstance(item, torch.Tensor):
                if item.ndim != 3 or item.shape[0] not in (1, 3):
                    raise ValueError(
                        f"`image` tensors must be (3, H, W) or (B, 3, H, W) in [0, 1], got "
                        f"{tuple(item.shape)}; latents must be (B, {tok.config.num_latent_tokens}, "
                        f"{tok.config.bits_per_token}) bits"
                    )
                item = item.detach().float().cpu().permute(1, 2, 0).numpy()
            if not isinstance(item, np.ndarray):
                raise TypeError(f"`image` must be PIL images, numpy arrays or tensors, got {type(item).__name__}")
            if item.ndim != 3 or item.shape[-1] not in (1, 3, 4):
                raise ValueError(f"`image` arrays must be (H, W, 3) or (B, H, W, 3), got {item.shape}")
            if item.dtype != np.uint8:
                item = item.astype(np.float64)
                if not np.isfinite(item).all() or item.min() < 0 or item.max() > 1:
                    raise ValueError(
                        "`image` float arrays/tensors must be finite and in [0, 1] (diffusers' convention; "
                        "uint8 arrays are taken as 0-255)"
                    )
                item = (item * 255).round().astype(np.uint8)
            item = np.repeat(item, 3, axis=-1) if item.shape[-1] == 1 else item[..., :3]
            pils.append(PIL.Image.fromarray(item))
        if min(min(p.size) for p in pils) < 2:
            raise ValueError("`image` is too small to resize to the tokenizer's input")
        arrays = [np.asarray(resize_and_center_crop(p, size), dtype=np.uint8) for p in pils]
        tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        check_finite("image", tensor)
        return tensor

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: Optional[Union[str, list[str]]] = None,
        image: ImageInput = None,
        strength: float = 0.6,
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
        r"""Edit `image` towards `prompt`.

        Args:
            prompt: What the result should show (the image's own caption or `""` gives variations).
            image: The image(s) to start from, or their bits; see [`prepare_image_bits`]. One image for all prompts,
                or one per prompt.
            strength (`float` in [0, 1], defaults to 0.6): How far the bits are re-noised: `t = strength`. 0 keeps
                the image (its reconstruction), 1 ignores it (text-to-image). Of `num_inference_steps`, the last
                `round(strength * num_inference_steps)` run.
            Every other argument: as in [`InstellaT2IPipeline.__call__`].

        Examples:
        """
        if image is None:
            raise ValueError("`image` is required (PIL image(s), a numpy array, a tensor, or bits)")
        check_number("strength", strength, low=0, high=1, hint=" (0 keeps the image, 1 ignores it)")
        lora_scale_of(attention_kwargs)  # checked before any model runs
        callback_on_step_end_tensor_inputs = self._callback_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
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
            None,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            output_type,
            callback_on_step_end_tensor_inputs,
            max_sequence_length,
        )
        init_bits = self.prepare_image_bits(image)
        if init_bits.shape[0] not in (1, batch):
            raise ValueError(
                f"`image` holds {init_bits.shape[0]} images for {batch} prompts; pass one image or one per prompt"
            )
        num_images = batch * num_images_per_prompt
        init_bits = init_bits.expand(batch, -1, -1).repeat_interleave(num_images_per_prompt, dim=0)
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

        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device, rho=rho)
        steps = int(round(strength * num_inference_steps))
        start = num_inference_steps - steps
        timesteps = self.scheduler.timesteps[start:]
        if steps == 0:
            latents = init_bits.contiguous()
        else:
            self.scheduler.set_begin_index(start)
            noise_t = timesteps[:1].expand(num_images)
            latents = self.scheduler.add_noise(init_bits.contiguous(), noise_t, generator=generator)
        latents = self._denoise(
            latents,
            timesteps,
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
