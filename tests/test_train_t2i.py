"""training_scripts/train_t2i.py and precompute_latents.py on the tiny preset (CPU, a few steps each)."""

import json

import numpy as np
import pytest
import torch
from training_helpers import (  # noqa: F401 (one_thread: an autouse fixture)
    CONFIGS,
    REPO,
    assert_same_random_states,
    assert_same_training_state,
    assert_same_weights,
    caption,
    fake_hub,
    launch_two_cpu_processes,
    load_script,
    make_imagefolder,
    make_webdataset,
    one_thread,
    optimizer_states_equal,
    run_in_process,
    run_script,
    tensorboard_tags,
    to_argv,
    weights,
)
from utils import tiny_bert_text_components

from diffusers_bit import InstellaARPipeline, InstellaT2IPipeline
from diffusers_bit.training import BatchDataset, ImageCaptionProcessor, LatentStore, build_source, collate_images
from diffusers_bit.training.checkpointing import FAULT_ENV, latest_checkpoint
from diffusers_bit.training.components import load_image_tokenizer, plan_components

train_t2i = load_script("train_t2i")
precompute = load_script("precompute_latents")


def train(argv):
    return run_in_process(train_t2i, argv)


def run_precompute(argv):
    return run_in_process(precompute, argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def images(workdir):
    return make_imagefolder(workdir / "images", num_images=4)


def base_args(images, workdir, output_dir, **overrides):
    args = {
        "--preset": "tiny",
        "--train_data_dir": images,
        "--resolution": 64,
        "--output_dir": output_dir,
        "--train_batch_size": 2,
        "--max_train_steps": 4,
        "--seed": 0,
        "--report_to": "none",
        "--lr_warmup_steps": 0,
        "--learning_rate": 1e-3,
        "--checkpointing_steps": 1000,
        "--cache_dir": workdir / "hf_cache",
    }
    return to_argv({**args, **overrides})


# ----------------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------------
def test_bad_flags_are_named_before_models_load(images, workdir, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        train_t2i.parse_args(base_args(images, workdir, tmp_path / "o", **{"--model": "gan"}))
    assert "--model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--dataset_name, --train_data_dir, --latents_dir"):
        train_t2i.parse_args(base_args(images, workdir, tmp_path / "o", **{"--train_data_dir": None}))
    with pytest.raises(ValueError, match="exactly one"):
        train_t2i.parse_args(base_args(images, workdir, tmp_path / "o", **{"--dataset_name": "x/y"}))
    with pytest.raises(ValueError, match="--preset"):
        train_t2i.parse_args(base_args(images, workdir, tmp_path / "o", **{"--preset": None}))
    with pytest.raises(ValueError, match="--max_train_steps"):
        train_t2i.parse_args(
            base_args(images, workdir, tmp_path / "o", **{"--streaming": True, "--max_train_steps": None})
        )
    with pytest.raises(ValueError, match="--prompt_dropout"):
        train_t2i.parse_args(base_args(images, workdir, tmp_path / "o", **{"--prompt_dropout": 1.5}))

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the flags were checked")

    monkeypatch.setattr(train_t2i, "load_text_components", no_models)
    monkeypatch.setattr(train_t2i, "load_image_tokenizer", no_models)
    with pytest.raises(ValueError, match="--resolution"):
        train(base_args(images, workdir, tmp_path / "o", **{"--resolution": 80}))  # tiny tokenizer: 64/96/128
    with pytest.raises(ValueError, match="--caption_column"):
        train(base_args(images, workdir, tmp_path / "o", **{"--caption_column": "prompt"}))
    with pytest.raises(ValueError, match="preset"):
        train(base_args(images, workdir, tmp_path / "o", **{"--preset": "no-such-preset"}))
    with pytest.raises(ValueError, match="model_index.json"):
        train(base_args(images, workdir, tmp_path / "o", **{"--pretrained_model_name_or_path": str(tmp_path)}))
    with pytest.raises(ValueError, match="--resume_from_checkpoint"):
        train(base_args(images, workdir, tmp_path / "o", **{"--resume_from_checkpoint": "checkpoint-7"}))


# ----------------------------------------------------------------------------------------------------------------------
# Both generators learn
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["diffusion", "ar"])
def test_generator_training_reduces_loss(images, workdir, tmp_path, model):
    out = tmp_path / model
    results = train(
        base_args(
            images,
            workdir,
            out,
            **{
                "--model": model,
                "--max_train_steps": 40,
                "--train_batch_size": 4,
                "--learning_rate": 3e-3,
                "--prompt_dropout": 0.0,
            },
        )
    )
    losses = np.array([loss for _, loss in results["loss_history"]])
    assert len(losses) == 40 and np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    print(f"{model}: loss {first:.3f} -> {last:.3f}")
    assert last < first - 0.15, f"{model} loss did not drop: {first:.3f} -> {last:.3f}"
    # the output folder is a complete pipeline
    cls = InstellaT2IPipeline if model == "diffusion" else InstellaARPipeline
    pipe = cls.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 2} if model == "diffusion" else {}
    image = pipe(caption(0), generator=torch.Generator().manual_seed(0), height=64, width=64, **kwargs).images[0]
    assert image.size == (64, 64)
    assert weights(out / "transformer")


