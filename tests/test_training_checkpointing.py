"""Atomic checkpoints: what counts as `latest`, pruning, temp folders left by a crash."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from diffusers_bit.training import (
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    remove_stale_temp_dirs,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from diffusers_bit.training.checkpointing import COMPLETE_MARKER, FAULT_ENV, atomic_write_json, checkpoint_step


class FakeAccelerator:
    """The slice of `accelerate.Accelerator` that `save_checkpoint` uses, for one process."""

    is_main_process = True
    process_index = 0
    num_processes = 1

    def __init__(self):
        self.saved = []

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model.bin"), "wb") as f:
            f.write(b"weights")
        self.saved.append(folder)


def _complete(path, step):
    path.mkdir(parents=True)
    (path / COMPLETE_MARKER).write_text(json.dumps({"step": step}))


def test_latest_ignores_incomplete_and_temp_folders(tmp_path):
    _complete(tmp_path / "checkpoint-10", 10)
    _complete(tmp_path / "checkpoint-20", 20)
    (tmp_path / "checkpoint-30").mkdir()  # no completion marker: e.g. written by something else, or half copied
    (tmp_path / "checkpoint-30" / "model.bin").write_bytes(b"x")
    _complete(tmp_path / ".tmp-checkpoint-40", 40)  # a save killed before its rename
    (tmp_path / "checkpoint-abc").mkdir()
    (tmp_path / "checkpoint-50").write_text("a file, not a folder")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10, 20]
    assert latest_checkpoint(tmp_path).name == "checkpoint-20"
    assert resolve_resume_checkpoint(tmp_path, "latest").name == "checkpoint-20"
    assert resolve_resume_checkpoint(tmp_path, "checkpoint-10").name == "checkpoint-10"
    assert resolve_resume_checkpoint(tmp_path, None) is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume_checkpoint(tmp_path, "checkpoint-30")
    assert resolve_resume_checkpoint(tmp_path / "empty", "latest") is None
    assert checkpoint_step(tmp_path / "checkpoint-20") == 20
    removed = remove_stale_temp_dirs(tmp_path)
    assert [p.name for p in removed] == [".tmp-checkpoint-40"]
    assert (tmp_path / "checkpoint-30").exists()  # not ours: left alone


def test_save_is_atomic_and_prunes_after_success(tmp_path):
    accelerator = FakeAccelerator()
    for step in (1, 2, 3):
        path = save_checkpoint(accelerator, tmp_path, step, {"global_step": step}, total_limit=2)
        assert path.name == f"checkpoint-{step}"
        assert json.loads((path / "training_state_0.json").read_text()) == {"global_step": step}
        assert json.loads((path / COMPLETE_MARKER).read_text())["step"] == step
    assert accelerator.saved[-1].endswith(".tmp-checkpoint-3")  # written under the temp name first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    # saving the same step again (after a resume) replaces it
    save_checkpoint(accelerator, tmp_path, 3, {"global_step": 3, "again": True}, total_limit=2)
    assert json.loads((tmp_path / "checkpoint-3" / "training_state_0.json").read_text())["again"] is True
    assert prune_checkpoints(tmp_path, 1)[0].name == "checkpoint-2"
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["checkpoint-3"]


def test_kill_during_save_leaves_previous_latest(tmp_path):
    """SIGKILL while checkpoint 2 is half written (files there, marker and rename not yet done)."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_training_checkpointing import FakeAccelerator
        from diffusers_bit.training import save_checkpoint
        accelerator = FakeAccelerator()
        save_checkpoint(accelerator, {str(tmp_path)!r}, 1, {{"global_step": 1}})
        save_checkpoint(accelerator, {str(tmp_path)!r}, 2, {{"global_step": 2}})
        print("not reached")
        """
    )
    env = {**os.environ, FAULT_ENV: "save:2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr  # killed by SIGKILL
    assert "not reached" not in result.stdout
    assert (tmp_path / ".tmp-checkpoint-2" / "model.bin").exists()
    assert latest_checkpoint(tmp_path).name == "checkpoint-1"


def test_atomic_write_json_replaces(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
