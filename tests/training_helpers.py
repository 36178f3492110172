"""Helpers of the training tests: tiny image data sets drawn with PIL, in every supported layout, and the plumbing of
the tests that run the scripts in `training_scripts/` (in this process or launched as subprocesses)."""

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from diffusers_bit.training.checkpointing import FAULT_ENV

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "training_scripts"
CONFIGS = SCRIPTS / "accelerate_configs"
COLORS = ["red", "blue", "green", "orange", "purple", "cyan"]


def shape_image(index: int, size=(96, 80)) -> Image.Image:
    """A deterministic picture: a coloured disc (index picks the colour) on a white background, `size = (w, h)`."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 6, h // 6, w - w // 6, h - h // 6), fill=COLORS[index % len(COLORS)])
    if index >= len(COLORS):
        draw.rectangle((0, 0, w // 3, h // 3), fill="black")
    return image


def caption(index: int) -> str:
    return f"a {COLORS[index % len(COLORS)]} disc" + (" with a black square" if index >= len(COLORS) else "")


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg(index: int = 0) -> bytes:
    data = encode(shape_image(index, (120, 100)))
    return data[: len(data) // 2]


def make_imagefolder(root: Path, num_images: int = 4, corrupt: bool = False, size=(96, 80)) -> Path:
    """`root/` with PNG images and `metadata.jsonl` (`file_name`, `text`). With `corrupt`: also a truncated JPEG, a
    text file named `.jpg`, and an image whose shorter edge (20 px) is below half of 64 px."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_images):
        shape_image(i, size).save(root / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", "text": caption(i)})
    if corrupt:
        (root / "truncated.jpg").write_bytes(truncated_jpeg())
        (root / "not_an_image.jpg").write_bytes(b"this is not an image at all\n" * 10)
        shape_image(1, (20, 90)).save(root / "too_small.png")
        rows += [
            {"file_name": "truncated.jpg", "text": "broken"},
            {"file_name": "not_an_image.jpg", "text": "text"},
            {"file_name": "too_small.png", "text": "tiny"},
        ]
    with open(root / "metadata.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return root


def make_webdataset(root: Path, shards: int = 2, per_shard: int = 3, truncate_last: bool = False) -> Path:
    """`root/shard-XXXX.tar` with `KEY.jpg` + `KEY.txt` (even keys) or `KEY.json` {"caption": ...} (odd keys)."""
    root.mkdir(parents=True, exist_ok=True)
    index = 0
    for s in range(shards):
        path = root / f"shard-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(per_shard):
                members = {f"{index:06d}.jpg": encode(shape_image(index))}
                if index % 2 == 0:
                    members[f"{index:06d}.txt"] = caption(index).encode()
                else:
                    members[f"{index:06d}.json"] = json.dumps({"caption": caption(index)}).encode()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index += 1
        if truncate_last and s == shards - 1:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * 0.6)])
    return root


# ----------------------------------------------------------------------------------------------------------------------
# Running the training scripts
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_thread():
    """Autouse where imported: tiny models run fastest on one thread, which a busy second core does not slow down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_script(name: str) -> ModuleType:
    """`training_scripts/<name>.py` as a module (its `parse_args` / `main` are called in this process)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_in_process(script: ModuleType, argv) -> dict:
    """`script.main(script.parse_args(argv))` with accelerate's global state reset before and after."""
    reset_accelerate()
    try:
        return script.main(script.parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate()


def to_argv(flags: dict) -> list[str]:
    """`{"--flag": value}` -> argv: `None` leaves the flag out, `True` passes it alone, a list or tuple as several."""
    argv = []
    for key, value in flags.items():
        if value is None:
            continue
        if value is True:
            argv.append(key)
        elif isinstance(value, (list, tuple)):
            argv += [key, *value]
        else:
            argv += [key, value]
    return [str(a) for a in argv]


def subprocess_env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(FAULT_ENV, None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, argv, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """`python training_scripts/<script> argv` in a subprocess (`env`: extra environment, e.g. a fault to inject)."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *[str(a) for a in argv]],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )


def launch_two_cpu_processes(script: str, argv, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """`accelerate launch` of `training_scripts/<script>` with two CPU processes (gloo)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu_2proc.yaml"),
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        str(SCRIPTS / script),
        *[str(a) for a in argv],
    ]
    return subprocess.run(
        command, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout, cwd=str(REPO)
    )


# ----------------------------------------------------------------------------------------------------------------------
# What a run leaves behind
# ----------------------------------------------------------------------------------------------------------------------
def weights(folder) -> dict:
    files = sorted(Path(folder).glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return load_file(str(files[0]))


def changed(a, b, prefix: str = "") -> list[str]:
    """Names of the tensors (starting with `prefix`) that differ between the weights in folders `a` and `b`."""
    wa, wb = weights(a), weights(b)
    return [k for k in wa if k.startswith(prefix) and not torch.equal(wa[k], wb[k])]


def assert_same_weights(a, b, prefix: str = "") -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if k.startswith(prefix) and not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def optimizer_states_equal(a, b) -> bool:
    """Whether two `optimizer.bin` files of accelerate hold the same AdamW moments."""
    sa = torch.load(a, weights_only=True)["state"]
    sb = torch.load(b, weights_only=True)["state"]
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k][n], sb[k][n]) for k in sa for n in ("exp_avg", "exp_avg_sq")
    )


def tensorboard_tags(folder) -> dict[str, set]:
    """`{kind: tags}` (`"scalars"`, `"images"`, ...) of every tensorboard event file below `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for event_file in Path(folder).rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0})
        accumulator.Reload()
        for kind, names in accumulator.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, set()).update(names)
    return tags


def fake_hub(monkeypatch) -> dict:
    r"""Replace `huggingface_hub.create_repo` / `upload_folder` (the two functions the scripts call) by fakes; the
    returned dict receives `create_repo` (`(repo_id, kwargs)`) and `upload_folder` (`repo_id`, `all_files` in the
    folder, `uploaded` after the ignore patterns, the `readme` text)."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = {}

    def create_repo(repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return SimpleNamespace(repo_id=f"someone/{repo_id.split('/')[-1]}")

    def upload_folder(*, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kwargs):
        root = Path(folder_path)
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        calls["upload_folder"] = {
            "repo_id": repo_id,
            "all_files": files,
            "readme": (root / "README.md").read_text(),
            "uploaded": sorted(
                filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
            ),
        }
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    return calls


def assert_same_training_state(a, b, keys) -> dict:
    """Compare `keys` of process 0's `training_state_0.json` in checkpoint folders `a` and `b`; returns `a`'s state."""
    state_a = json.loads((Path(a) / "training_state_0.json").read_text())
    state_b = json.loads((Path(b) / "training_state_0.json").read_text())
    for key in keys:
        assert state_a[key] == state_b[key], key
    return state_a


def assert_same_random_states(a, b) -> None:
    """The global RNG states accelerate saves in checkpoint folders `a` and `b` (python, numpy, torch) and its
    gradient-accumulation step counter are the same."""
    import numpy as np

    rng_a = torch.load(Path(a) / "random_states_0.pkl", weights_only=False)
    rng_b = torch.load(Path(b) / "random_states_0.pkl", weights_only=False)
    assert rng_a["step"] == rng_b["step"] and rng_a["random_state"] == rng_b["random_state"]
    assert torch.equal(rng_a["torch_manual_seed"], rng_b["torch_manual_seed"])
    assert all(np.array_equal(x, y) for x, y in zip(rng_a["numpy_random_seed"], rng_b["numpy_random_seed"]))
