"""One rule for the kind of text encoder (`diffusers_bit.utils.text_encoders`): decoder-only LMs get left padding and
load with `AutoModelForCausalLM`, encoders get right padding and `AutoModel`, alike in the pipelines, the training
text features and the component loaders; the training package imports nothing from the pipelines."""

import ast
from pathlib import Path

import pytest
import torch

import diffusers_bit
from diffusers_bit import build_pipeline
from diffusers_bit.pipelines import pipeline_instella_common
from diffusers_bit.training import components, objectives
from diffusers_bit.utils import text_encoders
from diffusers_bit.utils.text_encoders import auto_text_model_class, is_causal_lm, text_padding_side

PACKAGE = Path(diffusers_bit.__file__).resolve().parent


def _configs():
    from transformers import BertConfig, OlmoConfig

    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    return {
        "olmo": (OlmoConfig(**small, architectures=["OlmoForCausalLM"]), True),
        "bert": (BertConfig(**small, architectures=["BertModel"]), False),
        "bert-decoder": (BertConfig(**small, is_decoder=True, architectures=["BertModel"]), True),
    }


@pytest.mark.parametrize("name", ["olmo", "bert", "bert-decoder"])
def test_a_config_and_the_model_loaded_from_it_are_of_one_kind(name):
    config, causal = _configs()[name]
    assert is_causal_lm(config) is causal
    model = auto_text_model_class(config).from_config(config)
    assert ("CausalLM" in type(model).__name__ or type(model).__name__.endswith("LMHeadModel")) is causal
    assert is_causal_lm(model) is causal
    assert text_padding_side(model) == ("left" if causal else "right")


def test_objects_without_a_config():
    class FakeForCausalLM(torch.nn.Module):
        pass

    assert is_causal_lm(FakeForCausalLM()) and not is_causal_lm(torch.nn.Identity()) and not is_causal_lm(None)


def test_pipelines_training_and_loaders_share_the_rule(monkeypatch):
    assert objectives.is_causal_lm is text_encoders.is_causal_lm
    assert components.auto_text_model_class is text_encoders.auto_text_model_class
    assert pipeline_instella_common.text_padding_side is text_encoders.text_padding_side
    # the pipeline asks the rule at call time: a change of the rule changes its padding
    pipe = build_pipeline("tiny", "diffusion", seed=0)
    _, mask, _, _ = pipe.encode_prompt(["a", "a longer prompt"], do_classifier_free_guidance=False)
    assert mask[0, 0] == 0 and mask[0, -1] == 1  # OLMo: left padding
    monkeypatch.setattr(text_encoders, "is_causal_lm", lambda model: False)
    _, mask, _, _ = pipe.encode_prompt(["a", "a longer prompt"], do_classifier_free_guidance=False)
    assert mask[0, 0] == 1 and mask[0, -1] == 0


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules `path` imports (relative imports resolved), lazy imports included."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.append(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_lower_layers_import_nothing_from_the_pipelines():
    offenders = {}
    for folder in ("training", "utils", "metrics"):
        for path in (PACKAGE / folder).rglob("*.py"):
            found = [n for n in _imports(path) if n.startswith("diffusers_bit.pipelines")]
            if found:
                offenders[path.name] = found
    assert offenders == {}


def test_the_causal_rule_is_written_once():
    """The string the rule looks for appears in no other module of the package (the converter, which always loads
    the authors' AMD-OLMo as a causal LM, names the transformers class only)."""
    places = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("CausalLM", "is_decoder"):
                places.add(path.relative_to(PACKAGE).as_posix())
    assert places == {"utils/text_encoders.py"}
