# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The one resumable training loop of the training scripts.

A script builds its models, optimizers and data, then hands the loop

- `make_dataset(epoch, start_index)`: the [`BatchDataset`] of an epoch, from a batch index on;
- a `train_step(batch, step)` function: one micro-batch, run inside `accelerator.accumulate(*models)`; it does the
  forward pass, the backward pass and its optimizers' steps (see [`optimizer_update`]) and returns the metrics of
  the micro-batch; `step` ([`MicroBatch`]) carries what it needs to draw its random numbers resume-exactly;
- optionally a `validate(step)` function, called with the EMA weights swapped in.

The loop owns everything else: the training state (steps, epoch, position in the epoch, images seen, skipped
records, running means, train time) and its checkpoint/resume (bit-exact: the data order and every random draw are
functions of the seed, epoch and batch index), gradient accumulation, the EMA step, gathering and logging metrics,
the progress bar, checkpoints every `checkpointing_steps`, validation every `validation_steps`, and the end of the
run. `benchmarks/training.py` times the same step functions the scripts call.
"""

import contextlib
import logging
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from PIL import Image
from tqdm.auto import tqdm

from .checkpointing import load_checkpoint, maybe_inject_fault, save_checkpoint
from .data import SKIP_REASONS, BatchDataset, SkipStats, derive_seed, identity_collate, synchronized_items

logger = get_logger(__name__)

MAX_LOGGED_SKIPS = 20  # skipped records logged one by one per run (all of them are counted)
HISTORY_LENGTH = 20_000  # optimizer steps of a run kept in `TrainingLoop.history` (tests, notebooks)


class RunningMean:
    """Exponential moving average of a scalar (`decay=0` gives the last value); `value` is `nan` before any update."""

    def __init__(self, decay: float = 0.9, value: float = float("nan"), count: int = 0):
        self.decay, self.value, self.count = decay, value, count

    def update(self, x: float) -> float:
        self.value = x if self.count == 0 else self.decay * self.value + (1 - self.decay) * x
        self.count += 1
        return self.value

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict) -> "RunningMean":
        return cls(state["decay"], state["value"], state["count"])


@dataclass
class MicroBatch:
    r"""What a `train_step` gets besides the batch: the batch's place in the data (`epoch`, `index`), the run's
    `seed`, the `global_step` about to be made and the accelerator. [`rng_seed`] derives the seed of one random stream
    of this micro-batch, identical in a resumed run."""

    epoch: int
    index: int
    seed: int
    global_step: int
    accelerator: Accelerator
    info: dict = field(default_factory=dict)  # plain values the step adds to the optimizer step's log (last wins)
    history_info: dict = field(default_factory=dict)  # ... and to `TrainingLoop.history` only

    def rng_seed(self, stream: int) -> int:
        return derive_seed(self.seed, self.accelerator.process_index, self.epoch, self.index, stream)

    def torch_generator(self, stream: int) -> torch.Generator:
        return torch.Generator(device=self.accelerator.device).manual_seed(self.rng_seed(stream))

    def numpy_rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng(self.rng_seed(stream))


def optimizer_update(
    loss: torch.Tensor,
    parameters: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler=None,
    max_grad_norm: float = 0.0,
    accelerator: Optional[Accelerator] = None,
) -> None:
    r"""Backward pass, gradient clipping (when `max_grad_norm > 0`, on the step that syncs gradients), optimizer and
    learning-rate steps, gradients cleared. With an `accelerator` (the training scripts) its `backward`,
    `clip_grad_norm_` and accumulation rules apply; without one (the benchmark) plain torch calls do the same."""
    if accelerator is not None:
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(parameters, max_grad_norm)
    else:
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def make_dataloader(dataset: BatchDataset, num_workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    r"""The `DataLoader` of one epoch of a [`BatchDataset`] (`batch_size=None`: the dataset yields whole items).

    It has its own generator, seeded from the dataset's `(seed, process_index, epoch, start_index)`: creating its
    iterator draws nothing from the global torch RNG, whose state checkpoints restore, so a resumed run's global RNG
    matches an uninterrupted run's."""
    generator = torch.Generator().manual_seed(
        derive_seed(dataset.seed, dataset.process_index, dataset.epoch, dataset.start_index)
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=identity_collate,
        pin_memory=pin_memory,
        generator=generator,
    )


