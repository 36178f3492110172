"""ShapesEval: the analyser on hand-drawn images, the scoring rules, the prompt parser, ground truth on the renderer's
images, reports, the pipeline driver and the `shapes-eval` command."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from diffusers_bit.cli import main
from diffusers_bit.evaluation import (
    CATEGORIES,
    DetectedObject,
    analyse_image,
    classify_shape,
    compositions,
    evaluate_images,
    evaluate_pipeline,
    format_report,
    make_scene,
    parse_prompt,
    render,
    render_array,
    sample_scene,
    score_image,
    spec_to_caption,
    write_shapes_dataset,
)

# deliberately not the palette's exact values
RED, BLUE, GREEN, YELLOW = (230, 30, 30), (30, 60, 230), (40, 180, 40), (240, 230, 40)


def draw(items, size=64, background=(200, 200, 200), supersample=4):
    """Draw `(shape, rgb, cx, cy, diameter)` items (normalised coordinates) with PIL at `supersample` x and
    box-downsample; `background` is an RGB tuple or an `(n, n, 3)` uint8 array at the supersampled size."""
    n = size * supersample
    if isinstance(background, np.ndarray):
        canvas = Image.fromarray(background)
    else:
        canvas = Image.new("RGB", (n, n), background)
    pen = ImageDraw.Draw(canvas)
    for shape, rgb, cx, cy, d in items:
        x0, y0, x1, y1 = ((cx - d / 2) * n, (cy - d / 2) * n, (cx + d / 2) * n, (cy + d / 2) * n)
        if shape == "circle":
            pen.ellipse([x0, y0, x1, y1], fill=rgb)
        elif shape == "square":
            pen.rectangle([x0, y0, x1, y1], fill=rgb)
        else:
            pen.polygon([(cx * n, y0), (x1, y1), (x0, y1)], fill=rgb)
    return canvas.resize((size, size), Image.BOX) if supersample > 1 else canvas


def stripes(n, period=16, low=150, high=172):
    rows = np.where((np.arange(n) // (period // 2)) % 2 == 0, low, high).astype(np.uint8)
    return np.repeat(np.repeat(rows[:, None, None], n, axis=1), 3, axis=2)


RED_CIRCLE_LEFT_OF_BLUE_SQUARE = [("circle", RED, 0.25, 0.5, 0.3), ("square", BLUE, 0.72, 0.55, 0.3)]
THREE_GREEN_TRIANGLES = [
    ("triangle", GREEN, 0.25, 0.3, 0.28),
    ("triangle", GREEN, 0.7, 0.3, 0.25),
    ("triangle", GREEN, 0.45, 0.75, 0.3),
]


def test_analyser_on_hand_drawn_images():
    objs = analyse_image(draw(RED_CIRCLE_LEFT_OF_BLUE_SQUARE))
    circle, square = sorted(objs, key=lambda o: o.centroid[0])
    assert [(circle.shape, circle.color), (square.shape, square.color)] == [("circle", "red"), ("square", "blue")]
    assert circle.centroid == pytest.approx((0.25, 0.5), abs=0.02)
    assert square.centroid == pytest.approx((0.72, 0.55), abs=0.02)
    assert circle.area == pytest.approx(np.pi * 0.15**2, rel=0.1) and square.area == pytest.approx(0.09, rel=0.1)
    assert circle.bbox == pytest.approx((0.1, 0.35, 0.4, 0.65), abs=0.03)

    objs = analyse_image(np.asarray(draw(THREE_GREEN_TRIANGLES, background=(60, 60, 64))))  # numpy input, dark
    assert [(o.shape, o.color) for o in objs] == [("triangle", "green")] * 3
    assert all(o.top_fraction < 0.35 and o.width_trend > 0.9 for o in objs)

    textured = draw([("square", YELLOW, 0.6, 0.4, 0.25)], background=stripes(256))
    objs = analyse_image(textured)
    assert [(o.shape, o.color) for o in objs] == [("square", "yellow")]
    assert analyse_image(Image.fromarray(stripes(64))) == []
    assert analyse_image(np.full((48, 40, 3), 128, np.uint8)) == []  # non-square, no objects
    # without anti-aliasing, at 128 px, and downsampled from 512 px
    for image in (
        draw(RED_CIRCLE_LEFT_OF_BLUE_SQUARE, supersample=1),
        draw(RED_CIRCLE_LEFT_OF_BLUE_SQUARE, 128),
        draw(RED_CIRCLE_LEFT_OF_BLUE_SQUARE, 512, supersample=1),
    ):
        assert sorted((o.shape, o.color) for o in analyse_image(image)) == [("circle", "red"), ("square", "blue")]
    # specks are ignored, a colour flood is no shape
    speckled = np.asarray(draw([("circle", RED, 0.5, 0.5, 0.3)])).copy()
    speckled[5:7, 5:7] = BLUE
    assert [(o.shape, o.color) for o in analyse_image(speckled)] == [("circle", "red")]
    assert [o.shape for o in analyse_image(np.full((64, 64, 3), RED, np.uint8))] == ["unknown"]


def test_analyser_input_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 32"):
        analyse_image(np.zeros((16, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        analyse_image(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        analyse_image(np.zeros((64, 64), np.uint8))
    with pytest.raises(TypeError):
        analyse_image(42)
    path = tmp_path / "x.png"
    draw(RED_CIRCLE_LEFT_OF_BLUE_SQUARE).save(path)
    assert len(analyse_image(str(path))) == 2


def test_shape_classification_features():
    assert classify_shape(np.pi / 4, 0.5, 0.0) == "circle"
    assert classify_shape(1.0, 0.5, 1.0) == "square"
    assert classify_shape(0.5, 0.25, 1 / 3) == "triangle"
    assert classify_shape(0.5, 0.75, 1 / 3, width_trend=-1.0) == "unknown"  # upside-down triangle
    assert classify_shape(1.0, 0.5, 1.0, aspect=3.0) == "unknown"
    # each rendered shape is recognised as itself (fails if, e.g., circle and square were swapped)
    for shape in ("circle", "square", "triangle"):
        for color in ("red", "yellow", "purple"):
            spec = {"category": "colors", "objects": [{"shape": shape, "color": color, "count": 1}], "relation": None}
            for seed in range(3):
                objs = analyse_image(render(sample_scene(spec, np.random.default_rng(seed))))
                assert [(o.shape, o.color) for o in objs] == [(shape, color)]


@pytest.mark.parametrize(
    "items, prompt, expected",
    [
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a circle", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a triangle", False),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a circle and a square", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a square and a circle", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a circle and a triangle", False),
        (THREE_GREEN_TRIANGLES, "three triangles", True),
        (THREE_GREEN_TRIANGLES, "two triangles", False),
        (THREE_GREEN_TRIANGLES, "four triangles", False),
        (THREE_GREEN_TRIANGLES, "three circles", False),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a red circle", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a blue circle", False),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a blue square", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a circle to the left of a square", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a square to the right of a circle", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a circle to the right of a square", False),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a circle above a square", False),  # horizontal offset dominates
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a circle to the left of a triangle", False),
        ([("circle", RED, 0.5, 0.25, 0.25), ("square", BLUE, 0.45, 0.75, 0.25)], "a circle above a square", True),
        ([("circle", RED, 0.5, 0.25, 0.25), ("square", BLUE, 0.45, 0.75, 0.25)], "a square below a circle", True),
        ([("circle", RED, 0.5, 0.25, 0.25), ("square", BLUE, 0.45, 0.75, 0.25)], "a circle below a square", False),
        (
            [("circle", RED, 0.5, 0.25, 0.25), ("square", BLUE, 0.45, 0.75, 0.25)],
            "a circle to the left of a square",
            False,
        ),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a red circle and a blue square", True),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a blue circle and a red square", False),
        (RED_CIRCLE_LEFT_OF_BLUE_SQUARE, "a red circle and a green square", False),
    ],
)
def test_scoring_rules(items, prompt, expected):
    result = score_image(draw(items), prompt)
    assert bool(result) is expected and result.correct is expected, result.reason
    assert result.category == parse_prompt(prompt)["category"]
    assert result.reason.startswith("correct" if expected else "wrong")


def test_position_needs_a_margin_and_score_accepts_specs_and_objects():
    def obj(shape, x, y):
        return DetectedObject(shape, "red", (x, y), 0.05, (x - 0.1, y - 0.1, x + 0.1, y + 0.1), 1.0, 0.5, 1.0, 0.0)

    assert score_image([obj("circle", 0.3, 0.5), obj("square", 0.7, 0.5)], "a circle to the left of a square")
    assert not score_image([obj("circle", 0.48, 0.5), obj("square", 0.5, 0.5)], "a circle to the left of a square")
    spec = parse_prompt("four squares")
    objs = [obj("square", x, 0.5) for x in (0.1, 0.3, 0.5, 0.7)] + [obj("circle", 0.9, 0.5)]
    assert score_image(objs, spec) and score_image(objs, json.dumps(spec))
    assert not score_image(objs[1:], spec)
    assert not score_image([], "a circle")


def test_parse_prompt_round_trip_and_errors():
    for category in CATEGORIES:
        for spec in compositions(category):
            assert parse_prompt(spec_to_caption(spec)) == spec
    assert parse_prompt("  An Orange   Circle. ") == parse_prompt("an orange circle")
    assert parse_prompt("a triangle below a circle")["relation"] == "below"
    bad_prompts = (
        "a dog",
        "",
        "a circle and a circle",
        "a red circle and a red square",
        "five circles",
        "one circle",
        "a circle left of a square",
        "two red circles",
        "a circle to the left of a circle",
        "circle",
    )
    for bad in bad_prompts:
        with pytest.raises(ValueError, match="grammar"):
            parse_prompt(bad)
    with pytest.raises(TypeError):
        parse_prompt(None)


@pytest.mark.parametrize("size, count", [(64, 180), (128, 48)])
def test_renderer_images_are_scored_correct(size, count):
    records = []
    for i in range(count):
        scene = make_scene("test" if i % 2 else "validation", i)
        image = render_array(scene, size)
        records.append({"image": image, "text": scene.caption})
        found = sorted((o.shape, o.color) for o in analyse_image(image))
        assert found == sorted((o.shape, o.color) for o in scene.objects), scene.caption
    report = evaluate_images(records)
    assert report["overall"] == 1.0 and report["num_correct"] == count
    assert list(report["categories"]) == list(CATEGORIES)


def test_robust_to_pixel_noise():
    rng = np.random.default_rng(0)
    records = []
    for i in range(60):
        scene = make_scene("test", i)
        noisy = np.clip(render_array(scene) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
        records.append((noisy, scene.spec))
    assert evaluate_images(records)["overall"] >= 0.95


def test_report_is_a_mean_over_categories_and_renders_as_markdown():
    image = draw(RED_CIRCLE_LEFT_OF_BLUE_SQUARE)
    records = [{"image": image, "text": "a circle", "file_name": f"{i}.png"} for i in range(3)]
    records.append({"image": image, "spec": parse_prompt("a triangle")})
    records.append((image, "a red square"))
    report = evaluate_images(records)
    assert report["categories"]["single_object"] == {"accuracy": 0.75, "correct": 3, "total": 4}
    assert report["categories"]["colors"]["accuracy"] == 0.0
    assert report["overall"] == pytest.approx(0.375)  # mean over categories, not 3 / 5
    assert report["results"][0]["file_name"] == "0.png" and report["results"][3]["text"] == "a triangle"
    json.dumps(report)
    table = format_report(report)
    assert "| single_object | 75.0% | 3 / 4 |" in table and "**37.5%**" in table and "3 / 5" in table
    with pytest.raises(ValueError, match="`text` or a `spec`"):
        evaluate_images([{"image": image}])


class RenderingPipeline:
    """Stands in for a diffusers-bit pipeline: draws the prompt's scene from each image's generator seed."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, num_images_per_prompt, generator, output_type, **kwargs):
        assert output_type == "pil" and num_images_per_prompt == 1 and len(generator) == len(prompt)
        self.calls.append((len(prompt), kwargs))
        size = kwargs.get("height", 64)
        images = [
            render(sample_scene(parse_prompt(p), np.random.default_rng(g.initial_seed())), size)
            for p, g in zip(prompt, generator)
        ]
        return type("Output", (), {"images": images})()