def test_components_from_a_pipeline_folder_and_any_text_encoder(images, workdir, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from diffusers_bit.presets import preset_path

    # a trained pipeline is the source of the frozen components; without --preset its generator is fine-tuned
    source = tmp_path / "source"
    train(base_args(images, workdir, source, **{"--max_train_steps": 2}))
    frozen = train(
        base_args(
            images,
            workdir,
            tmp_path / "finetune",
            **{
                "--preset": None,
                "--pretrained_model_name_or_path": source,
                "--learning_rate": 0.0,
                "--max_train_steps": 2,
            },
        )
    )
    assert frozen["global_step"] == 2
    assert_same_weights(source / "transformer", tmp_path / "finetune" / "transformer")  # lr 0: unchanged start
    assert_same_weights(source / "text_encoder", tmp_path / "finetune" / "text_encoder")
    assert_same_weights(source / "image_tokenizer", tmp_path / "finetune" / "image_tokenizer")
    with pytest.raises(ValueError, match="no BinaryARTransformer"):
        train(
            base_args(
                images,
                workdir,
                tmp_path / "x",
                **{"--preset": None, "--model": "ar", "--pretrained_model_name_or_path": source},
            )
        )

    # any transformers model with hidden states: a 3-layer BERT (width 24); the new generator adapts to it
    bert = tmp_path / "bert"
    AutoTokenizer.from_pretrained(str(preset_path("tiny") / "tokenizer")).save_pretrained(str(bert))
    BertModel(
        BertConfig(
            vocab_size=260,
            hidden_size=24,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=128,
        )
    ).save_pretrained(str(bert))
    out = tmp_path / "with_bert"
    train(
        base_args(
            images,
            workdir,
            out,
            **{
                "--model": "ar",
                "--text_encoder": bert,
                "--max_train_steps": 2,
                "--pretrained_model_name_or_path": source,
                "--cache_text_features": True,
            },
        )
    )
    pipe = InstellaARPipeline.from_pretrained(str(out))
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert (pipe.transformer.config.text_embed_dim, pipe.transformer.config.text_num_layers) == (24, 3)
    assert_same_weights(source / "image_tokenizer", out / "image_tokenizer")


def test_text_feature_cache_equals_batched_encoding_and_encodes_each_caption_once():
    from diffusers_bit import build_pipeline
    from diffusers_bit.training import TextFeatureCache, encode_text

    tokenizer, bert = tiny_bert_text_components()
    pipe = build_pipeline("tiny", "diffusion", seed=0, text_encoder=bert, tokenizer=tokenizer)
    encoded = []
    bert.register_forward_hook(lambda module, args, output: encoded.append(len(output.last_hidden_state)))
    cache = TextFeatureCache(pipe, "cpu")
    for captions, new_captions in ((["red cat", "", "a red dog on a cat"], 3), (["", "dog", "red cat", "red cat"], 1)):
        encoded.clear()
        embeds, mask = cache(captions)
        assert encoded == [new_captions]  # only captions not seen before reach the encoder
        expected_embeds, expected_mask = encode_text(pipe, captions, "cpu")
        assert torch.equal(mask, expected_mask)
        torch.testing.assert_close(embeds, expected_embeds, atol=1e-5, rtol=1e-5)
    assert len(cache) == 4
    with pytest.raises(ValueError, match="cache_text_features.*decoder-only"):
        TextFeatureCache(build_pipeline("tiny", "diffusion", seed=0), "cpu")  # tiny OLMo: left padding


# ----------------------------------------------------------------------------------------------------------------------
# Precomputed latents
# ----------------------------------------------------------------------------------------------------------------------
def test_precomputed_latents_store_and_training(images, workdir, tmp_path):
    store_dir = tmp_path / "store"
    common = [
        "--preset",
        "tiny",
        "--train_data_dir",
        images,
        "--resolution",
        64,
        "--output_dir",
        store_dir,
        "--batch_size",
        3,
        "--cache_dir",
        workdir / "hf_cache",
    ]
    header = run_precompute(common)
    assert header["num_images"] == 4 and header["bytes_per_image"] == 32  # 16 tokens x 16 bits (paper: 1024)
    assert (store_dir / "latents-00000.bin").stat().st_size == 4 * 32
    # unpacking gives exactly the tokenizer's bits of the same preprocessed images
    plan = plan_components("diffusion", preset="tiny", need_generator=False)
    tokenizer = load_image_tokenizer(plan)
    source = build_source(train_data_dir=str(images), cache_dir=str(workdir / "hf_cache"))
    item = next(
        iter(BatchDataset(source, ImageCaptionProcessor(64, min_size=32), collate_images, 4, 0, 0, shuffle=False))
    )
    with torch.no_grad():
        expected = tokenizer.encode(item["batch"]["pixel_values"], sample=False).bits
    store = LatentStore(store_dir)
    assert torch.equal(store.bits(range(4)), expected)
    assert [store.caption(i) for i in range(4)] == item["batch"]["captions"]

    # an existing store is never overwritten silently
    with pytest.raises(ValueError, match="--overwrite"):
        run_precompute(common)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("user file")
    with pytest.raises(ValueError, match="not part of a latent store"):
        run_precompute(
            common[:-4] + ["--output_dir", tmp_path / "notes", "--overwrite", "--cache_dir", workdir / "hf_cache"]
        )
    assert run_precompute(common + ["--overwrite"])["num_images"] == 4

    # training from the store = training on the fly from the same images (same bits, order, captions, noise)
    # (the resolution comes from the store: the default 512 would not be a size of the tiny tokenizer)
    from_store = train(
        base_args(
            images,
            workdir,
            tmp_path / "from_store",
            **{"--train_data_dir": None, "--latents_dir": store_dir, "--resolution": None},
        )
    )
    with pytest.raises(ValueError, match="--resolution 128 differs from the 64px"):
        train(
            base_args(
                images,
                workdir,
                tmp_path / "x",
                **{"--train_data_dir": None, "--latents_dir": store_dir, "--resolution": 128},
            )
        )
    on_the_fly = train(base_args(images, workdir, tmp_path / "on_the_fly"))
    assert from_store["loss_history"] == on_the_fly["loss_history"]
    assert_same_weights(tmp_path / "from_store" / "transformer", tmp_path / "on_the_fly" / "transformer")
    InstellaT2IPipeline.from_pretrained(str(tmp_path / "from_store"))


# ----------------------------------------------------------------------------------------------------------------------
# Data robustness and formats
# ----------------------------------------------------------------------------------------------------------------------
def test_corrupt_images_are_skipped_and_counted(workdir, tmp_path, caplog):
    data = make_imagefolder(tmp_path / "data", num_images=4, corrupt=True)  # + truncated JPEG, text file, 20 px image
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        results = train(base_args(data, workdir, out, **{"--train_batch_size": 7, "--max_train_steps": 1}))
    assert results["global_step"] == 1
    assert results["skipped"] == {"corrupt": 2, "too_small": 1}
    text = caplog.text
    assert "Skipped 3 unusable records in total (corrupt=2, too_small=1)" in text
    assert (
        "truncated.jpg: corrupt" in text and "not_an_image.jpg: corrupt" in text and "too_small.png: too_small" in text
    )
    card = (out / "README.md").read_text()
    assert "corrupt=2, too_small=1" in card


def test_webdataset_and_streaming_hub_style_sources_train(workdir, tmp_path, images):
    shards = make_webdataset(tmp_path / "wds", shards=2, per_shard=3)
    results = train(base_args(shards, workdir, tmp_path / "wds_out", **{"--max_train_steps": 3}))
    assert results["global_step"] == 3 and not results["skipped"]
    # a data set name (here a local folder; a Hub id goes the same way) read as a stream by two workers
    results = train(
        base_args(
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
            },
        )
    )
    assert results["global_step"] == 3


