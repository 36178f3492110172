# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Saved folders that load without diffusers-bit installed: diffusers' `trust_remote_code` route.

diffusers 0.42 loads third-party classes from `.py` files inside a saved folder ("Community components"):

- `model_index.json`: `"_class_name": ["diffusers_bit_pipeline", "InstellaT2IPipeline"]` with
  `diffusers_bit_pipeline.py` at the folder root, and every component of ours as `["diffusers_bit_model", "BinaryDiT"]`
  (or `diffusers_bit_scheduler`, `diffusers_bit_package`) with that file inside the component's folder. diffusers
  copies such a file, and the files it names in `from .<module> import` lines, into its module cache and imports it:
  `DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`.
- `AutoModel.from_pretrained(folder_or_repo, subfolder=..., trust_remote_code=True)` reads the `auto_map` of
  `model_index.json` (one entry for every component folder: each `diffusers_bit_model.py` names its class
  `DiffusersBitModel` too); a model folder saved alone has its `auto_map` in `config.json`.

The code is generated at save time from the installed package, one source of truth: every module the class needs
(its imports, followed through the package) is written as one flat file `dbit_<subpackage>_<module>.py`, its
relative imports rewritten to the flat names; nothing else changes. The entry files use the installed package when
there is one (so classes keep one identity and `isinstance` works) and the flat copy otherwise. Every file names the
package version it came from. Lazy imports of modules outside the copy (training, Hub publishing) stay absolute
`diffusers_bit` imports: those features need the package.
"""

import ast
import functools
import json
import os
from pathlib import Path
from typing import Iterable, Union

PIPELINE_ENTRY = "diffusers_bit_pipeline"
MODEL_ENTRY = "diffusers_bit_model"
SCHEDULER_ENTRY = "diffusers_bit_scheduler"
PACKAGE_ENTRY = "diffusers_bit_package"
ENTRY_MODULES = (PIPELINE_ENTRY, MODEL_ENTRY, SCHEDULER_ENTRY, PACKAGE_ENTRY)
AUTO_MODEL_ALIAS = "DiffusersBitModel"  # what model_index.json's auto_map names in every model component folder
FLAT_PREFIX = "dbit"
PACKAGE = "diffusers_bit"

# where each class of ours lives in the package
CLASS_MODULES = {
    "InstellaT2IPipeline": "diffusers_bit.pipelines.pipeline_instella_t2i",
    "InstellaARPipeline": "diffusers_bit.pipelines.pipeline_instella_ar",
    "InstellaT2IImg2ImgPipeline": "diffusers_bit.pipelines.pipeline_instella_img2img",
    "BinaryDiT": "diffusers_bit.models.transformer_bit_dit",
    "BinaryARTransformer": "diffusers_bit.models.transformer_bit_ar",
    "BinaryLatentTokenizer": "diffusers_bit.models.binary_latent_tokenizer",
    "BernoulliScheduler": "diffusers_bit.schedulers.scheduling_bernoulli",
    "PackagedComponent": "diffusers_bit.utils.package_models",
}


def flat_name(module: str) -> str:
    """`diffusers_bit.models.attention` -> `dbit_models_attention` (`diffusers_bit` -> `dbit`)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(f"{module!r} is not a diffusers_bit module")
    return "_".join([FLAT_PREFIX, *parts[1:]])


def _is_flat_mode() -> bool:
    """Whether this module runs from a flat copy in diffusers' module cache (diffusers-bit not installed)."""
    return not __name__.startswith(PACKAGE + ".")


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _module_path(module: str) -> Path:
    path = _package_root().joinpath(*module.split(".")[1:])
    return path / "__init__.py" if (path / "__init__.py").is_file() else path.with_suffix(".py")