def test_evaluate_pipeline_with_a_stand_in_pipeline(tmp_path):
    root = tmp_path / "data"
    write_shapes_dataset(root, num_train=1, num_validation=0, num_test=12)
    pipe = RenderingPipeline()
    report, images = evaluate_pipeline(
        pipe,
        root / "prompts_test.jsonl",
        images_per_prompt=3,
        seed=5,
        batch_size=4,
        height=96,
        width=96,
        guidance_scale=2.0,
    )
    n_prompts = len((root / "prompts_test.jsonl").read_text().splitlines())
    assert len(images) == report["num_images"] == 3 * n_prompts and images[0].size == (96, 96)
    assert report["overall"] == 1.0 and set(report["categories"]) == set(CATEGORIES)
    assert [c[0] for c in pipe.calls][:2] == [4, 4]
    assert pipe.calls[0][1] == {"height": 96, "width": 96, "guidance_scale": 2.0}
    assert [r["seed"] for r in report["results"][:4]] == [5, 6, 7, 8] and report["results"][3]["prompt_index"] == 1
    # the images do not depend on the batch size
    _, again = evaluate_pipeline(
        RenderingPipeline(), ["a circle", "two squares"], images_per_prompt=2, seed=5, batch_size=3
    )
    _, single = evaluate_pipeline(
        RenderingPipeline(), ["a circle", "two squares"], images_per_prompt=2, seed=5, batch_size=1
    )
    assert [im.tobytes() for im in again] == [im.tobytes() for im in single]
    with pytest.raises(ValueError, match="grammar"):
        evaluate_pipeline(RenderingPipeline(), ["a circle", "a dog"])
    with pytest.raises(ValueError, match="`images_per_prompt`"):
        evaluate_pipeline(RenderingPipeline(), ["a circle"], images_per_prompt=0)


