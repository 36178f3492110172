# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Crash-safe training checkpoints on top of `accelerator.save_state` / `load_state`.

- **Atomic**: a checkpoint is written to `<output_dir>/.tmp-checkpoint-<step>`, every file is flushed to disk, a
  completion marker (`checkpoint_complete.json`) is written last, and only then is the folder renamed to
  `checkpoint-<step>` (a rename is atomic on POSIX file systems). A run killed at any moment leaves either a complete
  `checkpoint-<step>` or a temp folder that is ignored (and removed at the next start).
- **latest** = the highest-step `checkpoint-<step>` that holds the completion marker; folders without it (whatever
  their name) are never picked.
- **Pruning** (`--checkpoints_total_limit`) happens *after* a new checkpoint is complete, oldest first, by renaming
  to `.trash-checkpoint-<step>` before deleting, so a crash never leaves fewer complete checkpoints than the limit.
- **Training state**: besides what accelerate saves (model through the save hooks, optimizer, LR scheduler, gradient
  scaler, python/numpy/torch RNG states, the gradient-accumulation step counter), every process stores a JSON
  `training_state_<process>.json` with the loop position (global step, epoch, batch within the epoch), the seed and
  counters, which is what makes a resumed run bit-identical to an uninterrupted one.

Multi-node runs need `output_dir` on a file system shared by all nodes (as accelerate itself assumes).
"""

import json
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Optional, Union

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-checkpoint-"
TRASH_PREFIX = ".trash-checkpoint-"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINING_STATE = "training_state_{}.json"
FAULT_ENV = "DIFFUSERS_BIT_FAULT"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def atomic_write_json(path: Union[str, os.PathLike], obj: Any) -> None:
    """Write JSON to `path` through a temp file + fsync + `os.replace` (readers see the old file or the new one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_complete_checkpoint(path: Union[str, os.PathLike]) -> bool:
    """Whether `path` is a `checkpoint-<step>` folder holding the completion marker."""
    path = Path(path)
    return path.is_dir() and _CHECKPOINT_RE.match(path.name) is not None and (path / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir: Union[str, os.PathLike]) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as `(step, path)`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(entry.name)
        if match and is_complete_checkpoint(entry):
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(output_dir: Union[str, os.PathLike]) -> Optional[Path]:
    """The complete checkpoint with the highest step, or `None`."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def resolve_resume_checkpoint(
    output_dir: Union[str, os.PathLike], resume_from_checkpoint: Optional[str]
) -> Optional[Path]:
    r"""The checkpoint `--resume_from_checkpoint` designates: `"latest"` -> [`latest_checkpoint`] (`None` when there
    is none: a fresh start), otherwise a path or a folder name inside `output_dir`, which must be complete."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / resume_from_checkpoint
    if not is_complete_checkpoint(path):
        raise ValueError(
            f"`--resume_from_checkpoint` {resume_from_checkpoint!r}: {str(path)!r} is not a complete checkpoint folder "
            f"(a `checkpoint-<step>` folder with {COMPLETE_MARKER}); complete ones: "
            f"{[p.name for _, p in list_checkpoints(output_dir)]}"
        )
    return path


def checkpoint_step(path: Union[str, os.PathLike]) -> int:
    """The step in a `checkpoint-<step>` folder name."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{str(path)!r} is not named checkpoint-<step>")
    return int(match.group(1))


def remove_stale_temp_dirs(output_dir: Union[str, os.PathLike]) -> list[Path]:
    """Delete temp and trash folders left by a killed run (main process only, before training starts)."""
    removed = []
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for entry in output_dir.iterdir():
            if entry.is_dir() and entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    if removed:
        logger.info("removed incomplete checkpoint folders left by an interrupted run: %s", [p.name for p in removed])
    return removed


def _discard(path: Path) -> None:
    trash = path.with_name(f"{TRASH_PREFIX}{path.name[len(CHECKPOINT_PREFIX) :]}-{time.time_ns()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(output_dir: Union[str, os.PathLike], total_limit: Optional[int]) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most `total_limit` remain; returns the deleted paths."""
    if not total_limit:
        return []
    checkpoints = list_checkpoints(output_dir)
    removing = [path for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for path in removing:
        _discard(path)
    if removing:
        logger.info(
            "removed old checkpoints (--checkpoints_total_limit=%d): %s", total_limit, [p.name for p in removing]
        )
    return removing


def save_checkpoint(
    accelerator,
    output_dir: Union[str, os.PathLike],
    step: int,
    training_state: dict,
    total_limit: Optional[int] = None,
) -> Path:
    r"""Save `accelerator.save_state` (which runs the registered save hooks) plus this process's `training_state`
    atomically as `<output_dir>/checkpoint-<step>`, then prune to `total_limit`. Call on every process.

    Returns:
        The checkpoint folder.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    temp = output_dir / f"{TEMP_PREFIX}{step}"
    if accelerator.is_main_process and temp.exists():
        shutil.rmtree(temp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    atomic_write_json(temp / TRAINING_STATE.format(accelerator.process_index), training_state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(temp)
        maybe_inject_fault("save", step)
        atomic_write_json(
            temp / COMPLETE_MARKER,
            {"step": step, "num_processes": accelerator.num_processes, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )
        _fsync_dir(temp)
        if final.exists():  # e.g. the same step saved again after a resume
            _discard(final)
        os.rename(temp, final)
        _fsync_dir(output_dir)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    logger.info("saved checkpoint %s", final)
    return final


def load_checkpoint(accelerator, path: Union[str, os.PathLike]) -> dict:
    r"""`accelerator.load_state(path)` (running the load hooks) and this process's training state."""
    path = Path(path)
    accelerator.load_state(str(path))
    state_path = path / TRAINING_STATE.format(accelerator.process_index)
    if not state_path.is_file():
        fallback = path / TRAINING_STATE.format(0)
        logger.warning(
            "%s not found (the checkpoint was written by a different number of processes); using %s, the "
            "data order will not match an uninterrupted run",
            state_path.name,
            fallback.name,
        )
        state_path = fallback
    return json.loads(state_path.read_text())


def maybe_inject_fault(event: str, step: int) -> None:
    r"""Fault injection for the reliability tests: with `DIFFUSERS_BIT_FAULT="<event>:<step>"` in the environment,
    the process SIGKILLs itself when `event` (`"step"`: after optimizer step `step`; `"save"`: while checkpoint
    `step` is half written) happens. Nothing else runs after the signal, exactly as with an external `kill -9`."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{event}:{step}":
        logger.warning("fault injection: SIGKILL at %s %d", event, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
