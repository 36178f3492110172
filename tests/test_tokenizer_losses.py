"""Losses and data pieces of the tokenizer stages: LPIPS (plain-torch VGG16 + heads, published key layouts), the
stage-1 perceptual term (448 resize + same random 224 crop), the DINO discriminator, hinge losses, the adaptive
adversarial weight, decode-size sampling and targets."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from training_helpers import one_thread, shape_image  # noqa: F401 (one_thread: an autouse fixture)

from diffusers_bit import BinaryLatentTokenizer
from diffusers_bit.metrics.lpips import LPIPS, VGG16_CHANNELS, load_perceptual_model, vgg16_layout
from diffusers_bit.presets import load_preset_config
from diffusers_bit.training.data import SkipSample
from diffusers_bit.training.discriminator import (
    DinoDiscriminator,
    adaptive_adversarial_weight,
    build_backbone,
    build_discriminator,
    default_feature_layers,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from diffusers_bit.training.hub import render_tokenizer_card
from diffusers_bit.training.tokenizer_data import (
    TokenizerImageProcessor,
    collate_tokenizer_images,
    decode_target,
    sample_decode_size,
)
from diffusers_bit.training.tokenizer_objectives import last_decoder_layer, perceptual_loss, random_crops

TINY = {"channels": [4, 8, 8, 16, 16]}


def images(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


# ----------------------------------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------------------------------
def test_vgg16_layout_is_torchvision_features():
    convs, taps = vgg16_layout()
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert taps == [3, 8, 15, 22, 29]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    model = LPIPS()
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)] == convs
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16, 23]
    assert sum(p.numel() for p in model.features.parameters()) == 14_714_688  # torchvision vgg16().features


def test_lpips_is_zero_for_identical_images_and_differentiable():
    model = LPIPS.from_config(TINY)
    x, y = images(seed=0), images(seed=1)
    assert model(x, x).item() == 0.0
    assert torch.equal(model(x, x, reduction="none"), torch.zeros(2))
    assert model(x, y).item() > 0
    assert model(x, y, reduction="none").shape == (2,)
    # frozen network, gradients reach the input only
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    x = x.clone().requires_grad_(True)
    model(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # symmetric in value, and it is the LPIPS formula: sum over layers of mean_hw( w . (f_a/|f_a| - f_b/|f_b|)^2 )
    assert torch.allclose(model(x, y), model(y, x.detach()), atol=1e-6)
    a_taps, b_taps = model._taps(x.detach()), model._taps(y)
    manual = sum(
        (
            head.model[1].weight.view(1, -1, 1, 1)
            * (fa / (fa.norm(dim=1, keepdim=True) + 1e-10) - fb / (fb.norm(dim=1, keepdim=True) + 1e-10)).pow(2)
        )
        .sum(1)
        .mean((1, 2))
        for head, fa, fb in zip(model.heads, a_taps, b_taps)
    )
    assert torch.allclose(model(x.detach(), y, reduction="none"), manual, atol=1e-6)


def _fake_vgg16_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    convs, _ = vgg16_layout()
    widths = [w for w, n in zip(VGG16_CHANNELS, (2, 2, 3, 3, 3)) for _ in range(n)]
    state, in_ch = {}, 3
    for index, out_ch in zip(convs, widths):
        state[f"features.{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=g) * 0.01
        state[f"features.{index}.bias"] = torch.randn(out_ch, generator=g)
        in_ch = out_ch
    state["classifier.0.weight"] = torch.zeros(4, 7)  # the rest of torchvision's vgg16() (ignored)
    return state


def _fake_heads(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(VGG16_CHANNELS)}


def test_lpips_loads_torchvision_and_lpips_key_layouts(tmp_path):
    vgg, heads = _fake_vgg16_state(), _fake_heads()
    # 1) torchvision's vgg16() state dict + the official LPIPS heads file, as separate files in a folder
    folder = tmp_path / "lpips-vgg"
    folder.mkdir()
    torch.save(vgg, folder / "vgg16-397923af.pth")
    torch.save(heads, folder / "vgg.pth")
    model = LPIPS.from_pretrained(folder)
    state = model.state_dict()
    assert torch.equal(state["features.28.weight"], vgg["features.28.weight"])
    assert torch.equal(state["features.0.bias"], vgg["features.0.bias"])
    assert all(torch.equal(state[k], v) for k, v in heads.items())

    # 2) a `vgg16().features` state dict ({i}.weight) loads the same
    features_only = {k[len("features.") :]: v for k, v in vgg.items() if k.startswith("features.")}
    other = LPIPS()
    other.load_weights(features_only, {k.replace("lin", "lins.", 1): v for k, v in heads.items()})  # `lins.` alias
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())

    # 3) the lpips package's full-model state dict (net.slice{k}.{i}.* + lin{k}.*) as one file
    _, taps = vgg16_layout()
    bounds = [-1] + taps
    full = {}
    for key, value in vgg.items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            slice_ = next(s for s in range(5) if bounds[s] < index <= bounds[s + 1]) + 1
            full[f"net.slice{slice_}.{index}.{key.split('.')[2]}"] = value
    full.update(heads)
    torch.save(full, tmp_path / "lpips_full.pth")
    from_single = LPIPS.from_pretrained(tmp_path / "lpips_full.pth")
    assert all(torch.equal(from_single.state_dict()[k], v) for k, v in state.items())
    x, y = images(1, 64, 0), images(1, 64, 1)
    assert torch.equal(from_single(x, y), model(x, y))

    # 4) save_pretrained / from_pretrained round trip (also for a narrow test config)
    tiny = LPIPS.from_config(TINY)
    tiny.save_pretrained(tmp_path / "saved")
    again = LPIPS.from_pretrained(tmp_path / "saved")
    assert again.config.channels == TINY["channels"]
    assert all(torch.equal(again.state_dict()[k], v) for k, v in tiny.state_dict().items())

    # 5) clear errors
    broken = dict(vgg)
    del broken["features.14.weight"]
    with pytest.raises(ValueError, match=r"VGG16 weights lack 1 tensors.*features\.14\.weight"):
        LPIPS().load_weights(broken, heads)
    with pytest.raises(ValueError, match="do not fit this LPIPS config"):
        LPIPS.from_config(TINY).load_weights(vgg, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="vgg16-397923af.pth"):
        LPIPS.from_pretrained(tmp_path / "empty")


def test_random_perceptual_models_for_tests_are_reproducible(tmp_path):
    a, b = load_perceptual_model("tiny"), load_perceptual_model("tiny")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    (tmp_path / "lpips.json").write_text(json.dumps(TINY))
    assert load_perceptual_model(str(tmp_path / "lpips.json")).config.channels == TINY["channels"]
    with pytest.raises(ValueError, match="neither a local path nor a reachable Hub repository"):
        load_perceptual_model(str(tmp_path / "does-not-exist"))


# ----------------------------------------------------------------------------------------------------------------------
# Perceptual term: global resize + same random crop of both images
# ----------------------------------------------------------------------------------------------------------------------
class RecordingLPIPS:
    def __init__(self):
        self.calls = []

    def __call__(self, a, b):
        self.calls.append((a.detach().clone(), b.detach().clone()))
        return (a - b).abs().mean()


def test_perceptual_term_resizes_both_and_crops_the_same_window():
    rec, target = images(3, 64, 0), images(3, 64, 1)
    lpips = RecordingLPIPS()
    loss, parts = perceptual_loss(lpips, rec, target, 48, 16, np.random.default_rng(0))
    (g_rec, g_target), (c_rec, c_target) = lpips.calls
    assert g_rec.shape == g_target.shape == (3, 3, 48, 48)  # global term at --perceptual_size
    expected = F.interpolate(rec, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(g_rec, expected)
    assert c_rec.shape == c_target.shape == (3, 3, 16, 16)  # local term at the decode resolution
    (_, _), offsets = random_crops([rec, target], 16, np.random.default_rng(0))
    for b, (top, left) in enumerate(offsets):  # the same window in both images, one window per image
        assert torch.equal(c_rec[b], rec[b, :, top : top + 16, left : left + 16])
        assert torch.equal(c_target[b], target[b, :, top : top + 16, left : left + 16])
    assert len(set(offsets)) > 1
    assert torch.allclose(loss, (parts["lpips_global"] + parts["lpips_crop"]) / 2)  # the mean of both terms
    # seeded: the same rng seed draws the same windows
    again = RecordingLPIPS()
    perceptual_loss(again, rec, target, 48, 16, np.random.default_rng(0))
    assert torch.equal(again.calls[1][0], c_rec)
    # either term can be switched off
    only_global = RecordingLPIPS()
    loss, parts = perceptual_loss(only_global, rec, target, 48, 0, np.random.default_rng(0))
    assert len(only_global.calls) == 1 and set(parts) == {"lpips_global"}


# ----------------------------------------------------------------------------------------------------------------------
# Discriminator
# ----------------------------------------------------------------------------------------------------------------------
def test_default_feature_layers():
    assert default_feature_layers(12) == [2, 5, 8, 11]  # DINO ViT-S/16
    assert default_feature_layers(4) == [0, 1, 2, 3]
    assert default_feature_layers(2) == [0, 1]


def test_discriminator_heads_train_while_the_backbone_stays_frozen():
    torch.manual_seed(0)
    disc = build_discriminator("tiny", head_channels=16)
    disc.train()
    assert not disc.backbone.training and disc.heads.training
    backbone_before = {k: v.clone() for k, v in disc.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in disc.heads.state_dict().items()}
    assert not any(p.requires_grad for p in disc.backbone.parameters())
    assert all(p.requires_grad for p in disc.head_parameters())
    real = torch.tanh(torch.linspace(-2, 2, 48)).view(1, 1, 1, 48).expand(4, 3, 48, 48).contiguous()  # smooth
    fake = images(4, 48, 3)  # noise
    logits = disc(real)
    assert logits.shape == (4, 4 * (32 // 8) ** 2)  # 4 heads x a 4x4 patch grid of the 32 px tiny backbone
    optimizer = torch.optim.AdamW(disc.head_parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = hinge_discriminator_loss(disc(real), disc(fake))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in disc.backbone.parameters())
    assert all(torch.equal(v, backbone_before[k]) for k, v in disc.backbone.state_dict().items())
    assert any(not torch.equal(v, heads_before[k]) for k, v in disc.heads.state_dict().items())
    # the generator gets gradients through the frozen backbone
    generated = fake.clone().requires_grad_(True)
    hinge_generator_loss(disc(generated)).backward()
    assert generated.grad is not None and generated.grad.abs().sum() > 0


def test_discriminator_save_load_and_backbone_from_a_local_folder(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    disc = build_discriminator("tiny", feature_layers=[1, 3], head_channels=8)
    disc.save_pretrained(tmp_path / "disc")
    loaded = DinoDiscriminator.from_pretrained(tmp_path / "disc")
    assert loaded.feature_layers == [1, 3]
    x = images(2, 40)
    assert torch.equal(loaded(x), disc(x))
    # a ViTModel folder (what `facebook/dino-vits16` is on the Hub) loads as the backbone by path
    config = ViTConfig(
        hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48, image_size=32, patch_size=16
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    backbone = build_backbone(str(tmp_path / "vit"))
    assert backbone.config.hidden_size == 24
    disc = DinoDiscriminator(backbone)
    assert disc.feature_layers == [0, 1, 2] and disc(x).shape == (2, 3 * 4)
    (tmp_path / "vits.json").write_text(
        json.dumps(
            {
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "image_size": 16,
                "patch_size": 8,
            }
        )
    )
    assert build_backbone(str(tmp_path / "vits.json")).config.num_hidden_layers == 2


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_discriminator_loss(torch.zeros(3), torch.zeros(3)).item() == 1.0
    assert hinge_generator_loss(fake).item() == pytest.approx(1.5)


def test_adaptive_weight_matches_a_direct_computation():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6))
    critic = nn.Linear(6, 1)
    x, target = torch.randn(4, 5), torch.randn(4, 6)
    last = decoder[2].weight

    def losses():
        out = decoder(x)
        return F.smooth_l1_loss(out, target), hinge_generator_loss(critic(out))

    rec, adv = losses()
    weight = adaptive_adversarial_weight(rec, adv, last)
    assert all(p.grad is None for p in decoder.parameters())  # nothing accumulated into .grad
    # direct: two separate backward passes
    decoder.zero_grad()
    losses()[0].backward()
    g_rec = last.grad.clone()
    decoder.zero_grad()
    losses()[1].backward()
    g_adv = last.grad.clone()
    expected = g_rec.norm() / (g_adv.norm() + 1e-4)
    assert weight.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not weight.requires_grad
    # the graph is still usable afterwards, and the clamp applies
    (rec + weight * adv).backward()
    rec, adv = losses()
    assert adaptive_adversarial_weight(rec, adv, last, max_weight=1e-3).item() == pytest.approx(1e-3)
    assert adaptive_adversarial_weight(rec, 0 * adv, last).item() == pytest.approx(g_rec.norm().item() / 1e-4, rel=1e-4)


def test_last_decoder_layer_is_the_pixel_head_output_layer():
    config = load_preset_config("tiny", "image_tokenizer")
    linear = BinaryLatentTokenizer.from_config(config)
    assert last_decoder_layer(linear) is linear.pixel_head.proj.weight
    conv = BinaryLatentTokenizer.from_config({**config, "pixel_head_type": "conv"})
    assert last_decoder_layer(conv) is conv.pixel_head.layers[-1].weight
    assert last_decoder_layer(conv).shape[0] == 3  # the convolution that writes RGB


# ----------------------------------------------------------------------------------------------------------------------
# Decode sizes and targets
# ----------------------------------------------------------------------------------------------------------------------
def test_decode_sizes_are_seeded_and_independent_of_the_process():
    sizes = [64, 96, 128]
    draws = [sample_decode_size(sizes, 7, 0, k) for k in range(300)]
    assert draws == [sample_decode_size(sizes, 7, 0, k) for k in range(300)]
    counts = Counter(draws)
    assert set(counts) == set(sizes) and min(counts.values()) > 60  # about uniform
    assert draws != [sample_decode_size(sizes, 8, 0, k) for k in range(300)]
    assert sample_decode_size([64], 7, 0, 3) == 64


def test_processor_keeps_a_source_crop_and_targets_have_the_decode_size():
    image = shape_image(2, (150, 120))
    processor = TokenizerImageProcessor(64, source_size=128, min_size=64)
    sample = processor({"image": image})
    assert sample["pixel_values"].shape == (3, 64, 64) and sample["pixel_values"].dtype == torch.float32
    assert sample["source"].shape == (3, 128, 128) and sample["source"].dtype == torch.uint8
    batch = collate_tokenizer_images([sample, processor({"image": shape_image(0, (150, 120))})])
    assert decode_target(batch, 64, "cpu") is batch["pixel_values"] or torch.equal(
        decode_target(batch, 64, "cpu"), batch["pixel_values"]
    )
    for size in (96, 128):
        target = decode_target(batch, size, "cpu")
        assert target.shape == (2, 3, size, size) and target.min() >= -1 and target.max() <= 1
    # the source shows the same region as the encoder input: downsampled, it is close to pixel_values
    down = decode_target({"pixel_values": torch.zeros(2, 3, 32, 32), "source": batch["source"]}, 64, "cpu")
    assert (down - batch["pixel_values"]).abs().mean() < 0.05
    with pytest.raises(SkipSample, match="too_small"):
        processor({"image": Image.new("RGB", (50, 200))})
    assert "source" not in TokenizerImageProcessor(64)({"image": image})  # stage 1: no source kept


def test_tokenizer_model_card_renders():
    tokenizer = BinaryLatentTokenizer.from_config(load_preset_config("tiny", "image_tokenizer"))
    card = render_tokenizer_card(
        tokenizer,
        "me/tok",
        2,
        {"data": "some images", "steps": 7, "hyperparameters": {"lr": 1}, "metrics": {"psnr": 20}},
    )
    assert card.startswith("---\n") and "tokenizer-stage-2" in card
    for expected in (
        "16 tokens of 16 bits (32 bytes)",
        "64x64, 96x96, 128x128",
        "**Steps:** 7",
        "| lr | 1 |",
        "| psnr | 20 |",
        "stage 2",
        'BinaryLatentTokenizer.from_pretrained("me/tok")',
    ):
        assert expected in card, expected