def test_cli_shapes_eval(tmp_path, capsys):
    root = tmp_path / "data"
    write_shapes_dataset(root, num_train=1, num_validation=0, num_test=12)
    output = tmp_path / "report.json"
    main(["shapes-eval", "--images_dir", str(root / "test"), "--output", str(output)])
    printed = capsys.readouterr().out
    assert "| **overall** (mean over categories) | **100.0%** | 12 / 12 |" in printed
    assert json.loads(output.read_text())["num_images"] == 12
    with pytest.raises(SystemExit, match="already exists"):
        main(["shapes-eval", "--images_dir", str(root / "test"), "--output", str(output)])

    generated = tmp_path / "generated"  # generated images: only file_name and text; one wrong image
    generated.mkdir()
    draw(RED_CIRCLE_LEFT_OF_BLUE_SQUARE).save(generated / "a.png")
    draw(THREE_GREEN_TRIANGLES).save(generated / "b.png")
    rows = [
        {"file_name": "a.png", "text": "a red circle and a blue square"},
        {"file_name": "b.png", "text": "two triangles"},
    ]
    (generated / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["shapes-eval", "--images_dir", str(generated)])
    printed = capsys.readouterr().out
    assert "| color_attr | 100.0% | 1 / 1 |" in printed and "| counting | 0.0% | 0 / 1 |" in printed
    with pytest.raises(SystemExit, match="metadata.jsonl"):
        main(["shapes-eval", "--images_dir", str(tmp_path)])
    (generated / "metadata.jsonl").write_text(json.dumps({"file_name": "missing.png", "text": "a circle"}) + "\n")
    with pytest.raises(SystemExit, match="does not exist"):
        main(["shapes-eval", "--images_dir", str(generated)])
