# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""How a `from_pretrained`-style argument becomes local files: a folder as is, a Hub repo id through ONE
`huggingface_hub.snapshot_download` call ([`resolve_snapshot`], with one ignore list) or, for a single small file
read before anything heavy, `huggingface_hub.hf_hub_download` ([`resolve_file`]). Both honour `HF_HUB_OFFLINE`
(read at call time) and raise errors that name the argument. Used by the pipelines, the training components and the
LPIPS loader."""

import contextlib
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import huggingface_hub

from .checks import hub_error_message, looks_like_path

_TRUE = {"1", "on", "yes", "true"}
# never downloaded with a snapshot: training checkpoints and the authors' raw pickles (a caller's `allow_patterns`
# that names one of these patterns exactly lifts it, e.g. `*.pt` weights of LPIPS)
SNAPSHOT_IGNORE_PATTERNS = ["checkpoint-*/*", "*.pt", "*.ckpt"]


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` as set now (read at call time, not at import)."""
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().lower() in _TRUE
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _label(path: str, argument: Optional[str]) -> str:
    return f"`{argument}` {path!r}" if argument else repr(path)


@contextlib.contextmanager
def _hub_errors(path: str, argument: Optional[str]):
    """Hub failures as a `FileNotFoundError` (not a repo id) or an `OSError` naming the repo and what to try."""
    try:
        yield
    except huggingface_hub.errors.HFValidationError:
        message = f"{_label(path, argument)} is neither a folder nor a Hub repo id ('org/name')"
        raise FileNotFoundError(message) from None
    except (OSError, ValueError, huggingface_hub.errors.HfHubHTTPError) as error:
        raise OSError(hub_error_message(path, error)) from None


def resolve_snapshot(
    name_or_path: Union[str, os.PathLike],
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    local_files_only: bool = False,
    argument: str = "pretrained_model_name_or_path",
    allow_patterns: Optional[Sequence[str]] = None,
) -> Path:
    r"""The local folder of `name_or_path`: itself when it is a folder; a `FileNotFoundError` naming `argument` when
    it looks like a path (absolute, `./`, `~`, more than one `/`) but does not exist; otherwise the snapshot of that
    Hub repo (downloaded once; from the cache only when offline), with an `OSError` that names the repo and what to
    try when it cannot be had.

    Args:
        allow_patterns (`Sequence[str]`, *optional*): Download only the files matching these patterns (default: all
            but [`SNAPSHOT_IGNORE_PATTERNS`]); an ignore pattern listed here verbatim is lifted.
    """
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise FileNotFoundError(f"{_label(path, argument)} is a file; pass the folder that holds it")
    if looks_like_path(path):
        raise FileNotFoundError(f"{_label(path, argument)} does not exist (no such folder)")
    allow = list(allow_patterns) if allow_patterns is not None else None
    ignore = [pattern for pattern in SNAPSHOT_IGNORE_PATTERNS if pattern not in (allow or [])]
    with _hub_errors(path, argument):
        return Path(
            huggingface_hub.snapshot_download(
                path,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=bool(local_files_only) or hub_offline(),
                allow_patterns=allow,
                ignore_patterns=ignore,
            )
        )


def resolve_file(
    name_or_path: Union[str, os.PathLike],
    filename: str,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> Optional[Path]:
    r"""One file of a local folder or of a Hub repo (only that file is downloaded; from the cache only when offline);
    `None` when the folder or repo does not hold it. A path-like argument that does not exist is a
    `FileNotFoundError`; an unreachable repo an `OSError` naming it."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        file = Path(path) / filename
        return file if file.is_file() else None
    if looks_like_path(path) or os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist (no such folder)")
    with _hub_errors(path, None):
        try:
            return Path(
                huggingface_hub.hf_hub_download(
                    path, filename, revision=revision, cache_dir=cache_dir, local_files_only=hub_offline()
                )
            )
        except huggingface_hub.errors.EntryNotFoundError:
            return None
