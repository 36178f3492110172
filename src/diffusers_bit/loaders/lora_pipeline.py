# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""LoRA adapters of the Instella pipelines, on diffusers' LoRA machinery (`LoraBaseMixin` and the models'
`PeftAdapterMixin`).

[`InstellaLoraLoaderMixin`] gives [`InstellaT2IPipeline`], [`InstellaT2IImg2ImgPipeline`] and [`InstellaARPipeline`]
diffusers' LoRA API for their one LoRA-loadable component, the `transformer`: `load_lora_weights`, `set_adapters`,
`fuse_lora` / `unfuse_lora`, `unload_lora_weights`, `disable_lora` / `enable_lora`, `delete_adapters`,
`get_active_adapters`, `save_lora_weights`, and the call-time scale `pipe(..., attention_kwargs={"scale": s})`.

Files are diffusers' LoRA format: `pytorch_lora_weights.safetensors`, every key prefixed `transformer.`, written by
`get_peft_model_state_dict` + `convert_state_dict_to_diffusers` ([`transformer_lora_layers`]), with the adapter's
`LoraConfig` in the safetensors metadata (diffusers' `lora_adapter_metadata`) and the class and shape of the
transformer it was trained on (`diffusers_bit_transformer`). An adapter is checked before anything is injected: one
for another architecture (a module it names is missing or is not a linear layer, a shape differs, or the file names
another transformer class) is refused with an error listing the mismatching modules, and the model is left as it was.

Fused QKV projections (`fuse_qkv_projections`) are an inference-time copy of `to_q`/`to_k`/`to_v` that LoRA layers do
not reach: the LoRA methods refuse a transformer whose projections are fused, and `fuse_qkv_projections` refuses one
holding LoRA layers that are not fused into its weights with `fuse_lora`.
"""

import json
import os
import re
from typing import Callable, Optional, Union

import torch.nn as nn
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LoraBaseMixin, _fetch_state_dict
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from huggingface_hub.utils import validate_hf_hub_args

TRANSFORMER_NAME = "transformer"
BASE_METADATA_KEY = "diffusers_bit_transformer"  # safetensors metadata: the transformer the adapter was trained on
# config entries that fix the shapes an adapter can have, recorded next to the transformer's class
BASE_CONFIG_KEYS = (
    "in_channels",
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "num_tokens",
    "text_embed_dim",
    "text_num_layers",
    "mlp_ratio",
)
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_magnitude_vector)"
    r"(?:\.(?P<tensor>weight|bias))?$"
)
MAX_LISTED = 12


def transformer_config_summary(transformer: nn.Module) -> dict:
    """The class and shape-defining config entries of a generator (what [`BASE_METADATA_KEY`] records)."""
    config = getattr(transformer, "config", {})
    return {
        "class": type(transformer).__name__,
        **{key: config.get(key) for key in BASE_CONFIG_KEYS if config.get(key) is not None},
    }


def transformer_lora_layers(transformer: nn.Module, adapter_name: str = "default") -> dict:
    r"""The keyword arguments of [`InstellaLoraLoaderMixin.save_lora_weights`] for one adapter of a transformer:
    `transformer_lora_layers` (its weights in diffusers' format: `get_peft_model_state_dict` then
    `convert_state_dict_to_diffusers`, moved to the CPU), `transformer_lora_adapter_metadata` (its `LoraConfig`) and
    `transformer_config` (see [`transformer_config_summary`]).

        InstellaT2IPipeline.save_lora_weights("my-lora", **transformer_lora_layers(pipe.transformer))
    """
    from peft.utils import get_peft_model_state_dict

    configs = getattr(transformer, "peft_config", None) or {}
    if adapter_name not in configs:
        raise ValueError(f"the transformer has no adapter {adapter_name!r}; its adapters: {sorted(configs)}")
    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    layers = {key: value.detach().cpu().contiguous() for key, value in convert_state_dict_to_diffusers(state).items()}
    return {
        "transformer_lora_layers": layers,
        "transformer_lora_adapter_metadata": configs[adapter_name].to_dict(),
        "transformer_config": transformer_config_summary(transformer),
    }


def _json_default(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _listed(items: list) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def check_lora_state_dict(transformer: nn.Module, state_dict: dict, source: str = "the LoRA weights") -> None:
    r"""Refuse a LoRA state dict (peft-format keys of the transformer, without the `transformer.` prefix) that does
    not fit `transformer`: every adapted module must exist and be a linear layer, `lora_A` must be `(r, in_features)`
    and `lora_B` `(out_features, r)` with the same `r`. Raises a `ValueError` listing the mismatching modules."""
    modules = dict(transformer.named_modules())
    problems, parts = [], {}
    for key, value in state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            problems.append(f"{key}: not a LoRA tensor name (`<module>.lora_A.weight` / `<module>.lora_B.weight`)")
            continue
        parts.setdefault(match["module"], {})[(match["part"], match["tensor"])] = tuple(value.shape)
    for name, tensors in parts.items():
        module = modules.get(name)
        module = getattr(module, "base_layer", module)  # a layer that already holds an adapter
        if module is None:
            problems.append(f"{name}: no such module in {type(transformer).__name__}")
            continue
        if not isinstance(module, nn.Linear):
            problems.append(f"{name}: is a {type(module).__name__}, not a linear layer")
            continue
        a, b = tensors.get(("lora_A", "weight")), tensors.get(("lora_B", "weight"))
        if a is None or b is None:
            problems.append(f"{name}: needs both lora_A.weight and lora_B.weight, got {sorted(p for p, _ in tensors)}")
            continue
        expected_a, expected_b = (a[0], module.in_features), (module.out_features, a[0])
        if a != expected_a or b != expected_b:
            problems.append(
                f"{name}: lora_A {list(a)} / lora_B {list(b)} do not fit a linear layer "
                f"{module.in_features} -> {module.out_features} (expected lora_A {list(expected_a)}, "
                f"lora_B {list(expected_b)})"
            )
        bias = tensors.get(("lora_B", "bias"))
        if bias is not None and bias != (module.out_features,):
            problems.append(f"{name}: lora_B.bias {list(bias)}, expected [{module.out_features}]")
    if problems:
        raise ValueError(
            f"{source} do not fit this pipeline's {type(transformer).__name__} (an adapter trained for "
            f"another architecture?); mismatching modules: {_listed(problems)}"
        )
    if not parts:
        raise ValueError(f"{source} hold no LoRA weights for the transformer")


def _has_fused_qkv(model: Optional[nn.Module]) -> bool:
    return model is not None and any(getattr(m, "fused_projections", False) for m in model.modules())


def has_unfused_lora(model: Optional[nn.Module]) -> bool:
    """Whether `model` holds LoRA layers with an active adapter that is not merged into its weights."""
    if model is None or not getattr(model, "_hf_peft_config_loaded", False):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not module.disable_adapters:
            if set(module.active_adapters) - set(module.merged_adapters):
                return True
    return False


class InstellaLoraLoaderMixin(LoraBaseMixin):
    r"""Load, combine, fuse and save LoRA adapters of the `transformer` of an Instella pipeline (see the module
    docstring). The methods this class does not define are `LoraBaseMixin`'s (`set_adapters`, `disable_lora`,
    `enable_lora`, `delete_adapters`, `get_active_adapters`, `get_list_adapters`, `set_lora_device`, ...)."""

    _lora_loadable_modules = [TRANSFORMER_NAME]
    transformer_name = TRANSFORMER_NAME

    # -- reading -------------------------------------------------------------------------------------------------
    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, dict], **kwargs):
        r"""The LoRA weights of a folder, a file, a Hub repo or a state dict, keys in diffusers' format
        (`transformer.<module>.lora_A.weight`). A state dict without the `transformer.` prefix (peft's format) is
        taken as the transformer's.

        Args:
            weight_name (`str`, *optional*): The file inside a folder or repo (default: the one
                `pytorch_lora_weights.safetensors`-like file there).
            cache_dir, force_download, proxies, local_files_only, token, revision, subfolder, use_safetensors:
                As in diffusers' `lora_state_dict`.
            return_lora_metadata (`bool`, defaults to `False`): Also return the adapter metadata (its `LoraConfig`).
        """
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        state_dict, metadata, _ = cls._read_lora(pretrained_model_name_or_path_or_dict, **kwargs)
        return (state_dict, metadata) if return_lora_metadata else state_dict

    @classmethod
    def _read_lora(cls, pretrained_model_name_or_path_or_dict, **kwargs) -> tuple[dict, Optional[dict], Optional[dict]]:
        """`(state_dict, adapter metadata, base transformer summary)`; see [`lora_state_dict`]."""
        use_safetensors = kwargs.pop("use_safetensors", None)
        state_dict, metadata, file_metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=pretrained_model_name_or_path_or_dict,
            weight_name=kwargs.pop("weight_name", None),
            use_safetensors=True if use_safetensors is None else use_safetensors,
            local_files_only=kwargs.pop("local_files_only", None),
            cache_dir=kwargs.pop("cache_dir", None),
            force_download=kwargs.pop("force_download", False),
            proxies=kwargs.pop("proxies", None),
            token=kwargs.pop("token", None),
            revision=kwargs.pop("revision", None),
            subfolder=kwargs.pop("subfolder", None),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=use_safetensors is None,
            return_file_metadata=True,
        )
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        prefix = f"{cls.transformer_name}."
        if state_dict and not any(key.startswith(prefix) for key in state_dict):
            components = sorted({key.split(".")[0] for key in state_dict} & {"text_encoder", "text_encoder_2", "unet"})
            if components:
                raise ValueError(
                    f"the LoRA weights are for {components}; Instella pipelines load LoRA weights into "
                    f"the `{cls.transformer_name}` only"
                )
            state_dict = {prefix + key: value for key, value in state_dict.items()}  # peft's format
            metadata = {prefix + key: value for key, value in metadata.items()} if metadata else metadata
        others = sorted({key.split(".")[0] for key in state_dict if not key.startswith(prefix)})
        if others:
            raise ValueError(
                f"the LoRA weights also hold weights for {others}; Instella pipelines load LoRA weights "
                f"into the `{cls.transformer_name}` only"
            )
        # one key format (peft's `lora_A`/`lora_B`), whatever `convert_state_dict_to_diffusers` renamed
        state_dict = convert_unet_state_dict_to_peft(dict(state_dict))
        base = (file_metadata or {}).get(BASE_METADATA_KEY)
        return state_dict, metadata, json.loads(base) if base else None

    # -- loading -------------------------------------------------------------------------------------------------
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, dict],
        adapter_name: Optional[str] = None,
        hotswap: bool = False,
        **kwargs,
    ) -> None:
        r"""Load a LoRA adapter into the transformer (checked first, see [`check_lora_state_dict`]).

        Args:
            pretrained_model_name_or_path_or_dict: A folder, a Hub repo id, a `.safetensors` file or a state dict.
            adapter_name (`str`, *optional*): Name of the adapter (default: `default_<n>`); select adapters with
                `set_adapters`.
            hotswap (`bool`, defaults to `False`): Replace the weights of the loaded adapter `adapter_name` in place.
            low_cpu_mem_usage (`bool`, *optional*), weight_name, cache_dir, token, revision, ...: As in diffusers.
        """
        self._check_lora_allowed()
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = dict(pretrained_model_name_or_path_or_dict)
        state_dict, metadata, base = self._read_lora(pretrained_model_name_or_path_or_dict, **kwargs)
        transformer = getattr(self, self.transformer_name)
        source = (
            "the LoRA state dict"
            if isinstance(pretrained_model_name_or_path_or_dict, dict)
            else f"the LoRA weights of {str(pretrained_model_name_or_path_or_dict)!r}"
        )
        if not all("lora" in key for key in state_dict):
            raise ValueError(f"{source} are not a LoRA checkpoint: some tensor names do not contain 'lora'")
        if base and base.get("class") not in (None, type(transformer).__name__):
            raise ValueError(
                f"{source} were trained for a {base['class']} (config {base}); this pipeline's "
                f"transformer is a {type(transformer).__name__}"
            )
        prefix = f"{self.transformer_name}."
        check_lora_state_dict(transformer, {k[len(prefix) :]: v for k, v in state_dict.items()}, source)
        self.load_lora_into_transformer(
            state_dict,
            transformer=transformer,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        transformer,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap=False,
        metadata=None,
    ) -> None:
        r"""Inject the `transformer.`-prefixed LoRA `state_dict` into `transformer` with its `load_lora_adapter`
        (`metadata`: the adapter's `LoraConfig`, else inferred from the shapes with `lora_alpha = rank`)."""
        transformer.load_lora_adapter(
            state_dict,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
            prefix=cls.transformer_name,
        )

    # -- saving --------------------------------------------------------------------------------------------------
    @classmethod
    def save_lora_weights(
        cls,
        save_directory: Union[str, os.PathLike],
        transformer_lora_layers: Optional[dict] = None,
        is_main_process: bool = True,
        weight_name: Optional[str] = None,
        save_function: Optional[Callable] = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: Optional[dict] = None,
        transformer_config: Optional[dict] = None,
    ) -> None:
        r"""Write LoRA weights in diffusers' format (`<save_directory>/pytorch_lora_weights.safetensors`, keys
        prefixed `transformer.`).

        Args:
            transformer_lora_layers (`dict[str, torch.Tensor]` or `nn.Module`): The adapter's weights, e.g. from
                [`transformer_lora_layers`] (which also gives the two metadata arguments).
            transformer_lora_adapter_metadata (`dict`, *optional*): The adapter's `LoraConfig` as a dict; stored in
                the file so that loading restores its rank, alpha and target modules.
            transformer_config (`dict`, *optional*): The transformer's class and shapes
                ([`transformer_config_summary`]), stored in the file so that a pipeline of another architecture
                refuses the adapter.
            is_main_process, weight_name, save_function, safe_serialization: As in diffusers.
        """
        if not transformer_lora_layers:
            raise ValueError("pass `transformer_lora_layers` (e.g. **transformer_lora_layers(pipe.transformer))")
        if safe_serialization and save_function is None:
            adapter = transformer_lora_adapter_metadata
            packed = {f"{cls.transformer_name}.{k}": v for k, v in (adapter or {}).items()}

            def save_function(weights, filename):
                metadata = {"format": "pt"}
                if packed:
                    metadata[LORA_ADAPTER_METADATA_KEY] = json.dumps(
                        packed, indent=2, sort_keys=True, default=_json_default
                    )
                if transformer_config:
                    metadata[BASE_METADATA_KEY] = json.dumps(transformer_config, sort_keys=True)
                import safetensors.torch

                safetensors.torch.save_file(weights, filename, metadata=metadata)

        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers={cls.transformer_name: transformer_lora_layers},
            lora_metadata={cls.transformer_name: None},  # written by `save_function` above
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
        )

    # -- the rest of diffusers' API, for the transformer ---------------------------------------------------------
    def fuse_lora(
        self,
        components: Optional[list[str]] = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Optional[list[str]] = None,
        **kwargs,
    ) -> None:
        r"""Merge the active (or `adapter_names`) LoRA adapters into the transformer's weights, scaled by
        `lora_scale`: no LoRA overhead at inference. `unfuse_lora` subtracts them again (the base weights come back
        up to float round-off)."""
        self._check_lora_allowed()
        super().fuse_lora(
            components=components or [self.transformer_name],
            lora_scale=lora_scale,
            safe_fusing=safe_fusing,
            adapter_names=adapter_names,
            **kwargs,
        )

    def unfuse_lora(self, components: Optional[list[str]] = None, **kwargs) -> None:
        """Undo [`fuse_lora`]."""
        self._check_lora_allowed()
        super().unfuse_lora(components=components or [self.transformer_name], **kwargs)

    def unload_lora_weights(self) -> None:
        """Remove every LoRA layer: the transformer is the base model again (its modules and state dict included)."""
        self._check_lora_allowed()
        super().unload_lora_weights()

    def set_adapters(self, adapter_names, adapter_weights=None) -> None:
        self._check_lora_allowed()
        super().set_adapters(adapter_names, adapter_weights)

    set_adapters.__doc__ = LoraBaseMixin.set_adapters.__doc__

    def _check_lora_allowed(self) -> None:
        if _has_fused_qkv(getattr(self, self.transformer_name, None)):
            raise ValueError(
                "the transformer's QKV projections are fused (`fuse_qkv_projections()`), a copy that LoRA "
                "layers do not reach: call `unfuse_qkv_projections()` first"
            )

    def check_qkv_fusion_allowed(self) -> None:
        r"""Raise when the transformer holds LoRA layers not merged with `fuse_lora` (a fused QKV projection would
        bypass them); `fuse_qkv_projections` calls it."""
        if has_unfused_lora(getattr(self, self.transformer_name, None)):
            raise ValueError(
                "the transformer holds LoRA adapters that a fused QKV projection would bypass: call "
                "`fuse_lora()` (or `unload_lora_weights()`) before `fuse_qkv_projections()`"
            )
