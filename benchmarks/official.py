r"""The authors' diffusion model (github.com/AMD-AGI/Instella-T2I), loaded at run time from a checkout named by the
`INSTELLA_OFFICIAL_REPO` environment variable, so that its denoising step can be timed beside ours. Nothing of their
code is vendored here.

Their attention calls flash-attn through `transformers.modeling_flash_attention_utils._flash_attention_forward`
(imported into `models/llama_attn.py`). flash-attn does not exist on CPUs and is not needed on GPUs here: the module's
reference to that function is replaced by [`sdpa_flash_attention_forward`], our torch-SDPA stand-in with flash-attn's
semantics for their call (padded keys are left out, the queries are the last `query_length` positions).
"""

import importlib
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .common import NotMeasured

OFFICIAL_REPO_ENV = "INSTELLA_OFFICIAL_REPO"
NOT_MEASURED = f"not measured: set {OFFICIAL_REPO_ENV} to a checkout of github.com/AMD-AGI/Instella-T2I"


class OfficialUnavailable(NotMeasured):
    """The authors' code cannot be used; the message is the reason shown in the results."""


def sdpa_flash_attention_forward(
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    query_length: int,
    is_causal: bool = False,
    dropout: float = 0.0,
    softmax_scale: Optional[float] = None,
    **kwargs,
) -> torch.Tensor:
    r"""flash-attn's padded-batch attention, as transformers' `_flash_attention_forward` computes it, with torch SDPA.

    Args:
        query_states (`(B, Lq, H, D)`): Queries of the last `query_length` positions of the padded sequence.
        key_states, value_states (`(B, S, H, D)`): Keys and values of all `S` positions.
        attention_mask (`(B, S)`, *optional*): 1 for real positions, 0 for padding; padded keys get no weight and
            outputs at padded query positions are zero (flash-attn's unpad/pad round trip).
        is_causal (`bool`): Only `False` is supported (the diffusion model is bidirectional).

    Returns:
        `(B, Lq, H, D)`.
    """
    if is_causal:
        raise NotImplementedError("the SDPA stand-in covers the bidirectional attention of the diffusion model only")
    query, key, value = (x.transpose(1, 2) for x in (query_states, key_states, value_states))
    mask = None
    if attention_mask is not None:
        mask = attention_mask.to(device=query.device).bool()
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=None if mask is None else mask[:, None, None, :],
        dropout_p=dropout,
        scale=softmax_scale,
    )
    if mask is not None:
        out = out.masked_fill(~mask[:, -query_length:][:, None, :, None], 0.0)
    return out.transpose(1, 2)


def official_repo() -> Optional[Path]:
    """The checkout named by `INSTELLA_OFFICIAL_REPO`, or `None` when the variable is unset or empty."""
    value = os.environ.get(OFFICIAL_REPO_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def load_official_diffusion_class(repo: Optional[Path] = None) -> type:
    r"""Import `models.diff_model.Instella_Binary_Diff` from the checkout, with the SDPA stand-in in place of
    flash-attn.

    Raises:
        [`OfficialUnavailable`]: No checkout configured, or it cannot be imported (the message says why).
    """
    repo = official_repo() if repo is None else Path(repo)
    if repo is None:
        raise OfficialUnavailable(NOT_MEASURED)
    if not (repo / "models" / "diff_model.py").is_file():
        raise OfficialUnavailable(f"not measured: {OFFICIAL_REPO_ENV}={repo} has no models/diff_model.py")
    _ensure_transformers_names()
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attention_module = importlib.import_module("models.llama_attn")
            attention_module._flash_attention_forward = sdpa_flash_attention_forward
            diff_module = importlib.import_module("models.diff_model")
    except Exception as error:  # their imports may not fit this environment: report it, do not crash the suite
        raise OfficialUnavailable(
            f"not measured: importing the authors' code from {repo} failed ({type(error).__name__}: {error})"
        ) from error
    # `FlashAttention2.forward` looks `_flash_attention_forward` up in models.llama_attn's namespace: patched above
    return diff_module.Instella_Binary_Diff


def _ensure_transformers_names() -> None:
    """Their `llama_attn.py` imports `is_flash_attn_greater_or_equal_2_10` from `transformers.utils`; transformers
    versions that dropped it get a stand-in answering `True` (flash-attn >= 2.1: bottom-right causal alignment, the
    behaviour of every current version; it does not matter for the bidirectional diffusion model)."""
    import transformers.utils

    if not hasattr(transformers.utils, "is_flash_attn_greater_or_equal_2_10"):
        transformers.utils.is_flash_attn_greater_or_equal_2_10 = lambda: True


def build_official_diffusion(dit_config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    r"""The authors' diffusion model at the architecture of a [`BinaryDiT`] config, random weights (their own
    initialisation), in eval mode on `device` in `dtype`.

    Their model reads one text layer per block, so `text_num_layers` must equal `num_layers` (true of both presets).
    Their attention module reads a `config` attribute it does not have in float32; an empty one is attached so that
    float32 runs work too.
    """
    cls = load_official_diffusion_class()
    text_layers = dit_config.get("text_num_layers") or dit_config["num_layers"]
    if text_layers != dit_config["num_layers"]:
        raise OfficialUnavailable("not measured: the authors' model needs one text layer per block")
    model = cls(
        in_channels=dit_config["in_channels"],
        num_layers=dit_config["num_layers"],
        attention_head_dim=dit_config["attention_head_dim"],
        num_attention_heads=dit_config["num_attention_heads"],
        num_img_tkns=dit_config["num_tokens"],
        text_cond_dim=dit_config["text_embed_dim"],
    )
    for module in model.modules():
        if type(module).__name__ == "FlashAttention2" and not hasattr(module, "config"):
            module.config = types.SimpleNamespace()
    return model.to(device=device, dtype=dtype).eval()
