"""LoRA end to end on the tiny preset: `train_t2i.py --use_lora` (flags, the adapter file, exact resume, Hub upload)
and the pipelines' LoRA API (`load_lora_weights`, scale, fuse/unfuse, unload, enable/disable, several adapters,
refusal of adapters of other architectures)."""

import json
import shutil

import pytest
import torch
from model_helpers import make_bits, make_text
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file
from training_helpers import (  # noqa: F401 (one_thread: an autouse fixture)
    assert_same_training_state,
    caption,
    fake_hub,
    load_script,
    make_imagefolder,
    one_thread,
    optimizer_states_equal,
    run_in_process,
    to_argv,
)

from diffusers_bit import BinaryDiT, InstellaARPipeline, InstellaT2IPipeline, build_pipeline
from diffusers_bit.loaders import transformer_lora_layers
from diffusers_bit.models.lora import DEFAULT_LORA_TARGET_MODULES
from diffusers_bit.presets import load_preset_config

train_t2i = load_script("train_t2i")
PIPELINES = {"diffusion": InstellaT2IPipeline, "ar": InstellaARPipeline}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lora")


@pytest.fixture(scope="module")
def images(workdir):
    return make_imagefolder(workdir / "images", num_images=4)


@pytest.fixture(scope="module")
def bases(workdir):
    """Saved tiny base pipelines (random weights, seed 0), the `--pretrained_model_name_or_path` of the runs."""
    folders = {}
    for kind in PIPELINES:
        folders[kind] = workdir / f"base-{kind}"
        build_pipeline("tiny", kind, seed=0).save_pretrained(str(folders[kind]))
    return folders


def lora_args(bases, images, workdir, output_dir, model="diffusion", **overrides):
    args = {
        "--model": model,
        "--pretrained_model_name_or_path": bases[model],
        "--train_data_dir": images,
        "--resolution": 64,
        "--output_dir": output_dir,
        "--train_batch_size": 2,
        "--max_train_steps": 3,
        "--seed": 0,
        "--report_to": "none",
        "--lr_warmup_steps": 0,
        "--learning_rate": 1e-2,
        "--checkpointing_steps": 1000,
        "--cache_dir": workdir / "hf_cache",
        "--use_lora": True,
        "--rank": 4,
        "--lora_alpha": 8,
    }
    return to_argv({**args, **overrides})


