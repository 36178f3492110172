# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""What the Instella diffusion and AR pipelines share: prompt encoding with per-layer LLM features, input checks,
rendering bits to images, loading from Hub repo ids and pushing with a model card."""

import inspect
import os
import tempfile
from typing import Any, Callable, Optional, Union

import huggingface_hub
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor

from ..loaders.lora_pipeline import InstellaLoraLoaderMixin
from ..models import BinaryLatentTokenizer
from ..models.lora import lora_scale_of
from ..models.text_conditioning import zero_padding
from ..utils.checks import (
    check_bits,
    check_component_folder,
    check_finite,
    check_generator,
    check_number,
    read_json_file,
)
from ..utils.hub import resolve_snapshot
from ..utils.package_models import (
    PACKAGE_REFERENCE_ATTR,
    REFERENCE_FILE,
    load_referenced_component,
    read_reference,
    write_reference,
)
from ..utils.remote_code import (
    AutoMapConfigMixin,
    export_pipeline,
    normalize_index,
    push_saved_folder,
    remove_remote_code,
    strip_remote_code,
)
from ..utils.text_encoders import text_padding_side

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# pipeline class -> the generator class its folders hold
INSTELLA_PIPELINES = {"InstellaT2IPipeline": "BinaryDiT", "InstellaARPipeline": "BinaryARTransformer"}


def text_features_shape(hidden_states: Union[torch.Tensor, list, tuple], name: str) -> tuple[int, int, int, int]:
    r"""The `(L, B, T, C)` shape of per-layer text features passed as one `(L, B, T, C)` tensor or as a list of `L`
    `(B, T, C)` tensors of one shape; a `ValueError` / `TypeError` naming `name` for anything else. Copies nothing."""
    if isinstance(hidden_states, torch.Tensor):
        if hidden_states.ndim != 4:
            raise ValueError(
                f"`{name}` must be a (layers, batch, tokens, dim) tensor or a list of (batch, tokens, dim) "
                f"tensors, got shape {tuple(hidden_states.shape)}"
            )
        return tuple(hidden_states.shape)
    if (
        isinstance(hidden_states, (list, tuple))
        and hidden_states
        and all(isinstance(h, torch.Tensor) and h.ndim == 3 for h in hidden_states)
    ):
        if len({tuple(h.shape) for h in hidden_states}) != 1:
            raise ValueError(f"all entries of `{name}` must have the same (batch, tokens, dim) shape")
        return (len(hidden_states), *hidden_states[0].shape)
    raise TypeError(f"`{name}` must be a (layers, batch, tokens, dim) tensor or a list of (batch, tokens, dim) tensors")


def stack_hidden_states(hidden_states: Union[torch.Tensor, list, tuple]) -> torch.Tensor:
    r"""Per-layer text features as one `(L, B, T, C)` tensor: a list of `L` `(B, T, C)` tensors is stacked, a tensor
    is returned as is. No checks: [`InstellaPipelineBase.check_text_features`] validates them first."""
    return hidden_states if isinstance(hidden_states, torch.Tensor) else torch.stack(list(hidden_states))


def _pad_tokens(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad `(L, B, T, C)` features and their `(B, T)` mask with masked zeros to `length` tokens (the generators
    give text tokens no position, so where padding sits does not matter once it is masked)."""
    extra = length - embeds.shape[2]
    if extra <= 0:
        return embeds, mask
    embeds = torch.nn.functional.pad(embeds, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra))
    return embeds, mask


def _repeat_rows(t: Optional[torch.Tensor], repeats: int, dim: int) -> Optional[torch.Tensor]:
    return t if t is None or repeats == 1 else t.repeat_interleave(repeats, dim=dim)


