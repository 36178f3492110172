"""The `diffusers-bit` command line: demo (offline main job), generate, convert."""

import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from utils import PARITY

from diffusers_bit import BinaryDiT, build_pipeline
from diffusers_bit.cli import main
from diffusers_bit.codec import HEADER_SIZE, decode_bits_file


def test_demo_writes_image_and_bits_and_never_overwrites(tmp_path):
    out = tmp_path / "demo.png"
    main(["demo", "--preset", "tiny", "--prompt", "a cat", "--output", str(out), "--steps", "3"])
    assert Image.open(out).size == (128, 128)
    bits, _ = decode_bits_file((tmp_path / "demo.bits").read_bytes())  # the codec's .bits format
    assert bits.shape == (16, 16) and set(bits.unique().tolist()) <= {0.0, 1.0}
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="already exists"):
        main(["demo", "--preset", "tiny", "--prompt", "a cat", "--output", str(out)])
    assert out.read_bytes() == before
    main(
        [
            "demo",
            "--preset",
            "tiny",
            "--prompt",
            "a cat",
            "--output",
            str(out),
            "--overwrite",
            "--kind",
            "ar",
            "--size",
            "64",
        ]
    )
    assert Image.open(out).size == (64, 64)


def test_demo_grid_of_several_prompts_and_bits_per_image(tmp_path):
    out = tmp_path / "grid.png"
    prompts = ["a red circle", "two squares", "a blue triangle"]
    main(["demo", "--preset", "tiny", "--prompt", *prompts, "--output", str(out), "--steps", "2", "--size", "64"])
    grid = Image.open(out)
    assert grid.size[0] == 3 * 128 and grid.size[1] > 128  # 3 columns of 2x-upscaled 64 px images + captions
    files = [tmp_path / f"grid-{k}.bits" for k in range(3)]
    assert all(f.stat().st_size == HEADER_SIZE + 32 for f in files)
    # a bits file the user already has is never overwritten, and nothing is written
    files[2].write_bytes(b"mine")
    for path in (out, files[0], files[1]):
        path.unlink()
    with pytest.raises(SystemExit, match="grid-2.bits already exists"):
        main(["demo", "--preset", "tiny", "--prompt", *prompts, "--output", str(out), "--steps", "2"])
    assert files[2].read_bytes() == b"mine" and not out.exists() and not files[0].exists()


def test_demo_is_reproducible(tmp_path):
    for name in ("a", "b"):
        main(
            [
                "demo",
                "--preset",
                "tiny",
                "--prompt",
                "a cat",
                "--output",
                str(tmp_path / f"{name}.png"),
                "--steps",
                "2",
                "--seed",
                "3",
            ]
        )
    assert (tmp_path / "a.bits").read_bytes() == (tmp_path / "b.bits").read_bytes()


def test_generate_from_a_saved_pipeline(tmp_path):
    build_pipeline("tiny", "diffusion", seed=0).save_pretrained(tmp_path / "pipe")
    out = tmp_path / "img.png"
    main(
        [
            "generate",
            "--model",
            str(tmp_path / "pipe"),
            "--prompt",
            "a red cat",
            "--output",
            str(out),
            "--steps",
            "2",
            "--algorithm",
            "posterior",
            "--size",
            "96",
        ]
    )
    assert Image.open(out).size == (96, 96)
    with pytest.raises(SystemExit, match="size"):
        main(["generate", "--model", str(tmp_path / "pipe"), "--output", str(tmp_path / "x.png"), "--size", "80"])


def test_convert_release_folder(tmp_path):
    release = tmp_path / "release"
    (release / "bae").mkdir(parents=True)
    shutil.copy(PARITY / "bae" / "model.safetensors", release / "bae" / "model.safetensors")
    shutil.copy(PARITY / "diffusion.pt", release / "diffusion.pt")
    overrides = tmp_path / "overrides.json"
    overrides.write_text(
        '{"image_tokenizer": {"encoder_downsample_blocks": [1], "decoder_upsample_blocks": [1], '
        '"axes_dims_rope": [4, 14, 14], "sample_sizes": [512]}}'
    )
    args = [
        "convert",
        "--checkpoint_dir",
        str(release),
        "--output_dir",
        str(tmp_path / "out"),
        "--config_overrides",
        str(overrides),
    ]
    main(args)
    weights = tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert BinaryDiT.from_pretrained(tmp_path / "out" / "transformer").config.num_tokens == 8
    assert load_file(weights)["x_embedder.weight"].dtype == torch.bfloat16  # the checkpoint's dtype is kept
    assert (tmp_path / "out" / "image_tokenizer" / "config.json").is_file()
    assert not (tmp_path / "out" / "ar_transformer").exists()  # no ar.pt in this release
    with pytest.raises(SystemExit, match="overwrite"):
        main(args)
    main(args + ["--overwrite", "--dtype", "float32"])
    assert load_file(weights)["x_embedder.weight"].dtype == torch.float32
    with pytest.raises(SystemExit, match="checkpoint_dir"):
        main(["convert", "--checkpoint_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o2")])