def load_base(bases, kind):
    pipe = PIPELINES[kind].from_pretrained(str(bases[kind]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_output(transformer, kind, **kwargs) -> torch.Tensor:
    """The transformer's float output on fixed inputs (through `prepare_text_kv` + `text_kv`, as the pipelines call
    it, with `kwargs` such as `attention_kwargs` given to both)."""
    bits, text = make_bits(batch=2, seed=3), make_text(batch=2, seed=4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        text_kv = transformer.prepare_text_kv(text, mask, **kwargs)
        if kind == "diffusion":
            return transformer(bits, torch.tensor([0.3, 0.8]), text_kv=text_kv, **kwargs).sample
        return transformer(bits[:, :-1], text_kv=text_kv, **kwargs).sample


def sample(pipe, **kwargs) -> torch.Tensor:
    """Sampled bits of two prompts (2 diffusion steps)."""
    call = {"num_inference_steps": 2} if isinstance(pipe, InstellaT2IPipeline) else {}
    return pipe(
        ["a red disc", "a blue disc"],
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **call,
        **kwargs,
    ).images


def lora_layer_count(model) -> int:
    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


def random_adapter(folder, kind="diffusion", seed=1, rank=4, alpha=8, **config):
    """Save a LoRA with random, nonzero weights (`init_lora_weights=False`) of the tiny seed-0 transformer."""
    torch.manual_seed(seed)
    pipe = build_pipeline("tiny", kind, seed=0)
    pipe.transformer.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha,
            init_lora_weights=False,
            target_modules=list(DEFAULT_LORA_TARGET_MODULES),
            **config,
        )
    )
    PIPELINES[kind].save_lora_weights(str(folder), **transformer_lora_layers(pipe.transformer))
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------
def test_lora_flags_are_checked_before_models_load(bases, images, workdir, tmp_path, monkeypatch):
    out = tmp_path / "o"
    for flags, message in (
        ({"--rank": 0}, "--rank must be >= 1"),
        ({"--lora_alpha": 0}, "--lora_alpha"),
        ({"--lora_alpha": "nan"}, "--lora_alpha"),
        ({"--lora_dropout": 1.0}, "--lora_dropout"),
        ({"--preset": "tiny"}, "--use_lora .*--pretrained_model_name_or_path"),
        ({"--use_lora": None}, "--rank, --lora_alpha only apply with --use_lora"),
    ):
        with pytest.raises(ValueError, match=message):
            train_t2i.parse_args(lora_args(bases, images, workdir, out, **flags))

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the LoRA flags were checked")

    monkeypatch.setattr(train_t2i, "load_text_components", no_models)
    monkeypatch.setattr(train_t2i, "load_image_tokenizer", no_models)
    monkeypatch.setattr(train_t2i, "build_generator", no_models)
    for targets in (["attn.to_q", "attn.to_x"], ["attn"], ["to_qkv"]):
        with pytest.raises(
            ValueError,
            match=r"--lora_target_modules.*match no linear layer.*available: .*"
            r"attn\.to_q, attn\.to_k, .*ff\.net\.2",
        ) as error:
            run_in_process(train_t2i, lora_args(bases, images, workdir, out, **{"--lora_target_modules": targets}))
        assert repr(targets[-1]) in str(error.value) and "'attn.to_q'" not in str(error.value)


@pytest.mark.parametrize("kind, flags", [("diffusion", {}), ("ar", {"--gradient_checkpointing": True})])
def test_lora_training_round_trip_and_small_adapter_file(bases, images, workdir, tmp_path, kind, flags):
    out = tmp_path / "lora"
    results = run_in_process(train_t2i, lora_args(bases, images, workdir, out, model=kind, **flags))
    assert results["global_step"] == 3
    trained = results["transformer"]  # the in-memory adapted model at the end of training
    base_weights = load_file(str(bases[kind] / "transformer" / "diffusion_pytorch_model.safetensors"))  # no LoRA

    # the file: diffusers' LoRA format, adapter tensors only, a few % of the base
    path = out / "pytorch_lora_weights.safetensors"
    assert results["lora_weights"] == str(path)
    tensors = load_file(str(path))
    assert tensors and all(k.startswith("transformer.") and ".lora" in k for k in tensors)
    assert not set(k.removeprefix("transformer.") for k in tensors) & set(base_weights)
    lora_params = sum(t.numel() for t in tensors.values())
    assert lora_params == 2 * 4 * (4 * (64 + 64) + (64 + 256) + (256 + 64))  # 2 blocks, rank 4, attn + ff
    base_file = bases[kind] / "transformer" / "diffusion_pytorch_model.safetensors"
    assert path.stat().st_size < 0.1 * base_file.stat().st_size
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["lora_adapter_metadata"])
    assert config["transformer.r"] == 4 and config["transformer.lora_alpha"] == 8
    assert json.loads(metadata["diffusers_bit_transformer"])["class"] == type(trained).__name__
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora.up" in k or "lora_B" in k)  # it trained

    # loaded on a fresh pipeline: the outputs of the model that trained, exactly
    pipe = load_base(bases, kind)
    base_out, base_bits = model_output(pipe.transformer, kind), sample(pipe)
    pipe.load_lora_weights(str(out), adapter_name="trained")
    assert pipe.get_active_adapters() == ["trained"]
    loaded_out = model_output(pipe.transformer, kind)
    assert torch.equal(loaded_out, model_output(trained.eval(), kind))
    assert not torch.equal(loaded_out, base_out)
    in_memory = PIPELINES[kind](**{**load_base(bases, kind).components, "transformer": trained})
    in_memory.set_progress_bar_config(disable=True)
    assert torch.equal(sample(pipe), sample(in_memory))
    assert torch.equal(sample(pipe, attention_kwargs={"scale": 0.0}), base_bits)  # lora_scale 0: the base model

    card = (out / "README.md").read_text()
    assert str(bases[kind]) in card and "load_lora_weights" in card and "rank 4, alpha 8" in card
    assert not (out / "transformer").exists() and not (out / "model_index.json").exists()


