"""The plumbing the training scripts share (`diffusers_bit.training.script_utils`): flags and their checks, checkpoint
hooks, the epoch's data loader, skipped-record bookkeeping, model-card hyperparameters."""

import argparse
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffusers_bit.training import BatchDataset, MapSource, SkipSample, SkipStats, loop, script_utils


def parse(argv=()):
    parser = argparse.ArgumentParser()
    for name, default in (("--output_dir", "out"), ("--max_train_steps", None), ("--max_train_samples", None)):
        parser.add_argument(name, type=int if name != "--output_dir" else str, default=default)
    for name in ("--train_batch_size", "--num_train_epochs", "--validation_steps", "--resolution"):
        parser.add_argument(name, type=int, default=1)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--streaming", action="store_true")
    script_utils.add_optimization_args(parser, lr_scheduler_help="schedule help")
    script_utils.add_ema_args(parser, use_ema_help="ema help")
    script_utils.add_mixed_precision_args(parser)
    script_utils.add_logging_args(parser, tracker_project_name="my_script")
    script_utils.add_checkpointing_args(parser)
    script_utils.add_hub_args(parser)
    return parser, parser.parse_args(list(argv))


def test_shared_flags_defaults_and_checks():
    parser, args = parse()
    defaults = {
        "learning_rate": 1e-4,
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 1000,
        "max_grad_norm": 1.0,
        "ema_decay": 0.9999,
        "tracker_project_name": "my_script",
        "report_to": "tensorboard",
        "checkpointing_steps": 500,
        "resume_from_checkpoint": None,
        "mixed_precision": None,
    }
    assert {name: getattr(args, name) for name in defaults} == defaults
    help_text = parser.format_help()
    assert "schedule help" in help_text and "ema help" in help_text
    script_utils.check_common_args(args)
    for argv, message in (
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be >= 1, got 0"),
        (["--lr_warmup_steps", "-1"], "--lr_warmup_steps must be >= 0, got -1"),
        (["--streaming"], "--streaming needs --max_train_steps"),
    ):
        with pytest.raises(ValueError, match=message):
            script_utils.check_common_args(parse(argv)[1])
    with pytest.raises(ValueError, match="--max_grad_norm must be >= 0"):
        script_utils.check_common_args(parse(["--max_grad_norm", "-1"])[1], non_negative=("max_grad_norm",))
    args = parse(["--push_to_hub"])[1]
    script_utils.check_common_args(args)
    assert args.hub_model_id == "out"


def test_common_hyperparameters_keep_the_card_order():
    args = parse(["--use_ema"])[1]
    table = script_utils.common_hyperparameters(args, SimpleNamespace(num_processes=2, mixed_precision="bf16"), 32)
    assert list(table) == [
        "learning_rate",
        "lr_scheduler",
        "lr_warmup_steps",
        "optimizer",
        "max_grad_norm",
        "train_batch_size (per device)",
        "processes",
        "gradient_accumulation_steps",
        "total batch size",
        "mixed_precision",
        "gradient_checkpointing",
        "EMA",
    ]
    assert table["EMA"] == "decay 0.9999" and table["total batch size"] == 32 and table["processes"] == 2


class _Folder(torch.nn.Linear):
    """A model saved as `<folder>/weights.pt` (the interface the hooks use: `save_pretrained` / `from_pretrained`)."""

    def __init__(self):
        super().__init__(2, 2)

    def save_pretrained(self, folder):
        Path(folder).mkdir(parents=True)
        torch.save(self.state_dict(), Path(folder) / "weights.pt")

    @classmethod
    def from_pretrained(cls, folder):
        model = cls()
        model.load_state_dict(torch.load(Path(folder) / "weights.pt"))
        return model


class _Critic(_Folder):
    pass


def test_checkpoint_hooks_store_each_model_in_its_subfolder(tmp_path):
    hooks = {}
    accelerator = SimpleNamespace(
        is_main_process=True,
        device=torch.device("cpu"),
        unwrap_model=lambda m: m,
        register_save_state_pre_hook=lambda f: hooks.setdefault("save", f),
        register_load_state_pre_hook=lambda f: hooks.setdefault("load", f),
    )
    model, critic = _Folder(), _Critic()  # a _Critic is a _Folder too: the first matching subfolder wins
    script_utils.register_checkpoint_hooks(accelerator, {"critic": _Critic, "model": _Folder})
    weights = [{}, {}]
    hooks["save"]([model, critic], weights, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["critic", "model"] and weights == []
    saved = {name: torch.load(tmp_path / name / "weights.pt") for name in ("critic", "model")}
    fresh_model, fresh_critic = _Folder(), _Critic()
    hooks["load"]([fresh_model, fresh_critic], str(tmp_path))
    assert torch.equal(fresh_model.weight, model.weight) and torch.equal(fresh_critic.weight, critic.weight)
    assert torch.equal(saved["model"]["weight"], model.weight) and torch.equal(saved["critic"]["weight"], critic.weight)
    with pytest.raises(ValueError, match="ema_subfolder"):
        script_utils.register_checkpoint_hooks(accelerator, {"model": _Folder}, ema_model=object())


class _Records(MapSource):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return {"index": index, "__key__": f"record-{index}"}


def _process(record, rng=None):
    if record["index"] % 4 == 3:
        raise SkipSample("corrupt", "unreadable")
    return {"x": torch.tensor([record["index"]])}


@pytest.fixture
def partial_state():
    from accelerate.state import PartialState

    PartialState()  # accelerate's loggers need it
    yield
    PartialState._reset_state()


def test_dataloader_leaves_the_global_rng_alone_and_skips_are_counted(partial_state, caplog):
    dataset = BatchDataset(_Records(), _process, lambda s: torch.cat([x["x"] for x in s]), 2, seed=3, epoch=1)
    state = torch.get_rng_state()
    items = list(loop.make_dataloader(dataset, num_workers=0))
    assert torch.equal(torch.get_rng_state(), state)  # a resumed run's global RNG matches an uninterrupted one's
    stats, logged = SkipStats(), 0
    with caplog.at_level(logging.WARNING):
        for item in items:
            logged = loop.log_skipped(item, stats, logged)
    assert stats.counts == {"corrupt": 2} and logged == 2
    assert caplog.text.count("skipped record-") == 2 and "corrupt (unreadable)" in caplog.text
    stats, logged = SkipStats(), loop.MAX_LOGGED_SKIPS  # past the limit: counted, not logged
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for item in items:
            logged = loop.log_skipped(item, stats, logged)
    assert stats.total == 2 and "skipped record-" not in caplog.text