# ----------------------------------------------------------------------------------------------------------------------
# Options: gradient checkpointing, EMA, checkpoint limit, validation, Hub
# ----------------------------------------------------------------------------------------------------------------------
def test_gradient_checkpointing_is_exact_and_total_limit_prunes(images, workdir, tmp_path):
    plain = train(base_args(images, workdir, tmp_path / "plain", **{"--max_train_steps": 3}))
    checkpointed = train(
        base_args(
            images,
            workdir,
            tmp_path / "gc",
            **{
                "--max_train_steps": 3,
                "--gradient_checkpointing": True,
                "--checkpointing_steps": 1,
                "--checkpoints_total_limit": 2,
            },
        )
    )
    assert plain["loss_history"] == checkpointed["loss_history"]
    assert_same_weights(tmp_path / "plain" / "transformer", tmp_path / "gc" / "transformer")
    assert sorted(p.name for p in (tmp_path / "gc").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not list((tmp_path / "gc").glob(".tmp-*"))


@pytest.mark.parametrize("model", ["diffusion", "ar"])
def test_validation_grid_is_logged_to_tensorboard(images, workdir, tmp_path, model):
    pytest.importorskip("tensorboard")

    out = tmp_path / "out"
    train(
        base_args(
            images,
            workdir,
            out,
            **{
                "--model": model,
                "--report_to": "tensorboard",
                "--max_train_steps": 2,
                "--validation_steps": 2,
                "--use_ema": True,
                "--validation_prompts": ["a red disc", "a blue disc"],
                "--validation_inference_steps": 2,
            },
        )
    )
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    tags = tensorboard_tags(out / "logs")
    assert any("validation" in tag for tag in tags.get("images", ())), tags
    assert "train_loss" in tags.get("scalars", set())
    grids = list((out / "logs" / "validation").glob("step-*.png"))
    assert len(grids) == 1
    from PIL import Image

    assert Image.open(grids[0]).size == (128, 64)  # two 64 px images side by side


def test_push_to_hub_uploads_the_pipeline_with_card_and_without_checkpoints(images, workdir, tmp_path, monkeypatch):
    calls = fake_hub(monkeypatch)
    out = tmp_path / "my-model"
    train(
        base_args(
            images,
            workdir,
            out,
            **{
                "--max_train_steps": 4,
                "--checkpointing_steps": 2,
                "--push_to_hub": True,
                "--hub_model_id": "my-model",
                "--use_ema": True,
            },
        )
    )

    assert calls["create_repo"][0] == "my-model"
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "someone/my-model"
    assert any(f.startswith("checkpoint-2/") for f in upload["all_files"])  # they exist locally...
    uploaded = upload["uploaded"]
    assert not [f for f in uploaded if f.startswith(("checkpoint-", ".tmp-", ".trash-"))]  # ...and are not uploaded
    assert "model_index.json" in uploaded and "README.md" in uploaded
    index = json.loads((out / "model_index.json").read_text())
    components = [name for name, value in index.items() if isinstance(value, list) and not name.startswith("_")]
    assert sorted(components) == ["image_tokenizer", "scheduler", "text_encoder", "tokenizer", "transformer"]
    assert index["_class_name"] == ["diffusers_bit_pipeline", "InstellaT2IPipeline"]  # loads without the package too
    assert "diffusers_bit_pipeline.py" in uploaded and "transformer/diffusers_bit_model.py" in uploaded
    for component in components:
        assert any(f.startswith(f"{component}/") for f in uploaded), component
    assert "transformer/diffusion_pytorch_model.safetensors" in uploaded
    readme = upload["readme"]
    assert "someone/my-model" in readme
    for expected in (
        "## Training",
        "**Data:**",
        "**Steps:** 4",
        "| learning_rate | 0.001 |",
        "| EMA | decay 0.9999 |",
        "final train loss",
        "| images seen | 8 |",
        "InstellaT2IPipeline",
    ):
        assert expected in readme, expected


# ----------------------------------------------------------------------------------------------------------------------
# Reliability: SIGKILL + resume, several processes
# ----------------------------------------------------------------------------------------------------------------------
def _run_script(argv, **env):
    return run_script("train_t2i.py", argv, **env)


def test_sigkill_and_resume_ends_with_identical_weights(images, workdir, tmp_path):
    """A run killed with SIGKILL (once after step 5, once while checkpoint 6 is half written) and restarted with
    `--resume_from_checkpoint latest` each time ends bit-identical to an uninterrupted run: weights, EMA, optimizer
    state, data order and every random draw."""
    options = {
        "--max_train_steps": 8,
        "--checkpointing_steps": 3,
        "--train_batch_size": 3,
        "--gradient_accumulation_steps": 2,
        "--use_ema": True,
        "--ema_decay": 0.9,
        "--lr_warmup_steps": 2,
        "--dataloader_num_workers": 2,
        "--resume_from_checkpoint": "latest",
        "--seed": 1234,
    }
    reference = _run_script(base_args(images, workdir, tmp_path / "reference", **options))
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "interrupted"
    argv = base_args(images, workdir, out, **options)
    killed = _run_script(argv, **{FAULT_ENV: "step:5"})
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, no cleanup ran
    assert latest_checkpoint(out).name == "checkpoint-3" and not (out / "model_index.json").exists()

    killed_in_save = _run_script(argv, **{FAULT_ENV: "save:6"})
    assert killed_in_save.returncode == -9, killed_in_save.stderr[-3000:]
    assert "Resuming from checkpoint" in killed_in_save.stderr
    assert (out / ".tmp-checkpoint-6").is_dir() and not (out / "checkpoint-6").exists()
    assert latest_checkpoint(out).name == "checkpoint-3"  # the half-written checkpoint is never picked

    resumed = _run_script(argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from checkpoint {out / 'checkpoint-3'}" in resumed.stderr

    ref = tmp_path / "reference"
    assert_same_weights(ref / "transformer", out / "transformer")  # final pipeline (EMA weights)
    assert_same_weights(ref / "checkpoint-6" / "transformer", out / "checkpoint-6" / "transformer")
    assert_same_weights(ref / "checkpoint-6" / "transformer_ema", out / "checkpoint-6" / "transformer_ema")
    assert optimizer_states_equal(ref / "checkpoint-6" / "optimizer.bin", out / "checkpoint-6" / "optimizer.bin")
    # the global RNG states accelerate saves (python, numpy, torch) and its accumulation counter match too
    assert_same_random_states(ref / "checkpoint-6", out / "checkpoint-6")
    assert_same_training_state(
        ref / "checkpoint-6",
        out / "checkpoint-6",
        ("global_step", "epoch", "batch_in_epoch", "seed", "loss_ema", "images_seen"),
    )
    assert not list(out.glob(".tmp-*"))


def test_two_process_cpu_accelerate_launch(images, workdir, tmp_path):
    out = tmp_path / "ddp"
    result = launch_two_cpu_processes(
        "train_t2i.py",
        base_args(
            images,
            workdir,
            out,
            **{
                "--max_train_steps": 3,
                "--checkpointing_steps": 2,
                "--train_batch_size": 1,
            },
        ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DistributedType.MULTI_CPU" in result.stderr and "Num processes: 2" in result.stderr
    checkpoint = out / "checkpoint-2"
    for rank in (0, 1):
        assert (checkpoint / f"training_state_{rank}.json").is_file()
        assert (checkpoint / f"random_states_{rank}.pkl").is_file()
    state = json.loads((checkpoint / "training_state_0.json").read_text())
    assert state["num_processes"] == 2 and state["images_seen"] == 4  # 2 steps x 1 image x 2 processes
    pipe = InstellaT2IPipeline.from_pretrained(str(out))
    assert pipe.transformer.config.num_tokens == 16


def test_accelerate_configs_describe_the_paper_setup():
    import yaml

    node = yaml.safe_load((CONFIGS / "mi300x_8gpu_zero2.yaml").read_text())
    assert node["distributed_type"] == "DEEPSPEED" and node["num_processes"] == 8 and node["num_machines"] == 1
    zero2 = json.loads((REPO / node["deepspeed_config"]["deepspeed_config_file"]).read_text())
    assert zero2["zero_optimization"]["stage"] == 2 and zero2["bf16"]["enabled"] is True
    assert zero2["gradient_clipping"] == 1.0
    assert "mixed_precision" not in node  # accelerate refuses it next to a DeepSpeed config file
    multi = yaml.safe_load((CONFIGS / "multi_node_example.yaml").read_text())
    assert multi["num_machines"] == 2 and multi["num_processes"] == 16 and "main_process_ip" in multi
    assert (REPO / multi["deepspeed_config"]["deepspeed_config_file"]).is_file()
    cpu = yaml.safe_load((CONFIGS / "cpu_2proc.yaml").read_text())
    assert cpu["use_cpu"] is True and cpu["distributed_type"] == "MULTI_CPU" and cpu["num_processes"] == 2
    # the loader accelerate uses accepts every file
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("mi300x_8gpu_zero2.yaml", "multi_node_example.yaml", "cpu_2proc.yaml"):
        load_config_from_file(str(CONFIGS / name))


# ----------------------------------------------------------------------------------------------------------------------
# Heavier runs (pytest -m slow)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_sigkill_and_resume_is_exact(images, workdir, tmp_path):
    options = {
        "--max_train_steps": 6,
        "--checkpointing_steps": 2,
        "--train_batch_size": 1,
        "--use_ema": True,
        "--resume_from_checkpoint": "latest",
        "--seed": 7,
    }
    reference = launch_two_cpu_processes("train_t2i.py", base_args(images, workdir, tmp_path / "ref", **options))
    assert reference.returncode == 0, reference.stderr[-3000:]
    argv = base_args(images, workdir, tmp_path / "run", **options)
    killed = launch_two_cpu_processes("train_t2i.py", argv, **{FAULT_ENV: "step:3"})
    assert killed.returncode != 0
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    resumed = launch_two_cpu_processes("train_t2i.py", argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(tmp_path / "ref" / "transformer", tmp_path / "run" / "transformer")
    assert_same_weights(
        tmp_path / "ref" / "checkpoint-6" / "transformer", tmp_path / "run" / "checkpoint-6" / "transformer"
    )


@pytest.mark.slow
def test_two_process_precompute_writes_one_part_per_process(workdir, tmp_path):
    data = make_imagefolder(tmp_path / "data", num_images=5, corrupt=True)
    store_dir = tmp_path / "store"
    result = launch_two_cpu_processes(
        "precompute_latents.py",
        [
            "--preset",
            "tiny",
            "--train_data_dir",
            data,
            "--resolution",
            64,
            "--output_dir",
            store_dir,
            "--batch_size",
            2,
            "--cache_dir",
            workdir / "hf_cache",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header = json.loads((store_dir / "header.json").read_text())
    assert len(header["parts"]) == 2 and header["num_images"] == 5
    assert header["skipped"] == {"corrupt": 2, "too_small": 1}
    store = LatentStore(store_dir)
    assert sorted(store.caption(i) for i in range(5)) == sorted(caption(i) for i in range(5))