def _is_module(module: str) -> bool:
    return module.split(".")[0] == PACKAGE and _module_path(module).is_file()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = _module_path(module).name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _package_imports(module: str, top_level_only: bool) -> list[tuple[ast.ImportFrom, str]]:
    tree = ast.parse(_module_path(module).read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise ValueError(f"{module}: `import {PACKAGE}...` statements are not supported by the remote-code export")
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] == PACKAGE:
                found.append((node, target))
    return found


def _targets(target: str, node: ast.ImportFrom) -> list[str]:
    """The package modules an import statement loads (its module, and names that are submodules)."""
    out = [target] if _is_module(target) else []
    out += [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
    return out


@functools.lru_cache(maxsize=None)
def _required_modules() -> frozenset:
    """Every module the classes of `CLASS_MODULES` import when they load (module-level imports, followed)."""
    return frozenset(_closure(tuple(CLASS_MODULES.values()), top_level_only=True, within=None))


def _closure(roots: Iterable[str], top_level_only: bool, within) -> list[str]:
    seen, todo = [], list(roots)
    while todo:
        module = todo.pop(0)
        if module in seen or (within is not None and module not in within):
            continue
        seen.append(module)
        for node, target in _package_imports(module, top_level_only):
            todo.extend(_targets(target, node))
    return seen


def modules_for(class_name: str) -> list[str]:
    """The package modules a class needs, lazy imports included as far as they stay inside the copied set."""
    return _closure([CLASS_MODULES[class_name]], top_level_only=False, within=_required_modules())


def _header(module: str, version: str) -> str:
    return (
        f"# Generated by diffusers-bit {version} from {module} for diffusers' trust_remote_code loading (the\n"
        f"# package need not be installed). Do not edit: save_pretrained writes it again from the package.\n"
    )


@functools.lru_cache(maxsize=None)
def flat_source(module: str, version: str) -> str:
    """The source of `module` with its package imports rewritten to the flat copies (or to absolute `diffusers_bit`
    imports for modules outside the copied set)."""
    lines = _module_path(module).read_text(encoding="utf-8").splitlines()
    copied = _required_modules()
    for node, target in sorted(_package_imports(module, False), key=lambda item: -item[0].lineno):
        statements, names = [], []
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if _is_module(sub):
                as_name = alias.asname or alias.name
                statements.append(
                    f"from . import {flat_name(sub)} as {as_name}" if sub in copied else f"import {sub} as {as_name}"
                )
            else:
                names.append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
        if names:
            source = f"from .{flat_name(target)}" if target in copied else f"from {target}"
            statements.insert(0, f"{source} import {', '.join(names)}")
        indent = " " * node.col_offset
        lines[node.lineno - 1 : node.end_lineno] = [indent + s for s in statements]
    text = "\n".join(lines) + "\n"
    if text.startswith("# Copyright"):
        text = text.split("\n", 1)[1]
    return _header(module, version) + text


def _entry_source(class_name: str, modules: list[str], version: str, alias: bool) -> str:
    module = CLASS_MODULES[class_name]
    lines = [
        f"# diffusers-bit {version}: entry file diffusers loads for {class_name} (trust_remote_code=True).",
        "# With diffusers-bit installed, its classes are used (one class identity); otherwise the copies next to this",
        "# file, generated from the same package version. Each copied module is named below because diffusers copies",
        "# only the files that this file imports.",
        "import importlib.util",
        "",
        f'if importlib.util.find_spec("{PACKAGE}") is not None:',
        f'    {class_name} = getattr(importlib.import_module("{module}"), "{class_name}")',
        "else:",
    ]
    lines += [f"    from .{flat_name(m)} import __name__ as _copied  # noqa: F401" for m in modules if m != module]
    lines += [f"    from .{flat_name(module)} import {class_name}", ""]
    if alias:
        lines += [f"{AUTO_MODEL_ALIAS} = {class_name}  # the class model_index.json's auto_map gives AutoModel", ""]
    lines += [f'__all__ = ["{class_name}"' + (f', "{AUTO_MODEL_ALIAS}"' if alias else "") + "]", ""]
    return "\n".join(lines)


def _version() -> str:
    from .. import __version__

    return __version__


def write_remote_code(folder: Union[str, os.PathLike], class_name: str, entry: str) -> list[Path]:
    r"""Write the entry file `entry.py` for `class_name` and the flat copies of the modules it needs into `folder`.
    Returns the written paths. Raises a `RuntimeError` when diffusers-bit runs from such a copy itself (re-saving
    there writes the weights and configs only: install diffusers-bit to write the code)."""
    if _is_flat_mode():
        raise RuntimeError(
            "diffusers-bit is not installed (this class was loaded from remote code): the saved folder "
            "gets weights and configs but no code; `pip install diffusers-bit` to write it"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    version = _version()
    modules = modules_for(class_name)
    written = []
    for module in modules:
        text = flat_source(module, version)
        path = folder / f"{flat_name(module)}.py"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    alias = entry == MODEL_ENTRY
    path = folder / f"{entry}.py"
    path.write_text(_entry_source(class_name, modules, version, alias), encoding="utf-8")
    return [path, *written]


def remove_remote_code(folder: Union[str, os.PathLike]) -> None:
    """Delete entry files and flat copies that an earlier save left in `folder` (so a re-save holds one version)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob("*.py"):
        if path.stem in ENTRY_MODULES or path.stem == FLAT_PREFIX or path.stem.startswith(FLAT_PREFIX + "_"):
            path.unlink()


def add_auto_map(config_path: Union[str, os.PathLike], class_ref: str) -> None:
    """Add `"auto_map": {"AutoModel": class_ref}` to a saved JSON config."""
    path = Path(config_path)
    config = json.loads(path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModel": class_ref}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def normalize_index(index: dict, folder: Union[str, os.PathLike]) -> dict:
    r"""A `model_index.json` dict as this package's own classes load it: remote-code entries (`["diffusers_bit_model",
    "BinaryDiT"]`, a list `_class_name`) become package module paths, so that no code from the folder runs when the
    installed classes load it; a referenced text component becomes the transformers class it holds."""
    index = dict(index)
    index.pop("auto_map", None)
    if isinstance(index.get("_class_name"), (list, tuple)):
        index["_class_name"] = index["_class_name"][1]
    for name, entry in list(index.items()):
        if name.startswith("_") or not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            continue
        library, class_name = entry
        if library not in ENTRY_MODULES:
            continue
        if class_name == "PackagedComponent":
            reference = Path(folder) / name / "reference.json"
            saved = json.loads(reference.read_text(encoding="utf-8")).get("class") if reference.is_file() else None
            index[name] = list(saved) if saved else [None, None]
        elif class_name in CLASS_MODULES:
            index[name] = [CLASS_MODULES[class_name], class_name]
    return index


class AutoMapConfigMixin:
    r"""Loading drops a config's `auto_map` key (bookkeeping for `AutoModel`, not a constructor argument): for the
    models, the scheduler and the pipelines (whose `model_index.json` carries it)."""

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)


def push_saved_folder(obj, save_directory: Union[str, os.PathLike], kwargs: dict) -> None:
    r"""`save_pretrained(push_to_hub=True)` done after the folder is complete: diffusers would upload inside its
    `save_pretrained`, before references and code are written. Pushes `obj` with the hub arguments in `kwargs`."""
    hub_kwargs = {k: kwargs[k] for k in ("token", "private", "create_pr", "commit_message") if k in kwargs}
    repo_id = kwargs.get("repo_id", str(save_directory).rstrip(os.sep).split(os.sep)[-1])
    obj.push_to_hub(repo_id, **hub_kwargs)


def _warn_saved_without_code(name: str) -> None:
    from diffusers.utils import logging

    logging.get_logger(__name__).warning(f"{name} saved without its remote code: diffusers-bit is not installed")


class RemoteCodeMixin(AutoMapConfigMixin):
    r"""For the models and the scheduler: `save_pretrained(..., remote_code=True)` also writes the entry file and the
    flat module copies (see the module docstring) and, for models, an `auto_map` in `config.json`."""

    _remote_code_entry: str = MODEL_ENTRY

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *args, remote_code: bool = True, **kwargs):
        r"""diffusers' `save_pretrained`; with `remote_code=True` (the default) the folder also loads where
        diffusers-bit is not installed: `AutoModel.from_pretrained(folder, trust_remote_code=True)` for models (and
        as a component of a pipeline saved the same way)."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        super().save_pretrained(save_directory, *args, **kwargs)
        remove_remote_code(save_directory)
        if remote_code:
            export_component(self, save_directory)
        if push_to_hub:
            push_saved_folder(self, save_directory, kwargs)


def export_component(component, folder: Union[str, os.PathLike]) -> bool:
    r"""Write the remote code of one saved model or scheduler into its folder (and a model's `auto_map`). Returns
    whether code was written: a class outside this package, or diffusers-bit running from a flat copy itself, writes
    none (with a warning in the latter case)."""
    name = type(component).__name__
    if name not in CLASS_MODULES:
        return False
    if _is_flat_mode():
        _warn_saved_without_code(name)
        return False
    entry = getattr(component, "_remote_code_entry", MODEL_ENTRY)
    write_remote_code(folder, name, entry)
    config = Path(folder) / "config.json"
    if entry == MODEL_ENTRY and config.is_file():
        add_auto_map(config, f"{MODEL_ENTRY}.{name}")
    return True


def _components(index: dict) -> list[str]:
    return [name for name, entry in index.items() if not name.startswith("_") and isinstance(entry, list)]


def export_pipeline(pipeline, folder: Union[str, os.PathLike]) -> bool:
    r"""After `save_pretrained`: write the pipeline's entry file and module copies at the folder root, the text
    components' loader where they are references, and rewrite `model_index.json` to the remote-code form (the model
    and scheduler folders got their code from their own `save_pretrained`). Returns whether code was written."""
    folder = Path(folder)
    name = type(pipeline).__name__
    if name not in CLASS_MODULES:
        return False
    if _is_flat_mode():
        _warn_saved_without_code(name)
        return False
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    write_remote_code(folder, name, PIPELINE_ENTRY)
    index["_class_name"] = [PIPELINE_ENTRY, name]
    for component in _components(index):
        value = getattr(pipeline, component, None)
        cls = type(value).__name__
        sub = folder / component
        if cls in CLASS_MODULES and type(value).__module__.startswith(PACKAGE + "."):
            entry = getattr(value, "_remote_code_entry", MODEL_ENTRY)
            if not (sub / f"{entry}.py").is_file():  # saved by a class without the mixin: write it here
                export_component(value, sub)
            index[component] = [entry, cls]
        elif (sub / "reference.json").is_file():
            reference = json.loads((sub / "reference.json").read_text(encoding="utf-8"))
            reference.update(kind=component, **{"class": [type(value).__module__.split(".")[0], cls]})
            (sub / "reference.json").write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
            write_remote_code(sub, "PackagedComponent", PACKAGE_ENTRY)
            index[component] = [PACKAGE_ENTRY, "PackagedComponent"]
    index["auto_map"] = {"AutoModel": f"{MODEL_ENTRY}.{AUTO_MODEL_ALIAS}"}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def strip_remote_code(folder: Union[str, os.PathLike]) -> None:
    """Remove every trace of remote code from a saved pipeline folder (its component folders included)."""
    folder = Path(folder)
    remove_remote_code(folder)
    for sub in folder.iterdir():
        if sub.is_dir():
            remove_remote_code(sub)
            config = sub / "config.json"
            if config.is_file():
                data = json.loads(config.read_text(encoding="utf-8"))
                if data.pop("auto_map", None) is not None:
                    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
