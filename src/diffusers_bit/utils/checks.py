# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Argument checks shared by the models, the scheduler, the pipelines and the command line. Every check raises a
`TypeError` (wrong kind of value) or `ValueError` (right kind, wrong value) whose message names the argument and
says what is accepted, before any heavy work."""

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch


def check_number(
    name: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    hint: str = "",
) -> None:
    r"""A finite real number (an `int` when `integer`) in `[low, high]` (bounds open where asked).

    Raises `TypeError` for a non-number (bools are not numbers here) and `ValueError` for NaN, infinity or a value out
    of range; the message names `name` and the accepted range (`hint` is appended).
    """
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not integer:
            value = value.item()
        else:
            kind = "an int" if integer else "a number"
            raise TypeError(f"`{name}` must be {kind}, got {type(value).__name__}{hint}")
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    accepted = f"a finite {'int' if integer else 'number'}" + (" " + " and ".join(parts) if parts else "")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}{hint}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}{hint}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}{hint}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise a `ValueError` naming `name` when a floating-point tensor holds NaN or infinity (meta tensors, which
    hold no values, pass)."""
    if isinstance(tensor, torch.Tensor) and tensor.is_meta:
        return
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values")


def check_bits(name: str, tensor: torch.Tensor) -> None:
    """Raise a `ValueError` naming `name` unless every entry of `tensor` is 0 or 1 (meta tensors pass)."""
    if tensor.is_meta:
        return
    if tensor.dtype.is_complex or bool(((tensor != 0) & (tensor != 1)).any()):
        raise ValueError(f"`{name}` must contain only bits (0 and 1); threshold or sample probabilities first")


def check_generator(name: str, generator: Any, count: Optional[int] = None) -> None:
    r"""`None`, a `torch.Generator`, or a list/tuple of them (of length `count` when given)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        if bad or not generator:
            raise TypeError(
                f"`{name}` must be a torch.Generator or a non-empty list of them, got a list with {bad or 'nothing'}"
            )
        if count is not None and len(generator) != count:
            raise ValueError(f"`{name}` is a list of {len(generator)} generators; pass one generator or {count}")
        return
    raise TypeError(f"`{name}` must be a torch.Generator or a list of them, got {type(generator).__name__}")


def read_json_file(path: Union[str, os.PathLike], what: str = "") -> Any:
    r"""Parse a JSON file; a missing, unreadable or invalid file raises an error naming it (and the line/column)."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{label} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{label} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{label} is not a UTF-8 text file") from None


def looks_like_path(name_or_path: Union[str, os.PathLike]) -> bool:
    r"""Whether a `from_pretrained`-style argument is meant as a local path rather than a Hub repo id: absolute,
    `.`/`~`-prefixed, with an OS separator other than the single `/` of `org/name`, or a `PathLike`."""
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    if text.startswith((".", "~", "/")) or os.path.isabs(text) or (os.sep != "/" and os.sep in text):
        return True
    return text.count("/") > 1 or text.endswith("/")


def check_device(name: str, device: Union[str, torch.device, None]) -> Optional[torch.device]:
    r"""A device this torch build can use: parses `device` and checks that its backend is available (`cuda` on a
    CPU-only build, `mps` off Apple silicon, a GPU index past the count are refused, naming what is available)."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"`{name}` {device!r} is not a torch device ({error})") from None
    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        available.append("mps")
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise ValueError(
            f"`{name}` {device!r} is not available with this torch build ({torch.__version__}); available: {available}"
        )
    if parsed.type == "mps" and "mps" not in available:
        raise ValueError(f"`{name}` {device!r} is not available on this machine; available: {available}")
    if parsed.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise ValueError(f"`{name}` {device!r} is not supported; available: {available}")
    return parsed


# what diffusers' `EMAModel.save_pretrained` adds to a model's config.json (an EMA checkpoint is loaded through the
# model class)
EMA_CONFIG_KEYS = frozenset(
    {"decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step", "use_ema_warmup", "foreach"}
)


class StrictConfigMixin:
    r"""Refuse configs that would silently build a model other than the one its weights belong to.

    diffusers ignores unknown config keys (with a warning) and fills missing ones with the class defaults, so a
    misspelt `sample_size` for `sample_sizes` or a missing `num_layers` builds the paper-size default model and loads
    the wrong weights into it (or fails later on the meta device). `from_config` (and so `from_pretrained`) here
    raises a `ValueError` naming every unknown key and every missing key that has no safe default. Keys starting with
    `_` (diffusers' bookkeeping) are ignored; `_optional_config_keys` lists the keys that may be absent (switches
    added after the first configs were written, whose defaults are the released behaviour).
    """

    _optional_config_keys: tuple = ()

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        if isinstance(config, dict):  # FrozenDict is a dict too; paths and None are left to diffusers
            check_config_keys(cls, config, kwargs)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder=None, **kwargs):
        r"""diffusers' `from_pretrained`, after cheap checks that name what is wrong: a path-like argument that does
        not exist is a `FileNotFoundError` (not a "repo id" error); a local folder's JSON files must parse and its
        safetensors headers must be readable. `dtype=` (diffusers 0.42) and `torch_dtype=` are both accepted."""
        path = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if path is not None and not os.path.isdir(path):
            if os.path.exists(path):
                raise FileNotFoundError(
                    f"`pretrained_model_name_or_path` {path!r} is a file; pass the folder that holds it"
                )
            if looks_like_path(path):
                raise FileNotFoundError(f"`pretrained_model_name_or_path` {path!r} does not exist (no such folder)")
        elif path is not None:
            folder = Path(path, subfolder) if subfolder else Path(path)
            check_component_folder(folder, subfolder or folder.name)
            config_file = folder / getattr(cls, "config_name", "config.json")
            if config_file.is_file():
                config = read_json_file(config_file)
                if isinstance(config, dict):
                    check_config_keys(cls, config)
        return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)


def check_config_keys(cls, config: dict, overrides: Optional[dict] = None) -> None:
    """The check of [`StrictConfigMixin`]: unknown keys and missing required keys of `config` for `cls`."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    known = {name for name in params if name != "self" and params[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
    # `auto_map` is diffusers' AutoModel bookkeeping (remote code), not a constructor argument
    given = {key for key in config if not str(key).startswith("_") and key not in EMA_CONFIG_KEYS and key != "auto_map"}
    defaulted = set(config.get("_use_default_values", []) or [])
    unknown = sorted(given - known)
    missing = sorted(known - given - set(overrides or {}) - set(cls._optional_config_keys) - defaulted)
    if unknown or missing:
        parts = []
        if unknown:
            close = {}
            for key in unknown:
                import difflib

                match = difflib.get_close_matches(key, sorted(known), n=1)
                if match:
                    close[key] = match[0]
            hint = "".join(f"; did you mean `{v}` for `{k}`?" for k, v in close.items())
            parts.append(f"unknown keys {unknown}{hint}")
        if missing:
            parts.append(f"missing keys {missing} (no safe default: they decide the architecture)")
        raise ValueError(f"{cls.__name__} config: " + "; ".join(parts) + f". Known keys: {sorted(known)}")


IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def check_output_path(name: str, path: Union[str, os.PathLike], suffixes=None, overwrite: bool = False) -> Path:
    r"""An output file path that can be written: an accepted extension (`suffixes`, default: any), a parent that is a
    folder or can be created (not a file), and no existing file unless `overwrite` (an existing folder is refused
    always). Called before any heavy work; the write itself goes through [`write_file_atomically`]."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"`{name}` {str(path)!r} must end with one of {sorted(suffixes)}")
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"`{name}` {str(path)!r}: {str(parent)!r} is a file, not a folder")
            break
    if path.is_dir():
        raise ValueError(f"`{name}` {str(path)!r} is a folder")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    return path


def write_file_atomically(path: Union[str, os.PathLike], data: bytes, overwrite: bool = False) -> Path:
    r"""Write `data` to `path` through a temporary file in the same folder, then move it into place in one step:
    `os.replace` with `overwrite`, otherwise an exclusive `os.link` that fails if the file appeared meanwhile (a file
    created by someone else after the up-front check is never replaced). A reader never sees a partial file."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        if overwrite:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise FileExistsError(
                    f"{path} already exists (created while this command ran); nothing was "
                    "replaced, pass --overwrite to replace it"
                ) from None
            except OSError:  # file systems without hard links: exclusive create, then copy
                with open(path, "xb") as f:
                    f.write(data)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def image_bytes(image, path: Union[str, os.PathLike]) -> bytes:
    """Encode a PIL image in the format of `path`'s extension."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=IMAGE_SUFFIXES.get(Path(path).suffix.lower(), "PNG"))
    return buffer.getvalue()


def check_safetensors_file(path: Union[str, os.PathLike]) -> None:
    """Read the header of a `.safetensors` file (cheap); a truncated or foreign file raises a `ValueError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            size = os.path.getsize(path)
            for key in keys[-1:]:  # the data of the last tensor must lie inside the file
                f.get_slice(key)
    except Exception as error:  # noqa: BLE001 (safetensors raises its own error types)
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {' '.join(str(error).split())[:200]}"
        ) from None
    if size < 8:
        raise ValueError(f"{path} is not a readable safetensors file (truncated)")


def check_component_folder(folder: Union[str, os.PathLike], name: str) -> None:
    r"""Cheap checks of a saved component before diffusers/transformers load it: it exists, its JSON files parse and
    its safetensors files have a readable header; errors name the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"component `{name}` is listed in model_index.json but its folder {folder} is missing")
    for path in sorted(folder.glob("*.json")):
        read_json_file(path)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(path)


def hub_error_message(repo_id: str, error: BaseException) -> str:
    """One explanation of why a Hub repo could not be fetched, and what to try."""
    kind = type(error).__name__
    if kind == "RepositoryNotFoundError":
        reason = "no such repo, or it is private (pass `token=` / log in with `huggingface-cli login`)"
    elif kind == "RevisionNotFoundError":
        reason = "the `revision` does not exist in this repo"
    elif kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        reason = (
            "it is not in the local cache and the Hub cannot be reached (offline: download it once with "
            "network access, or pass a local folder)"
        )
    else:
        reason = " ".join(str(error).split())[:200] or kind
    return f"could not load {repo_id!r} from the Hugging Face Hub: {reason}. If it is meant as a local folder, check the path"


def read_metadata_rows(path: Union[str, os.PathLike], need_caption: bool = False):
    r"""Yield the rows of a `metadata.jsonl` (imagefolder captions) one by one, each checked: valid JSON, an object
    with a `file_name` (and, with `need_caption`, a `text` or `spec`). Errors name the file and the line."""
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: invalid JSON ({error.msg})") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise ValueError(f"{path}, line {number}: every row must be an object with a `file_name`")
            if need_caption and not (row.get("text") or row.get("spec")):
                raise ValueError(f"{path}, line {number}: every row needs `file_name` and `text` (or `spec`)")
            yield row
