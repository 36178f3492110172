"""training_scripts/train_tokenizer.py on the tiny preset (CPU, offline, random LPIPS and DINO backbones built from
configs): the three stages, their flags, resume exactness, Hub upload."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from training_helpers import (  # noqa: F401 (one_thread: an autouse fixture)
    assert_same_random_states,
    assert_same_training_state,
    assert_same_weights,
    changed,
    fake_hub,
    launch_two_cpu_processes,
    load_script,
    make_imagefolder,
    make_webdataset,
    one_thread,
    optimizer_states_equal,
    run_in_process,
    run_script,
    shape_image,
    tensorboard_tags,
    to_argv,
    truncated_jpeg,
)

from diffusers_bit import BinaryLatentTokenizer
from diffusers_bit.training.checkpointing import FAULT_ENV, latest_checkpoint
from diffusers_bit.training.tokenizer_data import sample_decode_size

train_tokenizer = load_script("train_tokenizer")


def train(argv):
    return run_in_process(train_tokenizer, argv)


def tok_args(images, workdir, output_dir, **overrides):
    args = {
        "--stage": 1,
        "--preset": "tiny",
        "--train_data_dir": images,
        "--resolution": 64,
        "--output_dir": output_dir,
        "--train_batch_size": 4,
        "--max_train_steps": 4,
        "--seed": 0,
        "--report_to": "none",
        "--lr_warmup_steps": 0,
        "--learning_rate": 1e-3,
        "--checkpointing_steps": 1000,
        "--validation_steps": 1000,
        "--num_validation_images": 2,
        "--perceptual_model": "tiny",
        "--perceptual_size": 64,
        "--perceptual_crop": 32,
        "--cache_dir": workdir / "hf_cache",
    }
    return to_argv({**args, **overrides})


def stage3_overrides(start, **extra):
    return {
        "--stage": 3,
        "--preset": None,
        "--pretrained_model_name_or_path": start,
        "--discriminator_backbone": "tiny",
        "--discriminator_head_channels": 16,
        **extra,
    }


def series(results, name):
    return np.array([h[name] for h in results["history"]])


def loss_by_size(results, n=3):
    """{decode size: (mean of the first n, mean of the last n) reconstruction losses at that size}: losses differ in
    level between sizes and the size mix of any window of steps is random, so progress is measured per size."""
    rec, sizes = series(results, "reconstruction"), series(results, "decode_size")
    return {int(s): (rec[sizes == s][:n].mean(), rec[sizes == s][-n:].mean()) for s in sorted(set(sizes.tolist()))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer")


@pytest.fixture(scope="module")
def images(workdir):
    return make_imagefolder(workdir / "images", num_images=4, size=(160, 140))


@pytest.fixture(scope="module")
def stage1(images, workdir):
    out = workdir / "stage1"
    results = train(tok_args(images, workdir, out, **{"--max_train_steps": 40, "--learning_rate": 3e-3}))
    return out, results


@pytest.fixture(scope="module")
def stage2(images, workdir, stage1):
    out = workdir / "stage2"
    results = train(
        tok_args(
            images,
            workdir,
            out,
            **{
                "--stage": 2,
                "--preset": None,
                "--pretrained_model_name_or_path": stage1[0],
                "--max_train_steps": 40,
                "--learning_rate": 2e-3,
                "--lr_warmup_steps": 5,
            },
        )
    )
    return out, results


# ----------------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------------
def test_bad_flags_are_named_before_models_load(images, workdir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--stage": 4}))
    assert "--stage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--stage": None}))
    assert "--stage" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--dataset_name, --train_data_dir"):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--train_data_dir": None}))
    with pytest.raises(ValueError, match="exactly one of --preset"):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--pretrained_model_name_or_path": str(out)}))
    with pytest.raises(ValueError, match="--stage 3 .* --pretrained_model_name_or_path"):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--stage": 3}))
    with pytest.raises(ValueError, match="--perceptual_model is required"):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--perceptual_model": None}))
    with pytest.raises(ValueError, match="--discriminator_start_step only applies to --stage 3"):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--discriminator_start_step": 5}))
    with pytest.raises(ValueError, match="--max_train_steps"):
        train_tokenizer.parse_args(tok_args(images, workdir, out, **{"--streaming": True, "--max_train_steps": None}))
    assert train_tokenizer.parse_args(
        tok_args(images, workdir, out, **{"--perceptual_model": None, "--perceptual_weight": 0})
    )

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the flags were checked")

    for name in ("load_start_tokenizer", "load_perceptual_model", "build_discriminator", "build_source"):
        monkeypatch.setattr(train_tokenizer, name, no_models)
    with pytest.raises(ValueError, match="--resolution"):
        train(tok_args(images, workdir, out, **{"--resolution": 80}))  # tiny tokenizer: 64/96/128
    with pytest.raises(ValueError, match="--decode_sizes"):
        train(tok_args(images, workdir, out, **{"--stage": 2, "--decode_sizes": [64, 112]}))
    with pytest.raises(ValueError, match="--perceptual_crop 224 is larger than the smallest decoded image"):
        train(tok_args(images, workdir, out, **{"--perceptual_size": 448, "--perceptual_crop": 224}))
    with pytest.raises(ValueError, match="--preset"):
        train(tok_args(images, workdir, out, **{"--preset": "no-such-preset"}))
    with pytest.raises(ValueError, match="--pretrained_model_name_or_path"):
        train(tok_args(images, workdir, out, **stage3_overrides(str(tmp_path / "missing"))))
    (tmp_path / "not_a_tokenizer").mkdir()
    (tmp_path / "not_a_tokenizer" / "config.json").write_text(json.dumps({"_class_name": "BinaryDiT"}))
    with pytest.raises(ValueError, match="not a BinaryLatentTokenizer"):
        train(tok_args(images, workdir, out, **stage3_overrides(str(tmp_path / "not_a_tokenizer"))))


# ----------------------------------------------------------------------------------------------------------------------
# The three stages
# ----------------------------------------------------------------------------------------------------------------------
def test_stage1_reconstruction_training_reduces_the_loss(stage1):
    out, results = stage1
    rec = series(results, "reconstruction")
    assert len(rec) == 40 and np.isfinite(series(results, "loss")).all()
    first, last = rec[:5].mean(), rec[-5:].mean()
    print(f"stage 1: reconstruction loss {first:.3f} -> {last:.3f}, {results['steps_per_second']:.1f} steps/s")
    assert last < 0.7 * first, (first, last)
    assert set(series(results, "decode_size")) == {64} and results["temperature"] == 0.5
    for name in ("smooth_l1", "perceptual", "lpips_global", "lpips_crop", "code_loss"):
        assert np.isfinite(series(results, name)).all(), name
    # the output folder is a BinaryLatentTokenizer; the stage's temperature is recorded in its config
    tokenizer = BinaryLatentTokenizer.from_pretrained(str(out)).eval()
    assert tokenizer.config.quantizer_temperature == 0.5
    with torch.no_grad():
        bits = tokenizer.encode(torch.zeros(1, 3, 64, 64)).bits
        assert tokenizer.decode(bits, height=128).sample.shape == (1, 3, 128, 128)
    assert results["validation"]["val/psnr_64"] > 0
    assert (out / "README.md").is_file()


def test_stage2_decodes_at_several_resolutions(stage2):
    out, results = stage2
    sizes = series(results, "decode_size")
    # one size per step, drawn from the tokenizer's sample_sizes, deterministically from (seed, epoch, batch)
    assert Counter(sizes.tolist()).keys() == {64, 96, 128}
    assert sizes.tolist() == [sample_decode_size([64, 96, 128], 0, k, 0) for k in range(40)]  # one batch per epoch
    assert (series(results, "target_size") == sizes).all()  # the targets have the decode size
    assert results["decode_sizes_seen"] == dict(Counter(sizes.tolist()))
    by_size = loss_by_size(results)
    print(
        "stage 2: reconstruction loss by size "
        + ", ".join(f"{s}px {a:.3f} -> {b:.3f}" for s, (a, b) in by_size.items())
        + f"; sizes {dict(Counter(sizes.tolist()))}; {results['steps_per_second']:.1f} steps/s"
    )
    first, last = (np.mean([v[i] for v in by_size.values()]) for i in (0, 1))
    assert last < 0.95 * first, by_size  # the loss averaged over decode sizes drops
    for size in (96, 128):  # the decoder learns the sizes stage 1 never produced...
        assert by_size[size][1] < 0.95 * by_size[size][0], (size, by_size)
    assert by_size[64][1] < 1.15 * by_size[64][0], (
        by_size
    )  # ...while keeping the encoder size (a tiny model trades a bit)
    assert results["temperature"] == 0.1
    assert BinaryLatentTokenizer.from_pretrained(str(out)).config.quantizer_temperature == 0.1
    assert {f"val/psnr_{s}" for s in (64, 96, 128)} <= set(results["validation"])


def test_stage3_freezes_the_encoder_and_starts_the_discriminator_late(images, workdir, tmp_path, stage2):
    start = stage2[0]
    out = tmp_path / "stage3"
    results = train(
        tok_args(
            images,
            workdir,
            out,
            **stage3_overrides(
                start,
                **{
                    "--max_train_steps": 24,
                    "--discriminator_start_step": 4,
                    "--checkpointing_steps": 2,
                    "--lr_warmup_steps": 4,
                },
            ),
        )
    )
    # the encoder is bit-identical to the stage-2 one; decoder, quantizer and pixel head trained
    assert_same_weights(start, out, prefix="encoder.")
    assert changed(start, out, "decoder.") and changed(start, out, "quantizer.") and changed(start, out, "pixel_head.")
    # the discriminator trains from step 5 on (after 4 optimizer steps), never before
    trained = series(results, "discriminator_trained").tolist()
    assert trained == [False] * 4 + [True] * 20 and results["discriminator_steps"] == 20
    disc = {step: out / f"checkpoint-{step}" / "discriminator" for step in (2, 4, 6)}
    assert_same_weights(disc[2], disc[4])
    assert changed(disc[4], disc[6], "heads.") and not changed(disc[4], disc[6], "backbone.")
    history = results["history"]
    assert all("d_loss" not in h and "adaptive_weight" not in h for h in history[:4])
    assert all(np.isfinite(h["d_loss"]) and h["adaptive_weight"] >= 0 for h in history[4:])
    # the reconstruction keeps improving with the adversarial loss on (averaged over decode sizes, none much worse)
    by_size = loss_by_size(results)
    assert set(by_size) == {64, 96, 128}
    d_loss = [h["d_loss"] for h in history[4:]]
    print(
        "stage 3: reconstruction loss by size "
        + ", ".join(f"{s}px {a:.3f} -> {b:.3f}" for s, (a, b) in by_size.items())
        + f"; adaptive weight {history[4]['adaptive_weight']:.3f} -> "
        f"{history[-1]['adaptive_weight']:.3f}; d_loss {np.mean(d_loss[:4]):.3f} -> {np.mean(d_loss[-4:]):.3f}; "
        f"{results['steps_per_second']:.1f} steps/s"
    )
    first, last = (np.mean([v[i] for v in by_size.values()]) for i in (0, 1))
    assert last < first, by_size
    assert any(b < 0.95 * a for a, b in by_size.values()), by_size
    assert np.mean(d_loss[-4:]) < np.mean(d_loss[:4])  # the discriminator learns too
    # noise-free view: PSNR of the same validation images (thresholded bits) before and after stage 3
    before, after = stage2[1]["validation"], results["validation"]
    psnr = {s: (before[f"val/psnr_{s}"], after[f"val/psnr_{s}"]) for s in (64, 96, 128)}
    print("stage 3: validation PSNR " + ", ".join(f"{s}px {a:.2f} -> {b:.2f} dB" for s, (a, b) in psnr.items()))
    assert np.mean([b for _, b in psnr.values()]) > np.mean([a for a, _ in psnr.values()]), psnr
    # the product is the tokenizer alone; the discriminator lives only in checkpoints
    assert not (out / "discriminator").exists()
    card = (out / "README.md").read_text()
    assert "tokenizer-stage-3" in card and "| discriminator steps | 20 |" in card


# ----------------------------------------------------------------------------------------------------------------------
# Options: gradient checkpointing, accumulation, EMA, checkpoint limit, validation logging, data formats, Hub
# ----------------------------------------------------------------------------------------------------------------------
def test_gradient_checkpointing_is_exact_and_validation_is_logged(images, workdir, tmp_path, stage1):
    pytest.importorskip("tensorboard")

    common = {
        "--stage": 2,
        "--preset": None,
        "--pretrained_model_name_or_path": stage1[0],
        "--max_train_steps": 4,
        "--gradient_accumulation_steps": 2,
        "--train_batch_size": 2,
        "--use_ema": True,
        "--ema_decay": 0.9,
    }
    plain = train(tok_args(images, workdir, tmp_path / "plain", **common))
    checkpointed = train(
        tok_args(
            images,
            workdir,
            tmp_path / "gc",
            **{
                **common,
                "--gradient_checkpointing": True,
                "--checkpointing_steps": 1,
                "--checkpoints_total_limit": 2,
                "--report_to": "tensorboard",
                "--validation_steps": 2,
            },
        )
    )
    assert plain["loss_history"] == checkpointed["loss_history"]
    assert_same_weights(tmp_path / "plain", tmp_path / "gc")
    out = tmp_path / "gc"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert (out / "checkpoint-4" / "tokenizer_ema").is_dir()
    assert sum(checkpointed["decode_sizes_seen"].values()) == 8  # 4 steps x 2 micro-batches
    grids = sorted(p.name for p in (out / "logs" / "validation").glob("*.png"))
    assert grids == sorted(f"step-0000000{s}-{r}px.png" for s in (2, 4) for r in (64, 96, 128))
    tags = tensorboard_tags(out / "logs")
    assert {"validation/64px", "validation/128px"} <= tags.get("images", set())
    assert {"loss", "smooth_l1", "lpips_crop", "val/psnr_96", "decode_size"} <= tags.get("scalars", set())


def test_stage3_with_bf16_mixed_precision(images, workdir, tmp_path, stage2):
    """The paper trains in bf16: autocast over the tokenizer, LPIPS, the discriminator and the adaptive weight; the
    saved tokenizer keeps float32 master weights."""
    out = tmp_path / "bf16"
    results = train(
        tok_args(
            images,
            workdir,
            out,
            **stage3_overrides(
                stage2[0],
                **{
                    "--max_train_steps": 3,
                    "--mixed_precision": "bf16",
                    "--use_ema": True,
                    "--gradient_checkpointing": True,
                },
            ),
        )
    )
    assert results["global_step"] == 3 and results["discriminator_steps"] == 3
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["d_loss"]) for h in results["history"])
    assert BinaryLatentTokenizer.from_pretrained(str(out)).dtype == torch.float32
    assert_same_weights(stage2[0], out, prefix="encoder.")


def test_caption_free_folders_corrupt_images_and_other_formats(workdir, tmp_path):
    data = tmp_path / "plain_images"  # an image folder without metadata.jsonl: the tokenizer needs no captions
    data.mkdir()
    for i in range(3):
        shape_image(i, (90, 70)).save(data / f"img{i}.png")
    (data / "truncated.jpg").write_bytes(truncated_jpeg())
    (data / "not_an_image.jpg").write_bytes(b"not an image\n" * 10)
    shape_image(1, (20, 90)).save(data / "too_small.png")
    results = train(tok_args(data, workdir, tmp_path / "out", **{"--train_batch_size": 6, "--max_train_steps": 1}))
    assert results["global_step"] == 1 and results["skipped"] == {"corrupt": 2, "too_small": 1}
    assert "corrupt=2, too_small=1" in (tmp_path / "out" / "README.md").read_text()

    shards = make_webdataset(tmp_path / "wds", shards=2, per_shard=3)
    results = train(tok_args(shards, workdir, tmp_path / "wds_out", **{"--stage": 2, "--max_train_steps": 3}))
    assert results["global_step"] == 3 and not results["skipped"]
    images = make_imagefolder(tmp_path / "captioned", num_images=4)
    results = train(
        tok_args(
            images,
            workdir,
            tmp_path / "stream_out",
            **{
                "--train_data_dir": None,
                "--dataset_name": images,
                "--streaming": True,
                "--max_train_steps": 3,
                "--dataloader_num_workers": 2,
                "--shuffle_buffer_size": 2,
                "--train_batch_size": 2,
            },
        )
    )
    assert results["global_step"] == 3


def test_push_to_hub_uploads_the_tokenizer_with_card_and_without_checkpoints(images, workdir, tmp_path, monkeypatch):
    calls = fake_hub(monkeypatch)
    out = tmp_path / "my-tokenizer"
    train(
        tok_args(
            images,
            workdir,
            out,
            **{
                "--max_train_steps": 4,
                "--checkpointing_steps": 2,
                "--push_to_hub": True,
                "--hub_model_id": "my-tokenizer",
                "--use_ema": True,
            },
        )
    )
    assert calls["create_repo"][0] == "my-tokenizer"
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "someone/my-tokenizer"
    assert any(f.startswith("checkpoint-2/tokenizer/") for f in upload["all_files"])  # they exist locally...
    uploaded = upload["uploaded"]
    assert not [f for f in uploaded if f.startswith(("checkpoint-", ".tmp-", ".trash-"))]  # ...and are not uploaded
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= set(uploaded)
    assert json.loads((out / "config.json").read_text())["_class_name"] == "BinaryLatentTokenizer"
    readme = upload["readme"]
    for expected in (
        "someone/my-tokenizer",
        "tokenizer-stage-1",
        "**tokenizer training stage 1**",
        "## Training",
        "**Data:** local data `images`, 4 records",
        "**Steps:** 4",
        "| learning_rate | 0.001 |",
        "| quantizer temperature | 0.5 |",
        "| EMA | decay 0.9999 |",
        "final reconstruction loss",
        "| images seen | 16 |",
        "validation psnr_64",
        "perceptual (LPIPS-VGG)",
    ):
        assert expected in readme, expected


# ----------------------------------------------------------------------------------------------------------------------
# Reliability: SIGKILL + resume
# ----------------------------------------------------------------------------------------------------------------------
def _run_script(argv, **env):
    return run_script("train_tokenizer.py", argv, **env)


def _kill_and_resume(reference_argv, argv, out, kill_step, save_step, first_checkpoint):
    reference = _run_script(reference_argv)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = _run_script(argv, **{FAULT_ENV: f"step:{kill_step}"})
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, no cleanup ran
    assert latest_checkpoint(out).name == first_checkpoint and not (out / "config.json").exists()
    killed_in_save = _run_script(argv, **{FAULT_ENV: f"save:{save_step}"})
    assert killed_in_save.returncode == -9, killed_in_save.stderr[-3000:]
    assert (out / f".tmp-checkpoint-{save_step}").is_dir() and latest_checkpoint(out).name == first_checkpoint
    resumed = _run_script(argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from checkpoint {out / first_checkpoint}" in resumed.stderr


def test_stage1_sigkill_and_resume_ends_with_identical_weights(images, workdir, tmp_path):
    options = {
        "--max_train_steps": 8,
        "--checkpointing_steps": 3,
        "--train_batch_size": 3,
        "--gradient_accumulation_steps": 2,
        "--use_ema": True,
        "--ema_decay": 0.9,
        "--lr_warmup_steps": 2,
        "--resume_from_checkpoint": "latest",
        "--seed": 1234,
        "--num_validation_images": 0,
    }
    ref, out = tmp_path / "reference", tmp_path / "interrupted"
    _kill_and_resume(
        tok_args(images, workdir, ref, **options), tok_args(images, workdir, out, **options), out, 5, 6, "checkpoint-3"
    )
    assert_same_weights(ref, out)  # the final tokenizer (EMA weights)
    for name in ("tokenizer", "tokenizer_ema"):
        assert_same_weights(ref / "checkpoint-6" / name, out / "checkpoint-6" / name)
    assert optimizer_states_equal(ref / "checkpoint-6" / "optimizer.bin", out / "checkpoint-6" / "optimizer.bin")
    assert_same_random_states(ref / "checkpoint-6", out / "checkpoint-6")
    assert_same_training_state(
        ref / "checkpoint-6",
        out / "checkpoint-6",
        ("global_step", "epoch", "batch_in_epoch", "seed", "loss_ema", "images_seen"),
    )
    assert not list(out.glob(".tmp-*"))


def test_stage3_sigkill_and_resume_ends_with_identical_weights(images, workdir, tmp_path, stage2):
    """The most stateful stage: tokenizer + EMA + discriminator, two optimizers and schedulers, per-step decode sizes,
    random perceptual crops and quantizer noise, the discriminator starting mid-run."""
    options = stage3_overrides(
        stage2[0],
        **{
            "--max_train_steps": 8,
            "--checkpointing_steps": 3,
            "--train_batch_size": 3,
            "--gradient_accumulation_steps": 2,
            "--use_ema": True,
            "--ema_decay": 0.9,
            "--lr_warmup_steps": 2,
            "--discriminator_start_step": 2,
            "--resume_from_checkpoint": "latest",
            "--seed": 99,
            "--num_validation_images": 0,
        },
    )
    ref, out = tmp_path / "reference", tmp_path / "interrupted"
    _kill_and_resume(
        tok_args(images, workdir, ref, **options), tok_args(images, workdir, out, **options), out, 5, 6, "checkpoint-3"
    )
    assert_same_weights(ref, out)
    for name in ("tokenizer", "tokenizer_ema", "discriminator"):
        assert_same_weights(ref / "checkpoint-6" / name, out / "checkpoint-6" / name)
    for name in ("optimizer.bin", "optimizer_1.bin"):  # tokenizer's and discriminator's AdamW
        assert optimizer_states_equal(ref / "checkpoint-6" / name, out / "checkpoint-6" / name), name
    assert_same_random_states(ref / "checkpoint-6", out / "checkpoint-6")
    state_a = assert_same_training_state(
        ref / "checkpoint-6",
        out / "checkpoint-6",
        ("global_step", "batch_in_epoch", "loss_ema", "d_loss_ema", "decode_sizes_seen", "discriminator_steps"),
    )
    assert len(state_a["decode_sizes_seen"]) > 1
    # the discriminator did change during the run (so its equality above means something)
    assert changed(ref / "checkpoint-3" / "discriminator", ref / "checkpoint-6" / "discriminator", "heads.")


# ----------------------------------------------------------------------------------------------------------------------
# Several processes (pytest -m slow)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_stage3_runs_with_ddp(images, workdir, tmp_path, stage2):
    out = tmp_path / "ddp"
    result = launch_two_cpu_processes(
        "train_tokenizer.py",
        tok_args(
            images,
            workdir,
            out,
            **stage3_overrides(
                stage2[0],
                **{
                    "--max_train_steps": 4,
                    "--checkpointing_steps": 2,
                    "--train_batch_size": 2,
                    "--discriminator_start_step": 1,
                },
            ),
        ),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DistributedType.MULTI_CPU" in result.stderr and "Num processes: 2" in result.stderr
    for rank in (0, 1):
        assert (out / "checkpoint-2" / f"training_state_{rank}.json").is_file()
    assert (out / "checkpoint-4" / "discriminator" / "model.safetensors").is_file()
    assert_same_weights(stage2[0], out, prefix="encoder.")
    assert changed(stage2[0], out, "decoder.")
