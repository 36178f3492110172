"""The tokenizer as an image codec: the .bits format, its refusals, and `diffusers-bit encode` / `decode`."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_bit import BinaryLatentTokenizer
from diffusers_bit.cli import main
from diffusers_bit.codec import (
    HEADER_SIZE,
    decode_bits_file,
    encode_bits_file,
    load_bits,
    save_bits,
    tokenizer_fingerprint,
)
from diffusers_bit.presets import load_preset_config


def _tokenizer(seed=0):
    torch.manual_seed(seed)
    return BinaryLatentTokenizer.from_config(load_preset_config("tiny", "image_tokenizer")).eval()


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    _tokenizer().save_pretrained(folder)
    return folder


def test_format_round_trip_is_lossless_and_compact():
    bits = torch.randint(0, 2, (16, 16), generator=torch.Generator().manual_seed(0)).float()
    data = encode_bits_file(bits, b"f" * 16)
    assert data[:4] == b"DBIT" and len(data) == HEADER_SIZE + 32 == 57
    decoded, fingerprint = decode_bits_file(data)
    assert torch.equal(decoded, bits) and fingerprint == b"f" * 16


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d[:-1], "is truncated"),
        (lambda d: d[:10], "not a diffusers-bit .bits file"),
        (lambda d: d + b"\x00", "longer than its header says"),
        (lambda d: b"\x89PNG" + d[4:], "not a diffusers-bit .bits file"),
        (lambda d: d[:4] + b"\x07" + d[5:], "format version 7"),
    ],
)
def test_foreign_and_damaged_files_are_refused(mutate, match):
    data = encode_bits_file(torch.zeros(16, 16), b"f" * 16)
    with pytest.raises(ValueError, match=match):
        decode_bits_file(mutate(data), "x.bits")


def test_fingerprint_follows_config_and_weights_not_dtype(tmp_path):
    tok = _tokenizer()
    same = _tokenizer()
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(same)
    other = _tokenizer(seed=1)
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(other)
    with torch.no_grad():
        same.pixel_head.proj.bias[0] += 1e-3  # an in-place change invalidates the cached fingerprint
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(same)
    tok.save_pretrained(tmp_path / "t")
    assert tokenizer_fingerprint(BinaryLatentTokenizer.from_pretrained(tmp_path / "t")) == tokenizer_fingerprint(tok)


def test_save_and_load_refuse_another_tokenizer(tmp_path):
    tok, other = _tokenizer(), _tokenizer(seed=1)
    bits = tok.encode(torch.rand(2, 3, 64, 64) * 2 - 1).bits
    save_bits(tmp_path / "a.bits", bits[0], tok)
    save_bits(tmp_path / "b.bits", bits[1], tok)
    assert torch.equal(load_bits([tmp_path / "a.bits", tmp_path / "b.bits"], tok), bits)
    with pytest.raises(
        ValueError, match=r"made by another tokenizer \(fingerprint [0-9a-f]{32}; this one is [0-9a-f]{32}"
    ):
        load_bits(tmp_path / "a.bits", other)
    with pytest.raises(FileExistsError):
        save_bits(tmp_path / "a.bits", bits[0], tok)
    with pytest.raises(ValueError, match="only 0 and 1"):
        save_bits(tmp_path / "c.bits", bits[0] * 0.5, tok)


def test_cli_encode_decode_round_trip(saved_tokenizer, tmp_path, capsys):
    for name, color in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        Image.fromarray(np.full((80, 100, 3), color, dtype=np.uint8)).save(tmp_path / f"{name}.png")
    images = [str(tmp_path / "red.png"), str(tmp_path / "blue.png")]
    main(["encode", *images, "--image_tokenizer", str(saved_tokenizer), "-o", str(tmp_path / "bits")])
    files = sorted((tmp_path / "bits").glob("*.bits"))
    assert [f.name for f in files] == ["blue.bits", "red.bits"] and all(f.stat().st_size == 57 for f in files)
    main(
        [
            "decode",
            *map(str, files),
            "--image_tokenizer",
            str(saved_tokenizer),
            "-o",
            str(tmp_path / "png"),
            "--size",
            "96",
        ]
    )
    assert Image.open(tmp_path / "png" / "red.png").size == (96, 96)
    # the bits decode the same through the API
    tok = BinaryLatentTokenizer.from_pretrained(saved_tokenizer)
    assert load_bits(files, tok).shape == (2, 16, 16)
    with pytest.raises(SystemExit, match="already exists"):
        main(["encode", images[0], "--image_tokenizer", str(saved_tokenizer), "-o", str(tmp_path / "bits")])
    other = tmp_path / "other"
    _tokenizer(seed=3).save_pretrained(other)
    with pytest.raises(SystemExit, match="made by another tokenizer"):
        main(["decode", str(files[0]), "--image_tokenizer", str(other), "-o", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    (tmp_path / "junk.bits").write_bytes(b"hello")
    with pytest.raises(SystemExit, match="not a diffusers-bit .bits file"):
        main(
            [
                "decode",
                str(tmp_path / "junk.bits"),
                "--image_tokenizer",
                str(saved_tokenizer),
                "-o",
                str(tmp_path / "y"),
            ]
        )


def test_rate_distortion_report_compares_with_jpeg_and_webp(tmp_path, capsys):
    from diffusers_bit.evaluation.reconstruction import format_rate_distortion, rate_distortion

    rng = np.random.default_rng(0)
    images = {f"img{i}": rng.integers(0, 255, (80, 80, 3), dtype=np.uint8) for i in range(2)}
    report = rate_distortion(_tokenizer(), images)
    codecs = report["codecs"]
    assert set(codecs) == {"bits", "JPEG", "WEBP"} and report["size"] == 64
    assert codecs["bits"]["bytes"] == HEADER_SIZE + 32
    for name in ("JPEG", "WEBP"):
        assert 1 <= codecs[name]["quality"] <= 100 and codecs[name]["bytes"] > 0 and np.isfinite(codecs[name]["psnr"])
    table = format_rate_distortion(report)
    assert "diffusers-bit .bits | 57 |" in table and "JPEG (quality" in table
    for name, array in images.items():
        Image.fromarray(array).save(tmp_path / f"{name}.png")
    folder = tmp_path / "tok"
    _tokenizer().save_pretrained(folder)
    main(
        [
            "eval-reconstruction",
            "--image_tokenizer",
            str(folder),
            "--shapes_dir",
            str(tmp_path),
            "--codec",
            "--resolutions",
            "64",
        ]
    )
    assert "Rate-distortion at 64 px (2 images)" in capsys.readouterr().out