class InstellaPipelineBase(AutoMapConfigMixin, DiffusionPipeline, InstellaLoraLoaderMixin):
    r"""Shared base of [`InstellaT2IPipeline`] and [`InstellaARPipeline`]; not meant to be used directly.

    Components common to both: `tokenizer` (text), `text_encoder` (any transformers model returning hidden states:
    `OlmoForCausalLM` for the released weights, a BERT-style encoder works too), `image_tokenizer`
    ([`BinaryLatentTokenizer`]) and `transformer`. LoRA adapters of the `transformer`: see
    [`~diffusers_bit.loaders.InstellaLoraLoaderMixin`].
    """

    model_cpu_offload_seq = "text_encoder->transformer->image_tokenizer"
    _pipeline_kind: str = ""  # the key of INSTELLA_PIPELINES whose folders this class loads; subclasses set it
    _callback_tensor_inputs = ["latents"]
    # the `__call__` arguments that set how images are sampled (shown in model cards and evaluation reports);
    # subclasses list them, their defaults are read from the signature (see `sampling_defaults`)
    _sampling_parameters: tuple = ()

    def _post_init(self) -> None:
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)
        self.check_components()

    def check_components(self) -> None:
        """Raise a `ValueError` when the components do not fit together (latent layout, text layers and width)."""
        image_tokenizer, transformer = self.image_tokenizer, self.transformer
        if image_tokenizer is None or transformer is None:
            return
        tok, gen = image_tokenizer.config, transformer.config
        if (tok.num_latent_tokens, tok.bits_per_token) != (gen.num_tokens, gen.in_channels):
            raise ValueError(
                f"`image_tokenizer` makes latents of {tok.num_latent_tokens} tokens x {tok.bits_per_token} bits but "
                f"`transformer` models {gen.num_tokens} tokens x {gen.in_channels} bits"
            )
        text_config = getattr(self.text_encoder, "config", None)
        if text_config is None:
            return
        layers = getattr(text_config, "num_hidden_layers", None)
        width = getattr(text_config, "hidden_size", None)
        expected_layers = gen.text_num_layers or gen.num_layers
        if layers is not None and layers != expected_layers:
            raise ValueError(
                f"`text_encoder` has {layers} layers but `transformer` expects {expected_layers} per-layer features"
            )
        if width is not None and width != gen.text_embed_dim:
            raise ValueError(f"`text_encoder` width is {width} but `transformer` expects {gen.text_embed_dim}")

    # ------------------------------------------------------------------------------------------------------------------
    # Fused projections
    # ------------------------------------------------------------------------------------------------------------------
    def fuse_qkv_projections(self, transformer: bool = True, image_tokenizer: bool = True) -> None:
        r"""Fuse the query, key and value projections of every attention layer of the `transformer` and/or the
        `image_tokenizer` into one matmul (their `fuse_qkv_projections()`). Outputs equal the unfused ones up to float
        round-off; `save_pretrained` still writes the unfused weights. For inference: fuse after loading weights and
        adapters, and call [`unfuse_qkv_projections`] before training. LoRA adapters of the transformer must be merged
        with `fuse_lora()` first (the fused projection is a copy their layers do not reach; refused otherwise).

        Args:
            transformer (`bool`, defaults to `True`): Fuse the generator's projections.
            image_tokenizer (`bool`, defaults to `True`): Fuse the image tokenizer's projections.
        """
        if transformer:
            self.check_qkv_fusion_allowed()  # LoRA layers not fused with `fuse_lora` would be bypassed
        for name, wanted in (("transformer", transformer), ("image_tokenizer", image_tokenizer)):
            component = getattr(self, name, None)
            if wanted and component is not None:
                component.fuse_qkv_projections()

    def unfuse_qkv_projections(self, transformer: bool = True, image_tokenizer: bool = True) -> None:
        r"""Undo [`fuse_qkv_projections`] on the `transformer` and/or the `image_tokenizer` (a no-op where nothing is
        fused)."""
        for name, wanted in (("transformer", transformer), ("image_tokenizer", image_tokenizer)):
            component = getattr(self, name, None)
            if wanted and component is not None:
                component.unfuse_qkv_projections()

    # ------------------------------------------------------------------------------------------------------------------
    # Loading and publishing
    # ------------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        r"""Load a pipeline from a local folder or a Hub repo id.

        A repo id is resolved with `huggingface_hub.snapshot_download` first (diffusers refuses third-party component
        classes for repo ids), honouring `revision`, `cache_dir`, `token`, `local_files_only` and `HF_HUB_OFFLINE`;
        every other keyword (`dtype`, `variant`, ...) goes to `DiffusionPipeline.from_pretrained`. `dtype` is
        diffusers 0.42's name; the older `torch_dtype` is accepted too.
        """
        path = resolve_snapshot(
            pretrained_model_name_or_path,
            revision=kwargs.pop("revision", None),
            cache_dir=kwargs.get("cache_dir"),
            token=kwargs.pop("token", None),
            local_files_only=kwargs.get("local_files_only", False),
        )
        if "dtype" in kwargs and "torch_dtype" in kwargs:
            raise ValueError("pass `dtype` (diffusers 0.42's name) or `torch_dtype` (its older name), not both")
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        if dtype is not None:
            kwargs["dtype"] = dtype
        cls.check_pipeline_folder(path, passed=set(kwargs))
        for name in ("tokenizer", "text_encoder"):
            reference = read_reference(os.path.join(path, name))
            if reference is not None and name not in kwargs:
                kwargs[name] = load_referenced_component(name, reference, dtype)
        return super().from_pretrained(str(path), **kwargs)

    @classmethod
    def check_pipeline_folder(cls, path: Union[str, os.PathLike], passed: frozenset = frozenset()) -> None:
        r"""Before anything loads: `model_index.json` parses, the folder holds this kind of pipeline (a diffusion
        folder is refused by the AR class and vice versa, naming what was found), and every listed component not
        `passed` in has its folder, parseable JSON files and readable safetensors headers. Errors name the file."""
        index = read_json_file(os.path.join(path, "model_index.json"), "the pipeline index")
        if not isinstance(index, dict):
            raise ValueError(f"{os.path.join(path, 'model_index.json')} must hold a JSON object")
        transformer = index.get("transformer")
        transformer = transformer[1] if isinstance(transformer, list) and len(transformer) == 2 else None
        expected = INSTELLA_PIPELINES[cls._pipeline_kind]
        if transformer is not None and transformer != expected:
            right = {v: k for k, v in INSTELLA_PIPELINES.items()}.get(transformer, "the class that saved it")
            raise ValueError(
                f"{path} holds {index.get('_class_name')} (its transformer is {transformer}); "
                f"{cls.__name__} needs a {expected}: load it with {right}"
            )
        for name, entry in index.items():
            if name.startswith("_") or name in passed or not (isinstance(entry, list) and entry and entry[0]):
                continue
            folder = os.path.join(path, name)
            if read_reference(folder) is None:
                check_component_folder(folder, name)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *args, **kwargs) -> None:
        r"""`DiffusionPipeline.save_pretrained`, plus:

        - a text tokenizer / encoder that was loaded from an installed package (a `reference.json` in its folder, see
          [`~diffusers_bit.utils.package_models`]) is saved as that reference again instead of a copy of its weights
          (text encoders are frozen in every diffusers-bit workflow); `save_referenced_components=True` writes the
          full weights instead;
        - `remote_code=True` (the default): the folder also loads where diffusers-bit is not installed, with
          `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` and `AutoModel.from_pretrained(folder,
          subfolder=..., trust_remote_code=True)` (code generated from the installed package, see
          [`~diffusers_bit.utils.remote_code`]); `remote_code=False` writes weights and configs only.
        """
        copy_all = kwargs.pop("save_referenced_components", False)
        remote_code = kwargs.pop("remote_code", True)
        push_to_hub = kwargs.pop("push_to_hub", False)
        super().save_pretrained(save_directory, *args, **kwargs)
        for name in ("tokenizer", "text_encoder"):
            reference = getattr(getattr(self, name, None), PACKAGE_REFERENCE_ATTR, None)
            if reference is None or copy_all:
                continue
            folder = os.path.join(save_directory, name)
            for entry in os.listdir(folder):
                target = os.path.join(folder, entry)
                if entry != REFERENCE_FILE and os.path.isfile(target):
                    os.remove(target)
            write_reference(folder, reference)
        remove_remote_code(save_directory)
        if remote_code:
            export_pipeline(self, save_directory)
        else:
            strip_remote_code(save_directory)
        if push_to_hub:
            push_saved_folder(self, save_directory, kwargs)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        r"""`ConfigMixin.load_config`; a pipeline folder's `model_index.json` written with remote code is read as this
        package's own classes (no code from the folder runs when the installed classes load it)."""
        result = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        folder = os.fspath(pretrained_model_name_or_path)
        if isinstance(config, dict) and os.path.isdir(folder):
            normalized = normalize_index(config, folder)
            result = (normalized, *result[1:]) if isinstance(result, tuple) else normalized
        return result

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[str] = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        model_card_kwargs: Optional[dict] = None,
        **kwargs,
    ) -> str:
        r"""Save the pipeline with a model card rendered from `model_cards/` (see
        [`~diffusers_bit.model_card.render_model_card`]; `model_card_kwargs` go there) and upload the folder."""
        from ..model_card import render_model_card

        repo_id = huggingface_hub.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmpdir:
            self.save_pretrained(tmpdir, safe_serialization=safe_serialization, variant=variant)
            card = render_model_card(self, repo_id, **(model_card_kwargs or {}))
            with open(os.path.join(tmpdir, "README.md"), "w", encoding="utf-8") as f:
                f.write(card)
            return huggingface_hub.upload_folder(
                repo_id=repo_id,
                folder_path=tmpdir,
                token=token,
                commit_message=commit_message or "Upload pipeline",
                create_pr=create_pr,
            )

    @classmethod
    def sampling_defaults(cls) -> dict:
        r"""`{name: default}` of the sampling arguments (`_sampling_parameters`), read from the signature of
        `cls.__call__`, so they cannot disagree with it. A `None` default means "the scheduler config decides"; see
        [`resolved_sampling_defaults`]."""
        parameters = inspect.signature(cls.__call__).parameters
        return {name: parameters[name].default for name in cls._sampling_parameters}

    def resolved_sampling_defaults(self) -> dict:
        r"""[`sampling_defaults`] as this pipeline uses them: a `None` default that the scheduler config sets (e.g.
        `algorithm`) is replaced by the config's value."""
        config = getattr(getattr(self, "scheduler", None), "config", None) or {}
        return {
            name: config[name] if value is None and name in config else value
            for name, value in self.sampling_defaults().items()
        }

    def sampling_defaults_text(self) -> str:
        """The model card's line: `` `name=value` `` for every [`resolved_sampling_defaults`] entry."""
        return ", ".join(f"`{k}={v}`" for k, v in self.resolved_sampling_defaults().items())

    # ------------------------------------------------------------------------------------------------------------------
    # Properties in the diffusers style
    # ------------------------------------------------------------------------------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs an unconditional branch only when `guidance_scale > 1`."""
        return self._guidance_scale > 1

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    @property
    def attention_kwargs(self) -> Optional[dict]:
        """The running call's `attention_kwargs` (`{"scale": s}`: the LoRA scale), given to every transformer call."""
        return getattr(self, "_attention_kwargs", None)

    @property
    def supported_sizes(self) -> Optional[list[int]]:
        """Image sides the image tokenizer decodes."""
        return self.image_tokenizer.supported_sizes

    # ------------------------------------------------------------------------------------------------------------------
    # Prompt encoding
    # ------------------------------------------------------------------------------------------------------------------
    def _text_features(self, texts: list[str], device, max_sequence_length: int):
        """Tokenize and run the text encoder; returns `(L, B, T, C)` hidden states (embedding output dropped, padded
        positions zeroed) and the `(B, T)` mask."""
        kwargs = dict(
            truncation=True,
            max_length=max_sequence_length,
            return_tensors="pt",
            padding_side=text_padding_side(self.text_encoder),
        )
        inputs = self.tokenizer(texts, padding="longest", **kwargs)
        if inputs["input_ids"].shape[1] == 0:  # every text is empty: keep one masked token
            inputs = self.tokenizer(texts, padding="max_length", **{**kwargs, "max_length": 1})
        input_ids = inputs["input_ids"].to(device)
        mask = inputs["attention_mask"].to(device)
        output = self.text_encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        return zero_padding(torch.stack(output.hidden_states[1:]), mask.bool()), mask

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: Optional[Union[str, list[str]]] = None,
        negative_prompt: Optional[Union[str, list[str]]] = None,
        do_classifier_free_guidance: bool = True,
        num_images_per_prompt: int = 1,
        device: Optional[torch.device] = None,
        prompt_embeds: Optional[Union[torch.Tensor, list]] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[Union[torch.Tensor, list]] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        max_sequence_length: int = 128,
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        r"""Per-layer text features of the prompts (and of the negative prompts for guidance), as the authors compute
        them: every hidden state of the text encoder after the embedding output, left padding for causal LMs (right
        for encoders), truncation at `max_sequence_length`, and conditional + unconditional texts tokenized and
        encoded in ONE batch, padded together. Precomputed `prompt_embeds` / `negative_prompt_embeds` are checked
        with [`check_text_features`] and passed through.

        Returns:
            `(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)`: embeds
            of shape `(L, B * num_images_per_prompt, T, C)`, masks `(B * num_images_per_prompt, T)`; the negative
            pair is `None` without guidance. Padded positions hold zeros.
        """
        if prompt_embeds is not None:
            batch = self.check_text_features(prompt_embeds, prompt_attention_mask, "prompt")
        else:
            batch = 1 if isinstance(prompt, str) else len(prompt or [])
        if negative_prompt_embeds is not None:
            self.check_text_features(negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt", batch)
        return self._encode_prompt(
            prompt,
            negative_prompt,
            do_classifier_free_guidance,
            num_images_per_prompt,
            device,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            max_sequence_length,
        )

    def _encode_prompt(
        self,
        prompt,
        negative_prompt,
        do_classifier_free_guidance,
        num_images_per_prompt,
        device,
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        max_sequence_length,
    ):
        """[`encode_prompt`] for text features already checked ([`check_text_features`]): runs no check again."""
        device = device or self._execution_device
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompt_embeds is None:
            batch = len(prompts)
            negatives = self._negative_list(negative_prompt, batch) if do_classifier_free_guidance else []
            hidden, mask = self._text_features(prompts + negatives, device, max_sequence_length)
            prompt_embeds, prompt_attention_mask = hidden[:, :batch], mask[:batch]
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                negative_prompt_embeds, negative_prompt_attention_mask = hidden[:, batch:], mask[batch:]
        else:
            prompt_embeds = stack_hidden_states(prompt_embeds).to(device)
            prompt_attention_mask = self._default_mask(prompt_embeds, prompt_attention_mask, device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = self._negative_list(negative_prompt, prompt_embeds.shape[1])
            negative_prompt_embeds, negative_prompt_attention_mask = self._text_features(
                negatives, device, max_sequence_length
            )
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = stack_hidden_states(negative_prompt_embeds).to(device)
            negative_prompt_attention_mask = self._default_mask(
                negative_prompt_embeds, negative_prompt_attention_mask, device
            )
        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_attention_mask = None
        n = num_images_per_prompt
        return (
            _repeat_rows(prompt_embeds, n, dim=1),
            _repeat_rows(prompt_attention_mask, n, dim=0),
            _repeat_rows(negative_prompt_embeds, n, dim=1),
            _repeat_rows(negative_prompt_attention_mask, n, dim=0),
        )

    @staticmethod
    def _negative_list(negative_prompt, batch: int) -> list[str]:
        if negative_prompt is None:
            return [""] * batch
        return [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)

    @staticmethod
    def _default_mask(embeds: torch.Tensor, mask: Optional[torch.Tensor], device) -> torch.Tensor:
        if mask is None:
            return torch.ones(embeds.shape[1:3], dtype=torch.long, device=device)
        return mask.to(device)

    def _begin_call(
        self,
        prompt,
        negative_prompt,
        guidance_scale,
        num_images_per_prompt,
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        max_sequence_length,
        attention_kwargs=None,
    ):
        r"""Set the call state and encode the prompts (their features were checked by `check_inputs`); returns the
        text keys/values of `[cond; uncond]` with `B * num_images_per_prompt` rows each. They are projected once per
        prompt and then repeated for the images of that prompt. `attention_kwargs` (the LoRA scale) applies to the
        text projections here and, through [`attention_kwargs`], to every transformer call of the sampler."""
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        self._attention_kwargs = attention_kwargs
        self._lora_scale = lora_scale_of(attention_kwargs)
        embeds = self._encode_prompt(
            prompt,
            negative_prompt,
            self.do_classifier_free_guidance,
            1,
            self._execution_device,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            max_sequence_length,
        )
        text_kv = self._prepare_text_kv(*embeds, attention_kwargs=attention_kwargs)
        return text_kv.repeat_interleave(num_images_per_prompt)

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance on `[cond; uncond]` logits: `uncond + guidance_scale * (cond - uncond)`."""
        logits = logits.float()
        if not self.do_classifier_free_guidance:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + self._guidance_scale * (cond - uncond)

    def _prepare_text_kv(self, prompt_embeds, prompt_mask, negative_embeds, negative_mask, attention_kwargs=None):
        r"""Text keys/values of every transformer block for `[cond; uncond]`: embeds `(L, B, T, C)` and masks `(B, T)`
        give a [`~diffusers_bit.models.TextKV`] of `2 * B` rows (`B` without guidance), computed once per call."""
        if negative_embeds is not None:
            length = max(prompt_embeds.shape[2], negative_embeds.shape[2])
            prompt_embeds, prompt_mask = _pad_tokens(prompt_embeds, prompt_mask, length)
            negative_embeds, negative_mask = _pad_tokens(negative_embeds, negative_mask, length)
            prompt_embeds = torch.cat([prompt_embeds, negative_embeds], dim=1)
            prompt_mask = torch.cat([prompt_mask, negative_mask], dim=0)
        return self.transformer.prepare_text_kv(prompt_embeds, prompt_mask, attention_kwargs=attention_kwargs)

    # ------------------------------------------------------------------------------------------------------------------
    # Checks, run before any model
    # ------------------------------------------------------------------------------------------------------------------
    def _check_common_inputs(
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
    ) -> int:
        """Validate the arguments both pipelines take; return the prompt batch size."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("`prompt` is required (a string or a list of strings), or pass `prompt_embeds`")
        if prompt is not None:
            if isinstance(prompt, str):
                batch = 1
            elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
                batch = len(prompt)
            else:
                raise TypeError(
                    f"`prompt` must be a string or a non-empty list of strings, got {type(prompt).__name__}"
                )
        else:
            batch = self.check_text_features(prompt_embeds, prompt_attention_mask, "prompt")
        if negative_prompt is not None:
            if negative_prompt_embeds is not None:
                raise ValueError("pass either `negative_prompt` or `negative_prompt_embeds`, not both")
            if isinstance(negative_prompt, (list, tuple)):
                if not all(isinstance(p, str) for p in negative_prompt):
                    raise TypeError("`negative_prompt` must be a string or a list of strings")
                if len(negative_prompt) != batch:
                    raise ValueError(
                        f"`negative_prompt` has {len(negative_prompt)} entries but the prompt batch has {batch}"
                    )
            elif not isinstance(negative_prompt, str):
                raise TypeError(
                    f"`negative_prompt` must be a string or a list of strings, got {type(negative_prompt).__name__}"
                )
        if negative_prompt_embeds is not None:
            self.check_text_features(negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt", batch)
        for name, value in (("height", height), ("width", width)):
            if value is not None:
                self.image_tokenizer.check_size(
                    name, value, 2 ** len(self.image_tokenizer.config.decoder_upsample_blocks)
                )
        check_number("guidance_scale", guidance_scale, low=0, hint=" (1 disables guidance)")
        check_number("temperature", temperature, low=0, hint=" (0 = greedy)")
        check_number("num_images_per_prompt", num_images_per_prompt, low=1, integer=True)
        check_generator("generator", generator)
        if isinstance(generator, (list, tuple)) and len(generator) != batch * num_images_per_prompt:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators but {batch * num_images_per_prompt} images "
                f"are requested ({batch} prompts x {num_images_per_prompt}); pass one generator or one per image"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {unknown}; allowed: {self._callback_tensor_inputs}"
            )
        check_number("max_sequence_length", max_sequence_length, low=1, integer=True)
        limit = self.max_text_positions()
        if prompt is not None and limit is not None and max_sequence_length > limit:
            raise ValueError(
                f"`max_sequence_length` {max_sequence_length} is more than the text encoder embeds "
                f"(its position table holds {limit} tokens); pass at most {limit}"
            )
        return batch

    def max_text_positions(self) -> Optional[int]:
        """How many tokens the text encoder's position table holds (`None` when it has none, e.g. rotary LMs)."""
        config = getattr(self.text_encoder, "config", None)
        if config is None or getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
            return None
        if getattr(config, "rope_theta", None) is not None or getattr(config, "rope_parameters", None) is not None:
            return None  # rotary positions: no table to run past
        limit = getattr(config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) and limit > 0 else None

    def check_text_features(
        self,
        embeds: Union[torch.Tensor, list, tuple],
        mask: Optional[torch.Tensor],
        name: str,
        batch: Optional[int] = None,
    ) -> int:
        r"""The one check of precomputed text features, run once per call (by `check_inputs`, or by a direct
        [`encode_prompt`] call): `{name}_embeds` and `{name}_attention_mask` must fit the transformer. Raises a
        `ValueError` / `TypeError` naming the argument.

        Args:
            embeds (`torch.Tensor` of shape `(L, B, T, C)` or a list of `L` tensors `(B, T, C)`): Per-layer features;
                `L` and `C` must be the transformer's text layers and width, every value finite.
            mask (`torch.Tensor` of shape `(B, T)`, *optional*): 0/1 attention mask.
            name (`str`): `"prompt"` or `"negative_prompt"`.
            batch (`int`, *optional*): The prompt batch `B` these features must have.

        Returns:
            The batch size `B`.
        """
        shape = text_features_shape(embeds, f"{name}_embeds")
        if batch is not None and shape[1] != batch:
            raise ValueError(f"`{name}_embeds` has batch {shape[1]}, the prompt batch is {batch}")
        config = self.transformer.config
        layers = config.text_num_layers or config.num_layers
        if shape[0] != layers or shape[-1] != config.text_embed_dim:
            raise ValueError(
                f"`{name}_embeds` must hold {layers} layers of width {config.text_embed_dim}, got shape {shape}"
            )
        for layer in [embeds] if isinstance(embeds, torch.Tensor) else embeds:
            check_finite(f"{name}_embeds", layer)
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"`{name}_attention_mask` must be a torch.Tensor, got {type(mask).__name__}")
            if tuple(mask.shape) != shape[1:3]:
                raise ValueError(
                    f"`{name}_attention_mask` must have shape {shape[1:3]} (batch, tokens), got {tuple(mask.shape)}"
                )
            check_bits(f"{name}_attention_mask", mask)
        return shape[1]

    @staticmethod
    def _callback_inputs(callback_on_step_end, tensor_inputs):
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            return callback_on_step_end.tensor_inputs
        return tensor_inputs

    # ------------------------------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_latents(
        self,
        latents: torch.Tensor,
        height: Optional[int] = None,
        width: Optional[int] = None,
        output_type: str = "pil",
    ) -> Any:
        r"""Render bits (e.g. from `output_type="latent"`) at any supported resolution, without re-sampling.

        Args:
            latents (`torch.Tensor` of shape `(B, num_latent_tokens, bits_per_token)`): Bits in {0, 1}.
            height, width (`int`, *optional*): Output size; default: the image tokenizer's largest.
            output_type (`str`): `"pil"`, `"np"` or `"pt"`.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be one of ['pil', 'np', 'pt'], got {output_type!r}")
        tokenizer: BinaryLatentTokenizer = self.image_tokenizer
        tokenizer.check_bits(latents, "latents")
        images = tokenizer.decode(latents.to(device=tokenizer.device, dtype=tokenizer.dtype), height, width).sample
        return self.image_processor.postprocess(images.float().clamp(-1, 1), output_type=output_type)

    def _check_latents_tensor(self, latents: torch.Tensor, batch: int) -> None:
        config = self.image_tokenizer.config
        shape = (batch, config.num_latent_tokens, config.bits_per_token)
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}")
        if not (latents.dtype.is_floating_point or latents.dtype == torch.bool):
            raise ValueError(f"`latents` must be a floating-point or bool tensor of bits, got {latents.dtype}")
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape} (images, tokens, bits), got {tuple(latents.shape)}")
        if bool(((latents != 0) & (latents != 1)).any()):
            raise ValueError("`latents` must contain only 0 and 1")

    def _finish(self, latents: torch.Tensor, height, width, output_type: str):
        if output_type == "latent":
            return latents
        return self.decode_latents(latents, height, width, output_type)

    def _run_callback(self, callback: Optional[Callable], step: int, timestep, names, local_vars: dict) -> dict:
        if callback is None:
            return {}
        outputs = callback(self, step, timestep, {k: local_vars[k] for k in names})
        if outputs is not None and not isinstance(outputs, dict):
            raise TypeError(f"`callback_on_step_end` must return a dict or None, got {type(outputs).__name__}")
        outputs = outputs or {}
        if "latents" in outputs:
            latents, before = outputs["latents"], local_vars["latents"]
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != tuple(before.shape):
                shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(
                    f"`callback_on_step_end` returned `latents` of shape {shape}; expected "
                    f"{tuple(before.shape)} (the bits it was given)"
                )
            check_bits("latents returned by `callback_on_step_end`", latents)
        return outputs