def log_skipped(item: dict, skip_stats: SkipStats, num_logged: int) -> int:
    r"""Count the records a [`BatchDataset`] item skipped into `skip_stats` and log each (on every process) until
    `MAX_LOGGED_SKIPS` have been logged. Returns the new number of skipped records seen (pass it back next time)."""
    if item["skipped"]:
        for reason, count in item["skipped"].items():
            skip_stats.counts[reason] += count
        for reason, key, detail in item["skip_examples"]:
            if num_logged < MAX_LOGGED_SKIPS:
                logger.warning(f"skipped {key}: {reason} ({detail})", main_process_only=False)
            num_logged += 1
    return num_logged


def reduce_skip_stats(accelerator: Accelerator, skip_stats: SkipStats) -> SkipStats:
    r"""The skipped-record counts summed over all processes (call on every process); logs the total."""
    counts = torch.tensor([float(skip_stats.counts.get(r, 0)) for r in SKIP_REASONS], device=accelerator.device)
    counts = accelerator.reduce(counts, reduction="sum") if accelerator.num_processes > 1 else counts
    total = SkipStats()
    total.counts.update({r: int(c) for r, c in zip(SKIP_REASONS, counts.tolist()) if c})
    logger.info(f"Skipped {total.total} unusable records in total ({total.summary()})")
    return total


def log_image_grid(accelerator, tag: str, grid: Image.Image, step: int, caption: str = "") -> None:
    """Send an image to every tracker that takes images (tensorboard: an image summary; wandb: `wandb.Image`)."""
    array = np.asarray(grid.convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: array[None]}, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(grid, caption=caption)]}, step=step)


