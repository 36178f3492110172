# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""One way to turn a `from_pretrained`-style argument into a local folder: a folder as is, a Hub repo id through
`huggingface_hub.snapshot_download` (honouring `HF_HUB_OFFLINE`), with errors that name the argument."""

import os
from pathlib import Path
from typing import Optional, Union

import huggingface_hub

from .checks import hub_error_message, looks_like_path

_TRUE = {"1", "on", "yes", "true"}
# never downloaded with a pipeline or model: training checkpoints and the authors' raw pickles
SNAPSHOT_IGNORE_PATTERNS = ["checkpoint-*/*", "*.pt", "*.ckpt"]


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` as set now (read at call time, not at import)."""
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().lower() in _TRUE
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def resolve_snapshot(
    name_or_path: Union[str, os.PathLike],
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    local_files_only: bool = False,
    argument: str = "pretrained_model_name_or_path",
) -> Path:
    r"""The local folder of `name_or_path`: itself when it is a folder; a `FileNotFoundError` naming `argument` when
    it looks like a path (absolute, `./`, `~`, more than one `/`) but does not exist; otherwise the snapshot of that
    Hub repo (downloaded once; from the cache only when offline), with an `OSError` that names the repo and what to
    try when it cannot be had."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise FileNotFoundError(f"`{argument}` {path!r} is a file; pass the folder that holds it")
    if looks_like_path(path):
        raise FileNotFoundError(f"`{argument}` {path!r} does not exist (no such folder)")
    try:
        return Path(huggingface_hub.snapshot_download(
            path, revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=bool(local_files_only) or hub_offline(), ignore_patterns=SNAPSHOT_IGNORE_PATTERNS,
        ))  # fmt: skip
    except huggingface_hub.errors.HFValidationError:
        raise FileNotFoundError(f"`{argument}` {path!r} is neither a folder nor a Hub repo id ('org/name')") from None
    except (OSError, ValueError, huggingface_hub.errors.HfHubHTTPError) as error:
        raise OSError(hub_error_message(path, error)) from None
