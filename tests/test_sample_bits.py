"""The one tempered-Bernoulli rule that turns bit logits into bits (`sample_bits`, `tempered_sigmoid`), used by the
scheduler, the AR pipeline and the tokenizer's quantizer."""

import pytest
import torch
from model_helpers import gen

from diffusers_bit import BernoulliScheduler, BinaryQuantizer
from diffusers_bit.utils.torch_utils import sample_bits, tempered_sigmoid

TIE_LOGITS = torch.tensor([[-2.0, -1e-30, 0.0, -0.0, 1e-30, 3.0]])


def test_temperature_zero_is_greedy_with_ties_to_zero():
    assert sample_bits(TIE_LOGITS, 0.0).tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]]
    assert sample_bits(torch.tensor([float("nan")]), 0).tolist() == [0.0]
    # the probability form of the same limit: a tie is 1/2, and the greedy bit is 1 exactly where p > 1/2
    probs = tempered_sigmoid(TIE_LOGITS, 0.0)
    assert probs.tolist() == [[0.0, 0.0, 0.5, 0.5, 1.0, 1.0]]
    assert torch.equal(sample_bits(TIE_LOGITS, 0.0), (probs > 0.5).float())


def test_temperature_zero_draws_no_random_numbers():
    logits = torch.randn(4, 8, 16, generator=gen(0))
    generator = gen(3)
    state = generator.get_state()
    a = sample_bits(logits, 0.0, generator)
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(a, sample_bits(logits, 0, gen(4)))
    assert torch.equal(a, (logits > 0).float())


def test_greedy_uses_the_logits_not_a_rounded_sigmoid():
    # sigmoid(0.004) rounds to exactly 0.5 in bfloat16: a threshold on the probability would give 0
    logits = torch.tensor([0.004, -0.004], dtype=torch.bfloat16)
    assert (torch.sigmoid(logits) > 0.5).tolist() == [False, False]
    assert sample_bits(logits, 0.0).tolist() == [1.0, 0.0]


def test_small_temperatures_tend_to_greedy():
    logits = torch.randn(2, 16, 16, generator=gen(1))
    logits = logits + logits.sign() * 0.1  # away from the tie
    assert torch.equal(sample_bits(logits, 1e-4, gen(2)), sample_bits(logits, 0.0))
    torch.testing.assert_close(tempered_sigmoid(logits, 1e-4), tempered_sigmoid(logits, 0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_positive_temperature_is_bernoulli_of_the_tempered_sigmoid(temperature):
    logits = torch.tensor([-3.0, -0.7, 0.0, 0.4, 2.5])
    rows = 20000
    bits = sample_bits(logits.repeat(rows, 1), temperature, gen(0))
    expected = torch.sigmoid(logits / temperature)
    std = (expected * (1 - expected) / rows).sqrt()
    assert ((bits.mean(0) - expected).abs() <= 4 * std).all()


def test_positive_temperature_draw_rule_is_pinned():
    # one float32 uniform per bit, `u < p`: the seeded outputs of the pipelines and scheduler depend on it
    logits = torch.randn(3, 8, 16, generator=gen(5)) * 2
    uniform = torch.rand(logits.shape, generator=gen(6))
    assert torch.equal(sample_bits(logits, 0.7, gen(6)), (uniform < torch.sigmoid(logits / 0.7)).float())
    # temperature only divides the logits
    assert torch.equal(sample_bits(logits, 0.5, gen(7)), sample_bits(logits / 0.5, 1.0, gen(7)))


def test_reproducible_with_a_generator_and_per_row_generators():
    logits = torch.randn(3, 8, 16, generator=gen(8))
    a, b, c = (sample_bits(logits, 1.0, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    rows = sample_bits(logits, 1.0, [gen(10), gen(11), gen(12)])
    for index, seed in enumerate((10, 11, 12)):
        assert torch.equal(rows[index : index + 1], sample_bits(logits[index : index + 1], 1.0, gen(seed)))
    with pytest.raises(ValueError, match="generators"):
        sample_bits(logits, 1.0, [gen(0), gen(1)])


@pytest.mark.parametrize("shape", [(5,), (2, 7), (2, 3, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_shapes_and_dtypes(shape, dtype, temperature):
    logits = torch.randn(shape, generator=gen(0)).to(dtype)
    bits = sample_bits(logits, temperature, gen(1))
    assert bits.shape == logits.shape and bits.dtype == torch.float32
    assert set(bits.unique().tolist()) <= {0.0, 1.0}
    assert tempered_sigmoid(logits, temperature).dtype == torch.float32


@pytest.mark.parametrize("temperature", [-0.1, float("nan")])
def test_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        sample_bits(torch.zeros(2), temperature)
    with pytest.raises(ValueError, match="temperature"):
        tempered_sigmoid(torch.zeros(2), temperature)


@torch.no_grad()
def test_call_sites_use_the_shared_rule():
    logits = torch.randn(2, 4, 8, generator=gen(0)) * 2
    # the quantizer: greedy without sampling (or at temperature 0), the shared draw with sampling
    quantizer = BinaryQuantizer(dim=6, bits_per_token=8)
    features = torch.randn(2, 4, 6, generator=gen(1))
    own = quantizer.proj(features)
    assert torch.equal(quantizer(features).bits, sample_bits(own, 0.0))
    assert torch.equal(quantizer(features, sample=True, temperature=0.0, generator=gen(2)).bits, sample_bits(own, 0.0))
    sampled = quantizer(features, sample=True, temperature=0.5, generator=gen(2)).bits
    assert torch.equal(sampled, sample_bits(own, 0.5, gen(2)))
    # the scheduler: the flip probability of p(z_0 = 1) is the tempered sigmoid, at temperature 0 too
    z = torch.randint(0, 2, logits.shape, generator=gen(3)).float()
    for temperature in (0.0, 0.7):
        flip = tempered_sigmoid(logits, temperature)
        torch.testing.assert_close(
            BernoulliScheduler.predict_original(logits, z, temperature), z * (1 - flip) + (1 - z) * flip, atol=0, rtol=0
        )
