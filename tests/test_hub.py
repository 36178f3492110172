"""Hub resolution in one place (`diffusers_bit.utils.hub`): every snapshot goes through one `snapshot_download` call
with one ignore list and single small files through `resolve_file`; the pipelines, the training components and the
LPIPS loader all use them (Hub calls are faked: nothing is downloaded)."""

import ast
from pathlib import Path

import huggingface_hub
import pytest

import diffusers_bit
from diffusers_bit import InstellaT2IPipeline, build_pipeline
from diffusers_bit.metrics import LPIPS
from diffusers_bit.training.components import plan_components, resolve_pretrained
from diffusers_bit.utils import hub

PACKAGE = Path(diffusers_bit.__file__).resolve().parent
ROOT = PACKAGE.parents[1]


def test_only_utils_hub_calls_the_hub_download_functions():
    callers = set()
    for folder in (PACKAGE, ROOT / "training_scripts", ROOT / "benchmarks"):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                    if name in ("snapshot_download", "hf_hub_download"):
                        callers.add(path.relative_to(ROOT).as_posix())
    assert callers == {"src/diffusers_bit/utils/hub.py"}


@pytest.fixture
def fake_hub(monkeypatch):
    """`huggingface_hub.snapshot_download` / `hf_hub_download` answering from local folders; records every call."""
    repos, calls = {}, []

    def snapshot_download(repo_id, **kwargs):
        calls.append(("snapshot", repo_id, kwargs))
        return str(repos[repo_id])

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append(("file", repo_id, kwargs))
        path = repos[repo_id] / filename
        if not path.is_file():
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} is not in {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repos, calls


def test_pipelines_training_and_lpips_resolve_repos_through_one_call(fake_hub, tmp_path):
    repos, calls = fake_hub
    repos["acme/tiny"] = tmp_path / "tiny"
    build_pipeline("tiny", "diffusion", seed=0).save_pretrained(repos["acme/tiny"])
    repos["acme/lpips"] = tmp_path / "lpips"
    LPIPS.from_config({"channels": [4, 4, 4, 4, 4]}).save_pretrained(repos["acme/lpips"])

    assert isinstance(InstellaT2IPipeline.from_pretrained("acme/tiny"), InstellaT2IPipeline)
    plan = plan_components("diffusion", pretrained_model_name_or_path="acme/tiny")  # reads model_index.json alone
    assert resolve_pretrained(plan) == repos["acme/tiny"]
    assert LPIPS.from_pretrained("acme/lpips").config.channels == [4, 4, 4, 4, 4]

    kinds = [(kind, repo) for kind, repo, _ in calls]
    assert kinds == [
        ("snapshot", "acme/tiny"),
        ("file", "acme/tiny"),
        ("snapshot", "acme/tiny"),
        ("snapshot", "acme/lpips"),
    ]
    pipeline, _, training, lpips = [kwargs for _, _, kwargs in calls]
    for kwargs in (pipeline, training):
        assert kwargs["ignore_patterns"] == hub.SNAPSHOT_IGNORE_PATTERNS and kwargs["allow_patterns"] is None
    # LPIPS fetches its JSON and weight files only; the `*.pt` it names is not ignored, the rest of the list is
    assert lpips["allow_patterns"] == ["*.json", "*.pth", "*.pt", "*.bin", "*.safetensors"]
    assert lpips["ignore_patterns"] == [p for p in hub.SNAPSHOT_IGNORE_PATTERNS if p != "*.pt"]
    assert all(kwargs["local_files_only"] for _, _, kwargs in calls)  # HF_HUB_OFFLINE, read at call time


def test_missing_files_and_paths(fake_hub, tmp_path):
    repos, _ = fake_hub
    repos["acme/empty"] = tmp_path / "empty"
    repos["acme/empty"].mkdir()
    assert hub.resolve_file("acme/empty", "model_index.json") is None
    with pytest.raises(ValueError, match="has no model_index.json"):
        plan_components("diffusion", pretrained_model_name_or_path="acme/empty")
    with pytest.raises(FileNotFoundError, match=r"^'\./missing' does not exist \(no such folder\)"):
        hub.resolve_file("./missing", "config.json")
    with pytest.raises(FileNotFoundError, match=r"^`--flag` '\./missing' does not exist \(no such folder\)"):
        hub.resolve_snapshot("./missing", argument="--flag")
    with pytest.raises(ValueError, match="neither a local path nor a reachable Hub repository"):
        LPIPS.from_pretrained("./missing-lpips")