def test_lora_resume_is_exact(bases, images, workdir, tmp_path):
    """Resuming a LoRA run (with accumulation, EMA and warm-up) from a checkpoint ends with exactly the adapter, EMA,
    optimizer and training state of the uninterrupted run; checkpoints hold the adapter only."""
    options = {
        "--max_train_steps": 4,
        "--checkpointing_steps": 2,
        "--gradient_accumulation_steps": 2,
        "--use_ema": True,
        "--ema_decay": 0.9,
        "--lr_warmup_steps": 2,
        "--resume_from_checkpoint": "latest",
        "--learning_rate": 3e-3,
    }
    reference = tmp_path / "reference"
    run_in_process(train_t2i, lora_args(bases, images, workdir, reference, **options))
    checkpoint = reference / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.iterdir() if p.is_dir()) == ["transformer_lora", "transformer_lora_ema"]
    assert not list(checkpoint.glob("*.safetensors")) and not list(checkpoint.glob("model*"))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    results = run_in_process(train_t2i, lora_args(bases, images, workdir, resumed, **options))
    assert results["global_step"] == 4
    for name in (
        "pytorch_lora_weights.safetensors",
        "checkpoint-4/transformer_lora/pytorch_lora_weights.safetensors",
        "checkpoint-4/transformer_lora_ema/ema_weights.safetensors",
    ):
        a, b = load_file(str(reference / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ema_a = json.loads((reference / "checkpoint-4/transformer_lora_ema/ema_state.json").read_text())
    assert ema_a == json.loads((resumed / "checkpoint-4/transformer_lora_ema/ema_state.json").read_text())
    assert ema_a["optimization_step"] == 4
    assert optimizer_states_equal(reference / "checkpoint-4/optimizer.bin", resumed / "checkpoint-4/optimizer.bin")
    keys = ("global_step", "epoch", "batch_in_epoch", "seed", "loss_ema", "images_seen")
    assert_same_training_state(reference / "checkpoint-4", resumed / "checkpoint-4", keys)
    # the final file is the EMA of the adapter, not its last weights
    final = load_file(str(reference / "pytorch_lora_weights.safetensors"))
    last = load_file(str(reference / "checkpoint-4" / "transformer_lora" / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(final[k], last[k]) for k in final)


def test_lora_push_to_hub_uploads_the_adapter_with_its_card(bases, images, workdir, tmp_path, monkeypatch):
    calls = fake_hub(monkeypatch)
    out = tmp_path / "my-lora"
    run_in_process(
        train_t2i,
        lora_args(
            bases,
            images,
            workdir,
            out,
            **{
                "--max_train_steps": 2,
                "--checkpointing_steps": 1,
                "--push_to_hub": True,
                "--hub_model_id": "my-lora",
                "--validation_prompts": [caption(0)],
                "--validation_steps": 2,
                "--validation_inference_steps": 2,
            },
        ),
    )
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "someone/my-lora"
    uploaded = upload["uploaded"]
    assert "pytorch_lora_weights.safetensors" in uploaded and "README.md" in uploaded
    assert not [f for f in uploaded if f.startswith(("checkpoint-", "transformer/")) or f == "model_index.json"]
    readme = upload["readme"]
    for expected in (
        "LoRA adapter",
        "InstellaT2IPipeline",
        str(bases["diffusion"]),
        "- lora",
        "attn.to_q",
        'load_lora_weights("someone/my-lora"',
        "| LoRA | rank 4, alpha 8, dropout 0 |",
        "**Steps:** 2",
    ):
        assert expected in readme, expected
    assert len(list((out / "logs" / "validation").glob("step-*.png"))) == 1  # validation images of the adapted model


# ----------------------------------------------------------------------------------------------------------------------
# The pipelines' LoRA API
# ----------------------------------------------------------------------------------------------------------------------
def test_lora_scale_enable_disable_adapters_and_unload(bases, tmp_path):
    pipe = load_base(bases, "diffusion")
    base_state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    base_out, base_bits = model_output(pipe.transformer, "diffusion"), sample(pipe)
    pipe.load_lora_weights(str(random_adapter(tmp_path / "a")), adapter_name="a")
    adapted_out, adapted_bits = model_output(pipe.transformer, "diffusion"), sample(pipe)
    assert not torch.equal(adapted_out, base_out) and not torch.equal(adapted_bits, base_bits)

    # attention_kwargs={"scale": s}: 0 is the base model exactly, the scalings are restored exactly after every call
    assert torch.equal(model_output(pipe.transformer, "diffusion", attention_kwargs={"scale": 0.0}), base_out)
    assert torch.equal(sample(pipe, attention_kwargs={"scale": 0.0}), base_bits)
    half = model_output(pipe.transformer, "diffusion", attention_kwargs={"scale": 0.5})
    assert not torch.equal(half, base_out) and not torch.equal(half, adapted_out)
    assert torch.equal(model_output(pipe.transformer, "diffusion"), adapted_out)
    with pytest.raises(ValueError, match="attention_kwargs.*unknown keys"):
        sample(pipe, attention_kwargs={"scale": 1.0, "lora": 2})
    with pytest.raises(ValueError, match=r"attention_kwargs\['scale'\]"):
        sample(pipe, attention_kwargs={"scale": "x"})

    pipe.disable_lora()
    assert torch.equal(model_output(pipe.transformer, "diffusion"), base_out)
    pipe.enable_lora()
    assert torch.equal(model_output(pipe.transformer, "diffusion"), adapted_out)

    # two adapters: weights per adapter; a weight of 0 removes an adapter exactly
    pipe.load_lora_weights(str(random_adapter(tmp_path / "b", seed=2, rank=2, alpha=2)), adapter_name="b")
    assert sorted(pipe.get_list_adapters()["transformer"]) == ["a", "b"]
    pipe.set_adapters(["a", "b"], [1.0, 0.0])
    assert torch.equal(model_output(pipe.transformer, "diffusion"), adapted_out)
    pipe.set_adapters(["a", "b"], [1.0, 1.0])
    both = model_output(pipe.transformer, "diffusion")
    assert not torch.equal(both, adapted_out)
    assert torch.equal(model_output(pipe.transformer, "diffusion", attention_kwargs={"scale": 0.0}), base_out)
    assert torch.equal(model_output(pipe.transformer, "diffusion"), both)  # the adapter weights survive scale 0
    pipe.set_adapters("a")

    # unload: the base model again, modules and weights
    pipe.unload_lora_weights()
    assert lora_layer_count(pipe.transformer) == 0
    state = pipe.transformer.state_dict()
    assert state.keys() == base_state.keys() and all(torch.equal(state[k], base_state[k]) for k in state)
    assert torch.equal(model_output(pipe.transformer, "diffusion"), base_out)
    assert torch.equal(sample(pipe), base_bits)


def test_fuse_and_unfuse_lora(bases, tmp_path):
    pipe = load_base(bases, "diffusion")
    base_state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    base_out = model_output(pipe.transformer, "diffusion")
    pipe.load_lora_weights(str(random_adapter(tmp_path / "a")), adapter_name="a")
    adapted_out = model_output(pipe.transformer, "diffusion")

    with pytest.raises(ValueError, match="fuse_lora"):  # a fused QKV copy would bypass the LoRA layers
        pipe.fuse_qkv_projections()
    pipe.fuse_lora()
    assert pipe.num_fused_loras == 1
    fused = model_output(pipe.transformer, "diffusion")
    torch.testing.assert_close(fused, adapted_out, atol=1e-5, rtol=1e-5)  # merged weights: float round-off only
    pipe.fuse_qkv_projections()  # allowed once the adapters live in the weights
    with pytest.raises(ValueError, match="unfuse_qkv_projections"):
        pipe.unfuse_lora()
    pipe.unfuse_qkv_projections()

    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    torch.testing.assert_close(model_output(pipe.transformer, "diffusion"), adapted_out, atol=1e-5, rtol=1e-5)
    unfused_base = model_output(pipe.transformer, "diffusion", attention_kwargs={"scale": 0.0})
    # W + dW - dW: the base weights come back up to float32 round-off (peft subtracts the merged delta)
    weights = {k.replace(".base_layer", ""): v for k, v in pipe.transformer.state_dict().items() if "lora" not in k}
    drift = max((weights[k] - base_state[k]).abs().max().item() for k in base_state)
    assert drift < 1e-6
    torch.testing.assert_close(unfused_base, base_out, atol=1e-5, rtol=1e-5)


def test_ar_pipeline_lora_scale_and_kv_cache(bases, tmp_path):
    pipe = load_base(bases, "ar")
    base_bits = sample(pipe)
    pipe.load_lora_weights(str(random_adapter(tmp_path / "ar", kind="ar")))
    adapted = sample(pipe)
    assert not torch.equal(adapted, base_bits)
    assert torch.equal(sample(pipe, use_kv_cache=False), adapted)  # the KV cache path sees the adapter too
    assert torch.equal(sample(pipe, attention_kwargs={"scale": 0.0}), base_bits)
    assert torch.equal(sample(pipe, attention_kwargs={"scale": 0.0}, use_kv_cache=False), base_bits)


def test_adapters_of_other_architectures_are_refused(bases, tmp_path):
    pipe = load_base(bases, "diffusion")

    def refused(source, *patterns, target=pipe):
        with pytest.raises(ValueError) as error:
            target.load_lora_weights(source)
        for pattern in patterns:
            assert pattern in str(error.value), (pattern, str(error.value))
        assert lora_layer_count(target.transformer) == 0 and not getattr(target.transformer, "peft_config", None)

    # another width: every adapted layer mismatches, named with its shapes
    wide = BinaryDiT.from_config({**load_preset_config("tiny", "transformer"), "attention_head_dim": 48})
    wide.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["attn.to_q", "ff.net.2"], init_lora_weights=False))
    InstellaT2IPipeline.save_lora_weights(str(tmp_path / "wide"), **transformer_lora_layers(wide))
    refused(
        str(tmp_path / "wide"),
        "transformer_blocks.0.attn.to_q: lora_A [4, 96]",
        "64 -> 64",
        "transformer_blocks.1.ff.net.2",
    )
    # more blocks: the modules the tiny model lacks are named
    deep = BinaryDiT.from_config({**load_preset_config("tiny", "transformer"), "num_layers": 3, "text_num_layers": 3})
    deep.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["attn.to_v"], init_lora_weights=False))
    layers = transformer_lora_layers(deep)["transformer_lora_layers"]
    refused(layers, "transformer_blocks.2.attn.to_v: no such module in BinaryDiT")
    assert "transformer_blocks.0" not in str(pytest.raises(ValueError, pipe.load_lora_weights, layers).value)
    # an adapter of a module that is not linear
    refused(
        {
            "transformer.transformer_blocks.0.norm2.lora_A.weight": torch.zeros(2, 64),
            "transformer.transformer_blocks.0.norm2.lora_B.weight": torch.zeros(64, 2),
        },
        "transformer_blocks.0.norm2: is a LayerNorm, not a linear layer",
    )
    # same shapes, other architecture: the file names the transformer class it was trained for
    refused(str(random_adapter(tmp_path / "ar", kind="ar")), "trained for a BinaryARTransformer", "is a BinaryDiT")
    # weights for components the Instella pipelines do not adapt, or no LoRA at all
    refused({"text_encoder.layers.0.q_proj.lora_A.weight": torch.zeros(2, 32)}, "text_encoder")
    refused({"transformer.transformer_blocks.0.attn.to_q.weight": torch.zeros(64, 64)}, "not a LoRA checkpoint")
    # the right adapter still loads afterwards
    pipe.load_lora_weights(str(random_adapter(tmp_path / "ok")))
    assert lora_layer_count(pipe.transformer) == 12


