"""The shapes world: caption grammar, held-out compositions, scene geometry, rendering, the data set writer."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from diffusers_bit.cli import main
from diffusers_bit.evaluation import (
    CATEGORIES,
    COLORS,
    HELD_OUT_CAPTIONS,
    HELD_OUT_COLOR_SHAPES,
    RELATIONS,
    SHAPES,
    compositions,
    is_held_out,
    make_scene,
    make_spec,
    read_prompts,
    render,
    render_array,
    spec_to_caption,
    split_compositions,
    write_shapes_dataset,
)
from diffusers_bit.evaluation.shapes_world import IMAGE_MARGIN, OBJECT_GAP


def _concepts(specs):
    shapes, colors, counts, relations = set(), set(), set(), set()
    for spec in specs:
        for o in spec["objects"]:
            shapes.add(o["shape"])
            colors.add(o["color"])
            counts.add(o["count"])
        relations.add(spec["relation"])
    return shapes, colors - {None}, counts, relations - {None}


def _hashes(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_grammar_compositions_and_held_out_set():
    assert {c: len(compositions(c)) for c in CATEGORIES} == {
        "single_object": 3,
        "two_object": 6,
        "counting": 9,
        "colors": 18,
        "position": 24,
        "color_attr": 180,
    }
    assert spec_to_caption(make_spec("colors", [("circle", "orange")])) == "an orange circle"
    assert spec_to_caption(make_spec("counting", [("triangle", None, 3)])) == "three triangles"
    assert spec_to_caption(make_spec("position", [("circle",), ("square",)], "left of")) == (
        "a circle to the left of a square"
    )
    assert spec_to_caption(make_spec("color_attr", [("circle", "red"), ("square", "blue")])) == (
        "a red circle and a blue square"
    )
    test = split_compositions("test")
    train = split_compositions("train")
    assert {c: len(v) for c, v in test.items()} == {
        "single_object": 1,
        "two_object": 1,
        "counting": 2,
        "colors": 3,
        "position": 6,
        "color_attr": 54,
    }
    for category in CATEGORIES:
        held = {spec_to_caption(s) for s in test[category]}
        seen = {spec_to_caption(s) for s in train[category]}
        assert held and seen and not held & seen
        assert held | seen == {spec_to_caption(s) for s in compositions(category)}
        assert set(HELD_OUT_CAPTIONS[category]) <= held
    # the held-out colour-shape bindings are never captioned in train
    for spec in train["colors"] + train["color_attr"]:
        assert not {(o["color"], o["shape"]) for o in spec["objects"]} & set(HELD_OUT_COLOR_SHAPES)
    # both phrasings of a held-out position layout are held out
    assert {"a circle to the left of a triangle", "a triangle to the right of a circle"} <= {
        spec_to_caption(s) for s in test["position"]
    }
    # every concept still appears in train captions, per category where it can
    all_train = [s for specs in train.values() for s in specs]
    assert _concepts(all_train) == (set(SHAPES), set(COLORS), {1, 2, 3, 4}, set(RELATIONS))
    assert _concepts(train["colors"])[:2] == (set(SHAPES), set(COLORS))
    assert _concepts(train["counting"])[2] == {2, 3, 4}
    assert _concepts(train["position"])[3] == set(RELATIONS)
    with pytest.raises(ValueError, match="different shapes"):
        make_spec("two_object", [("circle",), ("circle",)])
    with pytest.raises(ValueError, match="different colors"):
        make_spec("color_attr", [("circle", "red"), ("square", "red")])
    with pytest.raises(ValueError, match="unknown shape"):
        make_spec("single_object", [("hexagon",)])


def test_splits_draw_seen_or_held_out_compositions_only():
    train = [make_scene("train", i) for i in range(1200)]
    assert not any(is_held_out(s.spec) for s in train)
    assert _concepts([s.spec for s in train]) == (set(SHAPES), set(COLORS), {1, 2, 3, 4}, set(RELATIONS))
    assert [s.spec["category"] for s in train[:12]] == list(CATEGORIES) * 2
    assert not any(is_held_out(make_scene("validation", i).spec) for i in range(120))
    test = [make_scene("test", i) for i in range(324)]
    assert all(is_held_out(s.spec) for s in test)
    assert {s.caption for s in test} == {spec_to_caption(s) for v in split_compositions("test").values() for s in v}


def test_scenes_are_deterministic_and_well_formed():
    a, b = make_scene("train", 7, seed=3), make_scene("train", 7, seed=3)
    assert a == b and render(a).tobytes() == render(b).tobytes()
    assert make_scene("train", 7, seed=4).layout() != a.layout()
    assert make_scene("validation", 7, seed=3).layout() != a.layout()
    for split in ("train", "test"):
        for i in range(240):
            scene = make_scene(split, i)
            spec, objs = scene.spec, scene.objects
            assert len(objs) == sum(o["count"] for o in spec["objects"])
            wanted = sorted(o["shape"] for o in spec["objects"] for _ in range(o["count"]))
            assert sorted(o.shape for o in objs) == wanted
            for o, want in zip(objs, spec["objects"]):
                assert want["color"] in (None, o.color)
            for o in objs:
                assert o.diameter / 2 + IMAGE_MARGIN - 1e-6 <= min(o.cx, o.cy)
                assert max(o.cx, o.cy) <= 1 - IMAGE_MARGIN - o.diameter / 2 + 1e-6
                assert 0.21 <= o.diameter <= 0.36
            for j, o in enumerate(objs):  # bounding boxes never overlap
                for p in objs[j + 1 :]:
                    gap = (o.diameter + p.diameter) / 2 + OBJECT_GAP - 1e-3
                    assert abs(o.cx - p.cx) >= gap or abs(o.cy - p.cy) >= gap
            if spec["relation"]:
                a, b = objs
                dx, dy = b.cx - a.cx, b.cy - a.cy
                along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[
                    spec["relation"]
                ]
                assert along >= (a.diameter + b.diameter) / 2 + OBJECT_GAP - 1e-3 and along >= 2.5 * abs(across) - 1e-3
            bg = np.asarray(scene.background.rgb)
            assert bg.max() - bg.min() <= 12 + 1e-6 and scene.background.contrast <= 30


def test_render_any_size_shows_the_same_scene():
    scene = make_scene("test", 5)
    small, large = render_array(scene, 64), render_array(scene, 128)
    assert small.shape == (64, 64, 3) and large.shape == (128, 128, 3) and small.dtype == np.uint8
    reduced = np.asarray(Image.fromarray(large).resize((64, 64), Image.BOX)).astype(int)
    assert np.abs(reduced - small.astype(int)).mean() < 2.0
    assert render(scene, 32).size == (32, 32)
    with pytest.raises(ValueError, match="`size`"):
        render(scene, 16)


def test_write_dataset_is_byte_identical_loadable_and_refuses_to_overwrite(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_shapes_dataset(first, num_train=18, num_validation=12, num_test=12, seed=1)
    write_shapes_dataset(second, num_train=18, num_validation=12, num_test=12, seed=1)
    assert _hashes(first) == _hashes(second)
    write_shapes_dataset(tmp_path / "c", num_train=18, num_validation=12, num_test=12, seed=2)
    assert _hashes(tmp_path / "c") != _hashes(first)

    rows = {
        s: [json.loads(x) for x in (first / s / "metadata.jsonl").read_text().splitlines()]
        for s in ("train", "validation", "test")
    }
    assert [len(r) for r in rows.values()] == [18, 12, 12]
    for split, split_rows in rows.items():
        for row in split_rows:
            assert set(row) == {"file_name", "text", "category", "spec", "layout"}
            spec = json.loads(row["spec"])
            assert spec_to_caption(spec) == row["text"] and spec["category"] == row["category"]
            assert is_held_out(spec) == (split == "test")
            with Image.open(first / split / row["file_name"]) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
    prompts = read_prompts(first / "prompts_test.jsonl")
    assert {p["text"] for p in prompts} == {r["text"] for r in rows["test"]}
    assert sum(p["num_images"] for p in prompts) == 12 and isinstance(prompts[0]["spec"], dict)
    assert {p["category"] for p in prompts} == set(CATEGORIES)
    assert (first / "prompts_validation.jsonl").is_file() and not (first / "prompts_train.jsonl").exists()
    card = (first / "README.md").read_text()
    assert "seed=1" in card and "red square" in card and "a triangle and a square" in card

    import datasets

    data = datasets.load_dataset("imagefolder", data_dir=str(first), cache_dir=str(tmp_path / "hf"))
    assert set(data) == {"train", "validation", "test"} and data["train"].num_rows == 18
    assert {"image", "text", "category", "spec"} <= set(data["test"].column_names)
    assert data["test"][0]["text"] == rows["test"][0]["text"]
    assert datasets.load_dataset(str(first), split="validation", cache_dir=str(tmp_path / "hf")).num_rows == 12
    from diffusers_bit.training.data import build_source  # what --train_data_dir reads

    assert len(build_source(train_data_dir=str(first), cache_dir=str(tmp_path / "hf"))) == 18

    (first / "notes.txt").write_text("kept")
    with pytest.raises(ValueError, match="overwrite=True"):
        write_shapes_dataset(first, num_train=6, num_validation=0, num_test=0)
    assert _hashes(first)["train/metadata.jsonl"] == _hashes(second)["train/metadata.jsonl"]
    write_shapes_dataset(first, num_train=6, num_validation=0, num_test=0, overwrite=True)
    assert len((first / "train" / "metadata.jsonl").read_text().splitlines()) == 6
    assert not (first / "test").exists() and not (first / "prompts_test.jsonl").exists()
    assert (first / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=16), "`size`"),
        (dict(size=64.0), "`size`"),
        (dict(num_train=-1), "`num_train`"),
        (dict(num_validation=-5), "`num_validation`"),
        (dict(num_test=1.5), "`num_test`"),
        (dict(num_train=0, num_validation=0, num_test=0), "all 0"),
        (dict(seed=-1), "`seed`"),
    ],
)
def test_writer_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_shapes_dataset(tmp_path / "out", **{"num_train": 2, "num_validation": 0, "num_test": 0, **kwargs})
    assert not (tmp_path / "out").exists()


def test_writer_speed(tmp_path):
    result = write_shapes_dataset(tmp_path / "d", num_train=300, num_validation=0, num_test=0)
    assert result["seconds"] < 6.0  # about 1.5 ms per 64 px record on one core: 20k in about 30 s


def test_cli_shapes_data(tmp_path, capsys):
    out = tmp_path / "data"
    main(
        [
            "shapes-data",
            "--output_dir",
            str(out),
            "--num_train",
            "6",
            "--num_validation",
            "3",
            "--num_test",
            "6",
            "--size",
            "48",
            "--seed",
            "2",
        ]
    )
    assert "6 train, 3 validation and 6 test" in capsys.readouterr().out
    with Image.open(out / "test" / "000000.png") as im:
        assert im.size == (48, 48)
    with pytest.raises(SystemExit, match="overwrite"):
        main(["shapes-data", "--output_dir", str(out), "--num_train", "6"])
    with pytest.raises(SystemExit, match="`size`"):
        main(["shapes-data", "--output_dir", str(tmp_path / "x"), "--size", "8"])
    main(
        [
            "shapes-data",
            "--output_dir",
            str(out),
            "--num_train",
            "2",
            "--num_validation",
            "0",
            "--num_test",
            "0",
            "--overwrite",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "train"]