class TrainingLoop:
    r"""The training state and loop of one run (see the module docstring).

    Args:
        accelerator (`Accelerator`): The run's accelerator.
        output_dir (`Path`): Where checkpoints go.
        args (`argparse.Namespace`): The script's flags; read: `max_train_steps`, `checkpointing_steps`,
            `checkpoints_total_limit`, `validation_steps`, `dataloader_num_workers`, `streaming`,
            `train_batch_size`, `gradient_accumulation_steps`.
        seed (`int`): The run's seed (from [`prepare_run`]).
        make_dataset (`Callable[[int, int], BatchDataset]`): The dataset of an epoch from a batch index.
        models (`Sequence[torch.nn.Module]`): The prepared models `accelerator.accumulate` wraps.
        ema_model (`EMAModel`, *optional*) and ema_target (`torch.nn.Module`): The EMA and the (unwrapped) model it
            tracks; the EMA steps after every optimizer step and is swapped in for validation. When only part of the
            model trains (a LoRA adapter), `ema_target` is any object whose `parameters()` yields that part (e.g.
            [`~diffusers_bit.training.lora.TrainableParameters`]).
        lr_scheduler: Its last learning rate is logged as `lr`.
        meters (`dict[str, str]`): Running means kept in the checkpoint: state key -> logged metric, e.g.
            `{"loss_ema": "train_loss"}`; a meter whose metric is absent from a step is not updated.
        loss_key (`str`): The logged metric that must stay finite (the run stops with an error otherwise).
        progress (`Callable[[dict], dict]`): The progress bar's postfix from a step's logs.
        extra_state (`dict`): Script counters saved in checkpoints (defaults for a fresh run); the script reads and
            updates them in `loop.state`.
        data_hint (`str`): What to check when an epoch produced no step (named in the error).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        output_dir: Path,
        args,
        seed: int,
        make_dataset: Callable[[int, int], BatchDataset],
        models: Sequence[torch.nn.Module],
        ema_model=None,
        ema_target: Optional[torch.nn.Module] = None,
        lr_scheduler=None,
        meters: Optional[dict] = None,
        loss_key: str = "loss",
        progress: Optional[Callable[[dict], dict]] = None,
        extra_state: Optional[dict] = None,
        data_hint: str = "check the data",
    ):
        self.accelerator, self.output_dir, self.args, self.seed = accelerator, Path(output_dir), args, seed
        self.make_dataset, self.models = make_dataset, tuple(models)
        self.ema_model, self.ema_target, self.lr_scheduler = ema_model, ema_target, lr_scheduler
        self.meter_sources = dict(meters or {})
        self.loss_key, self.progress, self.data_hint = loss_key, progress, data_hint
        self.state = {
            "global_step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "seed": seed,
            "images_seen": 0,
            "skipped": {},
            **{name: RunningMean().state_dict() for name in self.meter_sources},
            "train_time": 0.0,
            "num_processes": accelerator.num_processes,
            "num_workers": args.dataloader_num_workers,
            **(extra_state or {}),
        }
        self.total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        self.history = deque(maxlen=HISTORY_LENGTH)  # one dict per optimizer step of this run: {"step", **logs}
        self.validation_metrics: dict = {}
        self._restore()

    # -- state -----------------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        self.global_step, self.epoch = self.state["global_step"], self.state["epoch"]
        self.start_index = self.state["batch_in_epoch"]
        self.meters = {name: RunningMean.from_state_dict(self.state[name]) for name in self.meter_sources}
        self.skip_stats = SkipStats()
        self.skip_stats.counts.update(self.state["skipped"])
        self.first_step = self.global_step

    def resume(self, path: Optional[Path]) -> dict:
        r"""Load the checkpoint at `path` (models, optimizers, RNG states and the training state) when it is not
        `None`; warns when the number of processes (or, streaming, of dataloader workers) changed. Returns the state."""
        if path is None:
            return self.state
        logger.info(f"Resuming from checkpoint {path}")
        self.state.update(load_checkpoint(self.accelerator, path))
        workers = self.args.dataloader_num_workers
        workers_changed = self.args.streaming and self.state["num_workers"] != workers
        if self.state["num_processes"] != self.accelerator.num_processes or workers_changed:
            logger.warning(
                "the checkpoint was written with a different number of processes/workers: the data order "
                "will differ from an uninterrupted run"
            )
        self.state["num_processes"], self.state["num_workers"] = self.accelerator.num_processes, workers
        self._restore()
        return self.state

    def current_state(self) -> dict:
        """The training state as a checkpoint stores it."""
        return {
            **self.state,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.start_index,
            "skipped": dict(self.skip_stats.counts),
            **{n: m.state_dict() for n, m in self.meters.items()},
            "train_time": self.train_time,
        }

    @property
    def train_time(self) -> float:
        """Seconds of training over all runs of this output folder."""
        return (
            self.state["train_time"] + time.time() - self._run_started
            if hasattr(self, "_run_started")
            else (self.state["train_time"])
        )

    @property
    def run_time(self) -> float:
        """Seconds of this run's loop."""
        return time.time() - self._run_started if hasattr(self, "_run_started") else 0.0

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA weights in the model for the duration (validation sees the weights that will be saved)."""
        if self.ema_model is None:
            yield
            return
        self.ema_model.store(self.ema_target.parameters())
        self.ema_model.copy_to(self.ema_target.parameters())
        try:
            yield
        finally:
            self.ema_model.restore(self.ema_target.parameters())

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self, train_step: Callable[[dict, MicroBatch], dict], validate: Optional[Callable[[int], Any]] = None):
        r"""Train until `max_train_steps` (from the restored step), then validate the final weights if the last step
        did not. `train_step(batch, micro_batch) -> {name: tensor or float}`: metrics averaged over the
        micro-batches of a step and over processes before they are logged."""
        args, accelerator = self.args, self.accelerator
        device = accelerator.device
        self._run_started = time.time()  # `train_time` counts from here on
        progress_bar = tqdm(
            range(args.max_train_steps),
            initial=self.global_step,
            desc="Steps",
            disable=not accelerator.is_local_main_process,
        )
        pending: dict[str, list] = {}
        logged_skips = 0
        while self.global_step < args.max_train_steps:
            dataset = self.make_dataset(self.epoch, self.start_index)
            loader = make_dataloader(dataset, args.dataloader_num_workers, pin_memory=device.type == "cuda")
            trained_batches = 0  # micro-batches trained in this epoch
            for item in synchronized_items(loader, accelerator):
                self.start_index = item["index"] + 1
                logged_skips = log_skipped(item, self.skip_stats, logged_skips)
                if item["skip"]:
                    continue
                micro = MicroBatch(self.epoch, item["index"], self.seed, self.global_step, accelerator)
                with accelerator.accumulate(*self.models):
                    metrics = train_step(item["batch"], micro)
                trained_batches += 1
                for name, value in metrics.items():
                    value = (
                        value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value), device=device)
                    )
                    pending.setdefault(name, []).append(value)
                if not accelerator.sync_gradients:
                    continue
                # == one optimizer step done ==
                self._step_done(pending, micro, progress_bar)
                pending = {}
                if args.validation_steps and self.global_step % args.validation_steps == 0:
                    self._validate(validate)
                if self.global_step >= args.max_train_steps:
                    break
            if self.global_step >= args.max_train_steps:
                break
            if trained_batches == 0 and dataset.start_index == 0:
                raise RuntimeError(
                    f"an epoch of the data produced no training step (skipped records: "
                    f"{self.skip_stats.summary()}); {self.data_hint}"
                )
            self.epoch, self.start_index = self.epoch + 1, 0
        if not args.validation_steps or self.global_step % args.validation_steps:
            self._validate(validate)  # the final weights, when the last step was not a validation step

    def _step_done(self, pending: dict, micro: MicroBatch, progress_bar) -> None:
        accelerator = self.accelerator
        if self.ema_model is not None:
            self.ema_model.step(self.ema_target.parameters())
        self.global_step += 1
        self.state["images_seen"] += self.total_batch_size
        names = sorted(pending)  # the same metrics on every process: one all-gather for all of them
        means = torch.stack([torch.stack(pending[name]).mean() for name in names])
        logs = dict(zip(names, accelerator.gather(means[None]).mean(dim=0).tolist()))
        if not math.isfinite(logs[self.loss_key]):
            raise RuntimeError(f"the loss is {logs[self.loss_key]} at step {self.global_step}; stopping")
        for name, source in self.meter_sources.items():
            if source in logs:
                self.meters[name].update(logs[source])
        logs.update(micro.info)
        if self.lr_scheduler is not None:
            logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        self.history.append({"step": self.global_step, **logs, **micro.history_info})
        accelerator.log(logs, step=self.global_step)
        progress_bar.update(1)
        if self.progress is not None:
            progress_bar.set_postfix(**self.progress(logs))
        if self.skip_stats.total:
            accelerator.log(
                {f"skipped/{r}": self.skip_stats.counts.get(r, 0) for r in SKIP_REASONS}, step=self.global_step
            )
        maybe_inject_fault("step", self.global_step)
        if self.global_step % self.args.checkpointing_steps == 0:
            save_checkpoint(
                accelerator, self.output_dir, self.global_step, self.current_state(), self.args.checkpoints_total_limit
            )

    def _validate(self, validate) -> None:
        if validate is None or not self.accelerator.is_main_process:
            return
        with self.ema_weights():
            metrics = validate(self.global_step)
        if isinstance(metrics, dict):
            self.validation_metrics = metrics

    # -- the end ---------------------------------------------------------------------------------------------------
    def finish(self) -> SkipStats:
        r"""After `run`, on every process: the skipped records summed over processes; waits for every process."""
        total = reduce_skip_stats(self.accelerator, self.skip_stats)
        self.state["train_time"], self.run_seconds = self.train_time, self.run_time
        del self._run_started
        self.accelerator.wait_for_everyone()
        return total

    def final_weights(self, model: torch.nn.Module) -> torch.nn.Module:
        """The unwrapped trained model with the EMA weights copied in (when there is an EMA)."""
        model = self.accelerator.unwrap_model(model)
        if self.ema_model is not None:  # an `ema_target` that is not a module tracks part of the model (an adapter)
            tracked = (
                model if isinstance(self.ema_target, torch.nn.Module) or self.ema_target is None else self.ema_target
            )
            self.ema_model.copy_to(tracked.parameters())
        return model

    def card_metrics(self, total_skips: SkipStats, meters: dict) -> dict:
        """The model card's metrics every script reports: `meters` (label -> meter name) then images seen,
        throughput and skipped records."""
        metrics = {label: f"{self.meters[name].value:.4f}" for label, name in meters.items()}
        metrics.update(
            {
                "images seen": self.state["images_seen"],
                "throughput (images/s, this run)": f"{self.state['images_seen'] / max(self.state['train_time'], 1e-9):.1f}",
                "skipped records": total_skips.summary(),
            }
        )
        return metrics


def end_run(accelerator: Accelerator) -> None:
    r"""Close the trackers and end the run.

    A multi-process run waits for every rank, then leaves with `os._exit(0)` instead of tearing its process group down:
    with torch's gloo backend the teardown can deadlock (the main thread, holding the GIL, destroys the process group
    and joins a gloo worker thread that is waiting for the GIL to release a tensor of the last collective). That hung
    about one 2-process CPU run in ten here. Everything the run writes is closed before this is called, so skipping
    the interpreter's teardown loses nothing. Single-process runs return normally.
    """
    if accelerator.num_processes == 1:
        accelerator.end_training()
        return
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
