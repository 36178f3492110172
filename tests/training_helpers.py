"""Helpers of the training tests: tiny image data sets drawn with PIL, in every supported layout."""

import io
import json
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = ["red", "blue", "green", "orange", "purple", "cyan"]


def shape_image(index: int, size=(96, 80)) -> Image.Image:
    """A deterministic picture: a coloured disc (index picks the colour) on a white background, `size = (w, h)`."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 6, h // 6, w - w // 6, h - h // 6), fill=COLORS[index % len(COLORS)])
    if index >= len(COLORS):
        draw.rectangle((0, 0, w // 3, h // 3), fill="black")
    return image


def caption(index: int) -> str:
    return f"a {COLORS[index % len(COLORS)]} disc" + (" with a black square" if index >= len(COLORS) else "")


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg(index: int = 0) -> bytes:
    data = encode(shape_image(index, (120, 100)))
    return data[: len(data) // 2]


def make_imagefolder(root: Path, num_images: int = 4, corrupt: bool = False, size=(96, 80)) -> Path:
    """`root/` with PNG images and `metadata.jsonl` (`file_name`, `text`). With `corrupt`: also a truncated JPEG, a
    text file named `.jpg`, and an image whose shorter edge (20 px) is below half of 64 px."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_images):
        shape_image(i, size).save(root / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", "text": caption(i)})
    if corrupt:
        (root / "truncated.jpg").write_bytes(truncated_jpeg())
        (root / "not_an_image.jpg").write_bytes(b"this is not an image at all\n" * 10)
        shape_image(1, (20, 90)).save(root / "too_small.png")
        rows += [{"file_name": "truncated.jpg", "text": "broken"}, {"file_name": "not_an_image.jpg", "text": "text"},
                 {"file_name": "too_small.png", "text": "tiny"}]  # fmt: skip
    with open(root / "metadata.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return root


def make_webdataset(root: Path, shards: int = 2, per_shard: int = 3, truncate_last: bool = False) -> Path:
    """`root/shard-XXXX.tar` with `KEY.jpg` + `KEY.txt` (even keys) or `KEY.json` {"caption": ...} (odd keys)."""
    root.mkdir(parents=True, exist_ok=True)
    index = 0
    for s in range(shards):
        path = root / f"shard-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(per_shard):
                members = {f"{index:06d}.jpg": encode(shape_image(index))}
                if index % 2 == 0:
                    members[f"{index:06d}.txt"] = caption(index).encode()
                else:
                    members[f"{index:06d}.json"] = json.dumps({"caption": caption(index)}).encode()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index += 1
        if truncate_last and s == shards - 1:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * 0.6)])
    return root
