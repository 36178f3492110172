"""Bad input and faults, class by class: every mistake gets an error of the right type naming the argument or file and
what is accepted, raised before heavy work; nothing is accepted silently; the CLI answers in one line."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from training_helpers import load_script, one_thread  # noqa: F401 (one_thread: autouse fixture)
from utils import tiny_bert_text_components

from diffusers_bit import (
    BernoulliScheduler,
    BinaryARTransformer,
    BinaryDiT,
    BinaryLatentTokenizer,
    InstellaARPipeline,
    InstellaT2IPipeline,
    build_pipeline,
)
from diffusers_bit.cli import main
from diffusers_bit.conversion import load_official_state_dict
from diffusers_bit.presets import load_preset_config
from diffusers_bit.training.data import check_train_data_dir
from diffusers_bit.training.latent_store import LatentStore
from diffusers_bit.utils.checks import write_file_atomically

train_t2i = load_script("train_t2i")


@pytest.fixture(scope="module")
def pipes():
    return {kind: build_pipeline("tiny", kind, seed=0) for kind in ("diffusion", "ar")}


def _call(pipe, **kwargs):
    args = {"prompt": "a cat", "output_type": "latent", "generator": torch.manual_seed(0)}
    if isinstance(pipe, InstellaT2IPipeline):
        args["num_inference_steps"] = 2
    return pipe(**{**args, **kwargs})


def _embeds(pipe, value=None):
    embeds, mask = pipe.encode_prompt("a cat", do_classifier_free_guidance=False)[:2]
    if value is not None:
        embeds = embeds.clone()
        embeds[0, 0, 0, 0] = value
    return embeds, mask


# ----------------------------------------------------------------------------------------------------------------------
# Accepted silently before
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["diffusion", "ar"])
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"guidance_scale": float("inf")}, ValueError, r"`guidance_scale` must be a finite number >= 0"),
        ({"guidance_scale": float("nan")}, ValueError, r"`guidance_scale` must be a finite number"),
        ({"temperature": float("inf")}, ValueError, r"`temperature` must be a finite number >= 0"),
        ({"temperature": -0.1}, ValueError, r"`temperature`"),
        ({"guidance_scale": "5"}, TypeError, r"`guidance_scale` must be a number"),
        ({"num_images_per_prompt": 1.5}, TypeError, r"`num_images_per_prompt` must be an int"),
        ({"generator": 0}, TypeError, r"`generator` must be a torch.Generator"),
        ({"generator": [torch.Generator(), "seed"]}, TypeError, r"`generator` must be a torch.Generator"),
        ({"max_sequence_length": 0}, ValueError, r"`max_sequence_length`"),
    ],
)
def test_pipeline_numbers_and_generators(pipes, kind, kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(pipes[kind], **kwargs)


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_prompt_embeds(pipes, kind, value):
    pipe = pipes[kind]
    embeds, mask = _embeds(pipe, value)
    with pytest.raises(ValueError, match=r"`prompt_embeds` contains NaN or infinite"):
        _call(pipe, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=1.0)
    embeds, mask = _embeds(pipe)
    with pytest.raises(ValueError, match=r"`prompt_attention_mask` must contain only bits"):
        _call(pipe, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask * 2, guidance_scale=1.0)


@pytest.mark.parametrize("value", [float("nan"), 0.5, 2.0])
def test_latents_must_be_bits(pipes, value):
    latents = torch.zeros(1, 16, 16)
    latents[0, 0, 0] = value
    with pytest.raises(ValueError, match="`latents` must contain only 0 and 1"):
        _call(pipes["diffusion"], latents=latents)


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
@pytest.mark.parametrize("replace", ["probabilities", "shape", "type"])
def test_callback_latents_are_checked(pipes, kind, replace):
    def callback(pipe, step, timestep, kwargs):
        latents = kwargs["latents"]
        if replace == "probabilities":
            return {"latents": latents * 0.5 + 0.25}
        if replace == "shape":
            return {"latents": latents[:, :-1]}
        return {"latents": latents.tolist()}

    with pytest.raises(ValueError, match="callback_on_step_end"):
        _call(pipes[kind], callback_on_step_end=callback)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.full((1, 3, 64, 64), float("nan")), r"`images` contains NaN"),
        (torch.full((1, 3, 64, 64), 2.0), r"`images` must lie in \[-1, 1\]"),
        (torch.rand(1, 3, 64, 64) * 255, r"`images` must lie in \[-1, 1\]"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), r"floating-point.*images / 127.5 - 1"),
    ],
)
def test_tokenizer_images_out_of_domain(images, match):
    tok = BinaryLatentTokenizer.from_config(load_preset_config("tiny", "image_tokenizer")).eval()
    with pytest.raises(ValueError, match=match):
        tok.encode(images)


@pytest.mark.parametrize("cls, component", [(BinaryDiT, "transformer"), (BinaryARTransformer, "ar_transformer")])
@pytest.mark.parametrize("value", [0.5, -1.0, float("nan")])
def test_generators_refuse_non_bits(cls, component, value):
    model = cls.from_config(load_preset_config("tiny", component)).eval()
    bits = torch.zeros(1, 16, 16)
    bits[0, 3, 3] = value
    text = [torch.randn(1, 3, 32) for _ in range(2)]
    args = (bits, 0.5) if cls is BinaryDiT else (bits,)
    with pytest.raises(ValueError, match="`hidden_states` must contain only bits"):
        model(*args, encoder_hidden_states=text)


@pytest.mark.parametrize(
    "samples, t, match",
    [
        (torch.zeros(2, 4, 8), 1.5, r"`timesteps` must lie in \[0, 1\]"),
        (torch.zeros(2, 4, 8), torch.tensor([0.2, -0.1]), r"`timesteps` must lie in \[0, 1\]"),
        (torch.zeros(2, 4, 8), float("nan"), r"`timesteps` must lie in \[0, 1\]"),
        (torch.full((2, 4, 8), 0.3), 0.5, r"`original_samples` must contain only bits"),
        (torch.zeros(2, 4, 8), torch.tensor([0.1, 0.2, 0.3]), r"one entry per row"),
    ],
)
def test_add_noise_domain(samples, t, match):
    with pytest.raises(ValueError, match=match):
        BernoulliScheduler().add_noise(samples, t)


def test_max_sequence_length_beyond_the_position_table():
    tokenizer, bert = tiny_bert_text_components()  # 2 layers of width 32 like the tiny DiT expects; 128 positions
    pipe = build_pipeline("tiny", "diffusion", seed=0, tokenizer=tokenizer, text_encoder=bert)
    with pytest.raises(ValueError, match=r"`max_sequence_length` 200 is more than the text encoder embeds.*128"):
        _call(pipe, max_sequence_length=200)
    _call(pipe, max_sequence_length=128)


@pytest.mark.parametrize(
    "cls, component, change, match",
    [
        (
            BinaryLatentTokenizer,
            "image_tokenizer",
            {"sample_size": [64]},
            r"unknown keys \['sample_size'\]; did you mean `sample_sizes`",
        ),
        (
            BinaryLatentTokenizer,
            "image_tokenizer",
            {"rope_reference_size": None},
            r"missing keys \['rope_reference_size'\]",
        ),
        (BinaryDiT, "transformer", {"num_layers": None}, r"missing keys \['num_layers'\]"),
        (BinaryDiT, "transformer", {"hidden_size": 64}, r"unknown keys \['hidden_size'\]"),
        (BinaryARTransformer, "ar_transformer", {"num_token": 16}, r"did you mean `num_tokens`"),
        (BernoulliScheduler, "scheduler", {"algoritm": "posterior"}, r"did you mean `algorithm`"),
    ],
)
def test_configs_with_unknown_or_missing_keys_are_refused(tmp_path, cls, component, change, match):
    config = dict(load_preset_config("tiny", component))
    for key, value in change.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    with pytest.raises(ValueError, match=match):
        cls.from_config(config)
    folder = tmp_path / component
    folder.mkdir()
    name = "scheduler_config.json" if cls is BernoulliScheduler else "config.json"
    (folder / name).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        cls.from_pretrained(folder)


def test_configs_of_older_saves_without_the_new_switches_still_load():
    config = dict(load_preset_config("tiny", "image_tokenizer"))
    for key in ("rope_layout", "position_embedding_type", "latent_index_embedding"):
        config.pop(key)
    assert BinaryLatentTokenizer.from_config(config).config.rope_layout == "interleaved"


@pytest.mark.parametrize("saved, loader", [("ar", InstellaT2IPipeline), ("diffusion", InstellaARPipeline)])
def test_pipeline_of_the_wrong_kind_is_refused_at_load(pipes, tmp_path, saved, loader):
    pipes[saved].save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match=rf"{loader.__name__} needs a .*load it with"):
        loader.from_pretrained(tmp_path / "pipe")
    with pytest.raises(SystemExit, match="load it with"):
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "pipe"),
                "--kind",
                "diffusion" if saved == "ar" else "ar",
                "--prompt",
                "x",
                "--output",
                str(tmp_path / "x.png"),
            ]
        )


# ----------------------------------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------------------------------
def test_atomic_write_never_replaces_a_file_created_meanwhile(tmp_path):
    target = tmp_path / "out.bits"
    write_file_atomically(target, b"first")
    with pytest.raises(FileExistsError, match="created while this command ran"):
        write_file_atomically(target, b"second")
    assert target.read_bytes() == b"first"
    write_file_atomically(target, b"third", overwrite=True)
    assert target.read_bytes() == b"third"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bits"]  # no temporary file left behind


def test_file_appearing_during_sampling_is_not_overwritten(tmp_path, monkeypatch):
    out = tmp_path / "img.png"
    from diffusers_bit import cli

    real = cli._sample_bits

    def sample_then_someone_writes(pipe, prompts, args):
        bits = real(pipe, prompts, args)
        (tmp_path / "img.bits").write_bytes(b"user")
        return bits

    monkeypatch.setattr(cli, "_sample_bits", sample_then_someone_writes)
    with pytest.raises(SystemExit, match="img.bits already exists"):
        main(["demo", "--preset", "tiny", "--prompt", "a", "--output", str(out), "--steps", "1"])
    assert (tmp_path / "img.bits").read_bytes() == b"user" and not out.exists()


@pytest.mark.parametrize(
    "output, match",
    [("noext", r"must end with one of"), ("picture.gif", r"must end with one of"), ("afile/x.png", r"is a file")],
)
def test_output_path_problems_are_found_before_sampling(tmp_path, monkeypatch, output, match):
    (tmp_path / "afile").write_text("")
    from diffusers_bit import presets

    monkeypatch.setattr(presets, "build_pipeline", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(SystemExit, match=match):
        main(["demo", "--preset", "tiny", "--prompt", "a", "--output", str(tmp_path / output)])


# ----------------------------------------------------------------------------------------------------------------------
# Errors that came from too deep
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/no/such/folder", "./missing-model", "../elsewhere/model", "org/name/extra"])
@pytest.mark.parametrize("cls", [InstellaT2IPipeline, BinaryDiT, BinaryLatentTokenizer])
def test_missing_paths_are_file_not_found(cls, path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        cls.from_pretrained(path)


def test_unreachable_repo_names_the_repo_and_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"could not load 'someone/no-such-model' from the Hugging Face Hub.*offline"):
        InstellaT2IPipeline.from_pretrained("someone/no-such-model")


@pytest.mark.parametrize(
    "damage, match",
    [
        ("remove_transformer", r"component `transformer` is listed in model_index.json but its folder .* is missing"),
        ("truncate_weights", r"diffusion_pytorch_model.safetensors is not a readable safetensors file"),
        ("bad_index", r"model_index.json is not valid JSON \(line 1"),
        ("bad_config", r"transformer/config.json is not valid JSON"),
    ],
)
def test_damaged_pipeline_folders_name_the_file(pipes, tmp_path, damage, match):
    folder = tmp_path / "pipe"
    pipes["diffusion"].save_pretrained(folder)
    if damage == "remove_transformer":
        import shutil

        shutil.rmtree(folder / "transformer")
    elif damage == "truncate_weights":
        weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "bad_index":
        (folder / "model_index.json").write_text("{oops")
    else:
        (folder / "transformer" / "config.json").write_text('{"num_layers": 2,,}')
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        InstellaT2IPipeline.from_pretrained(folder)


def test_converter_tells_corrupt_files_from_unsafe_pickles(tmp_path):
    corrupt = tmp_path / "diffusion.pt"
    corrupt.write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_official_state_dict(corrupt)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "ok.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_official_state_dict(truncated)
    import argparse

    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="unrestricted unpickling"):
        load_official_state_dict(tmp_path / "unsafe.pt")
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_official_state_dict(bad)


def test_bad_json_files_name_file_and_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "header.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"latent store header .*header.json is not valid JSON"):
        LatentStore(store)
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (8, 8)).save(data / "a.png")
    (data / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": "b.png", text}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl, line 2: invalid JSON"):
        check_train_data_dir(data)
    overrides = tmp_path / "overrides.json"
    overrides.write_text("{'single': 'quotes'}")
    with pytest.raises(SystemExit, match=r"--config_overrides .*overrides.json is not valid JSON"):
        main(
            [
                "convert",
                "--checkpoint_dir",
                str(tmp_path),
                "--output_dir",
                str(tmp_path / "o"),
                "--config_overrides",
                str(overrides),
            ]
        )


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--learning_rate", "-1e-4"], r"--learning_rate must be a finite number >= 0"),
        (["--learning_rate", "nan"], r"--learning_rate must be a finite number >= 0"),
        (["--adam_epsilon", "0"], r"--adam_epsilon must be a finite number > 0"),
        (["--adam_beta1", "1.0"], r"--adam_beta1 must be in \[0, 1\)"),
        (["--adam_beta2", "-0.1"], r"--adam_beta2 must be in \[0, 1\)"),
        (["--adam_weight_decay", "-1"], r"--adam_weight_decay"),
        (["--output_dir", "FILE"], r"--output_dir .* is a file"),
        (["--resume_from_checkpoint", "checkpoint-7"], r"--resume_from_checkpoint 'checkpoint-7' does not exist"),
        (["--train_data_dir", "EMPTY"], r"--train_data_dir.*holds no images"),
        (["--latents_dir", "EMPTY", "--train_data_dir", None], r"--latents_dir .* is not a complete latent store"),
    ],
)
def test_training_flags_are_checked_before_anything_loads(tmp_path, flags, match):
    (tmp_path / "FILE").write_text("")
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    args = {"--preset": "tiny", "--train_data_dir": str(tmp_path / "images"), "--output_dir": str(tmp_path / "out")}
    for flag, value in zip(flags[::2], flags[1::2]):
        args[flag] = str(tmp_path / value) if value in ("FILE", "EMPTY") else value
    argv = [f"{flag}={value}" for flag, value in args.items() if value is not None]
    with pytest.raises(ValueError, match=match):
        train_t2i.parse_args(argv)


def test_unavailable_device_is_named(pipes, tmp_path):
    pipes["diffusion"].save_pretrained(tmp_path / "pipe")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match=r"`--device` 'cuda' is not available with this torch build"):
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "pipe"),
                "--prompt",
                "x",
                "--output",
                str(tmp_path / "x.png"),
                "--device",
                "cuda",
            ]
        )
    with pytest.raises(SystemExit, match=r"`--device` 'gpu0' is not a torch device"):
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "pipe"),
                "--prompt",
                "x",
                "--output",
                str(tmp_path / "x.png"),
                "--device",
                "gpu0",
            ]
        )


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "/no/such/model", "--prompt", "x", "--output", "OUT/x.png"],
        ["eval-reconstruction", "--image_tokenizer", "./missing", "--shapes_dir", "OUT"],
        ["convert", "--checkpoint_dir", "OUT/none", "--output_dir", "OUT/o"],
        ["shapes-eval", "--images_dir", "OUT"],
        ["demo", "--model", "OUT", "--output", "OUT/d.png"],
    ],
)
def test_cli_failures_are_one_line_without_traceback(tmp_path, monkeypatch, argv):
    monkeypatch.delenv("DIFFUSERS_BIT_DEBUG", raising=False)
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code  # what Python prints on stderr, with exit status 1
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message


def test_cli_prints_one_line_and_shows_the_traceback_only_with_debug(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "diffusers_bit",
        "generate",
        "--model",
        "/no/such/model",
        "--prompt",
        "x",
        "--output",
        str(tmp_path / "x.png"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSERS_BIT_DEBUG"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and lines == [
        "error: `pretrained_model_name_or_path` '/no/such/model' does not exist (no such folder)"
    ], result.stderr
    debug = subprocess.run(argv[:3] + ["--debug"] + argv[3:], capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_shapes_eval_skips_and_counts_a_corrupt_image(tmp_path, capsys):
    from diffusers_bit.evaluation import make_scene, render

    render(make_scene("test", 0), 64).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    caption = json.dumps({"file_name": "a.png", "text": "a circle"})
    (tmp_path / "metadata.jsonl").write_text(caption + "\n" + json.dumps({"file_name": "b.png", "text": "a circle"}))
    main(["shapes-eval", "--images_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in out and "b.png" in out