@pytest.mark.slow
def test_lora_two_process_cpu_run(bases, images, workdir, tmp_path):
    from training_helpers import launch_two_cpu_processes

    out = tmp_path / "ddp"
    result = launch_two_cpu_processes(
        "train_t2i.py",
        lora_args(
            bases,
            images,
            workdir,
            out,
            **{
                "--max_train_steps": 3,
                "--checkpointing_steps": 2,
                "--train_batch_size": 1,
                "--use_ema": True,
            },
        ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Num processes: 2" in result.stderr
    assert (out / "checkpoint-2" / "transformer_lora" / "pytorch_lora_weights.safetensors").is_file()
    pipe = load_base(bases, "diffusion")
    pipe.load_lora_weights(str(out))
    assert lora_layer_count(pipe.transformer) == 12


def test_lora_loads_into_a_pipeline_loaded_without_the_package(bases, tmp_path):
    """The remote code saved with a pipeline carries the LoRA loader: `DiffusionPipeline.from_pretrained(...,
    trust_remote_code=True)` where diffusers-bit cannot be imported loads an adapter and scales it."""
    import os
    import subprocess
    import sys
    import textwrap

    adapter = random_adapter(tmp_path / "adapter")
    pipe = load_base(bases, "diffusion")
    pipe.load_lora_weights(str(adapter))
    expected = {"adapted": sample(pipe), "base": sample(pipe, attention_kwargs={"scale": 0.0})}
    script = tmp_path / "load.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.modules["diffusers_bit"] = None  # as if diffusers-bit were not installed
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained({str(bases["diffusion"])!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights({str(adapter)!r})
        run = lambda **kw: pipe(["a red disc", "a blue disc"], num_inference_steps=2, output_type="latent",
                                generator=torch.Generator().manual_seed(0), **kw).images
        torch.save({{"adapted": run(), "base": run(attention_kwargs={{"scale": 0.0}}),
                    "module": type(pipe).__module__}}, {str(tmp_path / "out.pt")!r})
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert out["module"].startswith("diffusers_modules.")
    assert torch.equal(out["adapted"], expected["adapted"]) and torch.equal(out["base"], expected["base"])
