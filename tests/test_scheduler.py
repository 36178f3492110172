"""BernoulliScheduler: schedule, forward process, flip-logit parameterisation, sampling steps and training loss.

The statistical checks draw many Bernoulli samples from a seeded generator and compare the empirical frequency with
a hand-computed probability within 4 binomial standard deviations (the seeds make them deterministic).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from diffusers_bit import BernoulliScheduler

NUM_DRAWS = 20000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _assert_frequency(draws: torch.Tensor, p: float, sigmas: float = 4.0) -> None:
    """Empirical mean of 0/1 `draws` equals `p` within `sigmas` binomial standard deviations."""
    n = draws.numel()
    mean = draws.double().mean().item()
    tol = sigmas * math.sqrt(p * (1 - p) / n) + 1e-12
    assert abs(mean - p) <= tol, f"empirical frequency {mean:.5f} vs expected {p:.5f} (tolerance {tol:.5f}, n={n})"


def _full(value: float, n: int = NUM_DRAWS) -> torch.Tensor:
    return torch.full((1, n, 1), float(value))


def _one_step(index, x0, z, num_steps=4, seed=0, **config):
    """Run `step` at `timesteps[index]` on `NUM_DRAWS` identical bits whose prediction is `p(z0=1) = x0`."""
    scheduler = BernoulliScheduler(**config)
    scheduler.set_timesteps(num_steps)
    # flip probability p: x0 = z (1 - p) + (1 - z) p
    flip = 1 - x0 if z == 1 else x0
    out = scheduler.step(_full(_logit(flip)), scheduler.timesteps[index], _full(z), generator=_gen(seed))
    torch.testing.assert_close(out.pred_original_sample, _full(x0), atol=1e-6, rtol=0)
    return out.prev_sample


# ----------------------------------------------------------------------------------------------------------------------
# Schedule and config validation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rho, expected",
    [(1.0, [1.0, 0.75, 0.5, 0.25]), (2.0, [1.0, 0.5625, 0.25, 0.0625]), (0.5, [1.0, 0.75**0.5, 0.5**0.5, 0.5])],
)
def test_set_timesteps_values(rho, expected):
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(4, rho=rho)
    assert scheduler.timesteps.dtype == torch.float32
    assert scheduler.timesteps.shape == (4,)
    assert len(scheduler) == 4 and scheduler.num_inference_steps == 4
    assert scheduler.timesteps[0].item() == 1.0
    torch.testing.assert_close(scheduler.timesteps, torch.tensor(expected), atol=1e-7, rtol=0)


def test_set_timesteps_uses_config_rho_and_single_step():
    scheduler = BernoulliScheduler(rho=2.0)
    scheduler.set_timesteps(4)
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1.0, 0.5625, 0.25, 0.0625]), atol=1e-7, rtol=0)
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [1.0]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4", None])
def test_set_timesteps_rejects_bad_num_steps(bad):
    with pytest.raises(ValueError, match="num_inference_steps"):
        BernoulliScheduler().set_timesteps(bad)


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan"), float("inf"), True, "2"])
def test_bad_rho_rejected(bad):
    with pytest.raises(ValueError, match="rho"):
        BernoulliScheduler().set_timesteps(4, rho=bad)
    with pytest.raises(ValueError, match="rho"):
        BernoulliScheduler(rho=bad)


@pytest.mark.parametrize(
    "name, value",
    [("algorithm", "ddpm"), ("posterior_keep_rate", "approx"), ("timestep_distribution", "normal")],
)
def test_bad_config_choices_rejected(name, value):
    with pytest.raises(ValueError, match=name):
        BernoulliScheduler(**{name: value})


def test_bad_overrides_at_call_time_rejected():
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="algorithm"):
        scheduler.step(torch.zeros(1, 4, 1), 1.0, torch.zeros(1, 4, 1), algorithm="ddim")
    with pytest.raises(ValueError, match="distribution"):
        scheduler.sample_timesteps(4, distribution="beta")
    with pytest.raises(ValueError, match="temperature"):
        BernoulliScheduler.predict_original(torch.zeros(2), torch.zeros(2), temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        BernoulliScheduler.predict_original(torch.zeros(2), torch.zeros(2), temperature=float("nan"))


def test_config_save_load_round_trip(tmp_path):
    scheduler = BernoulliScheduler(
        algorithm="posterior",
        rho=1.7,
        posterior_keep_rate="exact",
        timestep_distribution="uniform",
        logit_mean=0.25,
        logit_std=1.5,
    )
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = BernoulliScheduler.from_pretrained(tmp_path)
    for key in ("algorithm", "rho", "posterior_keep_rate", "timestep_distribution", "logit_mean", "logit_std"):
        assert loaded.config[key] == scheduler.config[key], key
    assert loaded.config.algorithm == "posterior" and loaded.config.rho == 1.7
    loaded.set_timesteps(3)
    scheduler.set_timesteps(3)
    assert torch.equal(loaded.timesteps, scheduler.timesteps)


# ----------------------------------------------------------------------------------------------------------------------
# Forward process
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z0_value", [0.0, 1.0])
def test_add_noise_at_t1_is_pure_noise(z0_value):
    scheduler = BernoulliScheduler()
    noisy = scheduler.add_noise(_full(z0_value), 1.0, generator=_gen(1))
    assert set(noisy.unique().tolist()) <= {0.0, 1.0}
    _assert_frequency(noisy, 0.5)


def test_add_noise_at_t0_is_identity():
    scheduler = BernoulliScheduler()
    z0 = torch.randint(0, 2, (3, 64, 16)).float()
    assert torch.equal(scheduler.add_noise(z0, 0.0, generator=_gen(2)), z0)
    assert torch.equal(scheduler.add_noise(z0, torch.zeros(3), generator=_gen(3)), z0)


@pytest.mark.parametrize("z0_value, expected", [(0.0, 0.15), (1.0, 0.85)])
def test_add_noise_marginal_at_intermediate_time(z0_value, expected):
    # P(z_t = 1) = (1 - t) z0 + t/2 with t = 0.3
    noisy = BernoulliScheduler().add_noise(_full(z0_value), 0.3, generator=_gen(4))
    _assert_frequency(noisy, expected)


def test_add_noise_per_row_timesteps():
    scheduler = BernoulliScheduler()
    z0 = torch.ones(3, NUM_DRAWS, 1)
    z0[1] = 0
    noisy = scheduler.add_noise(z0, torch.tensor([0.0, 0.3, 1.0]), generator=_gen(5))
    assert noisy.shape == z0.shape and noisy.dtype == z0.dtype
    assert torch.equal(noisy[0], z0[0])  # t = 0
    _assert_frequency(noisy[1], 0.15)  # z0 = 0, t = 0.3
    _assert_frequency(noisy[2], 0.5)  # t = 1


def test_add_noise_keeps_dtype_and_is_reproducible():
    scheduler = BernoulliScheduler()
    z0 = torch.randint(0, 2, (2, 32, 8)).to(torch.bfloat16)
    a = scheduler.add_noise(z0, 0.5, generator=_gen(6))
    b = scheduler.add_noise(z0, 0.5, generator=_gen(6))
    assert a.dtype == torch.bfloat16
    assert torch.equal(a, b)


def test_initial_sample_is_uniform_noise():
    scheduler = BernoulliScheduler()
    a = scheduler.initial_sample((1, NUM_DRAWS, 1), generator=_gen(7))
    assert torch.equal(a, scheduler.initial_sample((1, NUM_DRAWS, 1), generator=_gen(7)))
    assert set(a.unique().tolist()) == {0.0, 1.0}
    _assert_frequency(a, 0.5)


# ----------------------------------------------------------------------------------------------------------------------
# Flip-logit parameterisation
# ----------------------------------------------------------------------------------------------------------------------

_S2 = 1 / (1 + math.exp(-2.0))  # sigmoid(2)
_S4 = 1 / (1 + math.exp(-4.0))  # sigmoid(4) = sigmoid(2 / 0.5)


@pytest.mark.parametrize(
    "z, f, temperature, expected",
    [
        (0.0, 0.0, 1.0, 0.5),
        (1.0, 0.0, 1.0, 0.5),
        (0.0, 2.0, 1.0, _S2),  # z=0 flipped with prob sigmoid(2): p(z0=1) = p(flip)
        (1.0, 2.0, 1.0, 1 - _S2),
        (0.0, -2.0, 1.0, 1 - _S2),
        (1.0, -2.0, 1.0, _S2),
        (0.0, 2.0, 0.5, _S4),
        (1.0, 2.0, 0.5, 1 - _S4),
        (1.0, -2.0, 0.5, _S4),
        (0.0, 2.0, 0.0, 1.0),
        (1.0, 2.0, 0.0, 0.0),
        (0.0, -2.0, 0.0, 0.0),
        (1.0, -2.0, 0.0, 1.0),
        (0.0, 0.0, 0.0, 0.5),
        (1.0, 0.0, 0.0, 0.5),
    ],
)
def test_predict_original_hand_computed(z, f, temperature, expected):
    out = BernoulliScheduler.predict_original(torch.tensor([f]), torch.tensor([z]), temperature)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_predict_original_temperature_zero_is_hard():
    f = torch.randn(4, 32, 8) * 3
    z = torch.randint(0, 2, (4, 32, 8)).float()
    hard = BernoulliScheduler.predict_original(f, z, 0.0)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    # equals the limit of small temperatures
    soft = BernoulliScheduler.predict_original(f, z, 1e-4)
    torch.testing.assert_close(hard, soft, atol=1e-3, rtol=0)


def test_original_logits_sign_rule():
    f = torch.tensor([1.5, -0.5, 2.0, -3.0])
    z = torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(BernoulliScheduler.original_logits(f, z), torch.tensor([1.5, -0.5, -2.0, 3.0]))
    # sigmoid of it is p(z0 = 1)
    torch.testing.assert_close(
        torch.sigmoid(BernoulliScheduler.original_logits(f, z)),
        BernoulliScheduler.predict_original(f, z),
        atol=1e-6,
        rtol=0,
    )


def test_loss_matches_authors_formula_and_probability_bce():
    scheduler = BernoulliScheduler()
    g = _gen(8)
    f = torch.randn(3, 16, 8, generator=g) * 2
    z_t = torch.randint(0, 2, (3, 16, 8), generator=g).float()
    z0 = torch.randint(0, 2, (3, 16, 8), generator=g).float()
    authors = F.binary_cross_entropy_with_logits(z_t * (-f) + (1 - z_t) * f, z0)
    torch.testing.assert_close(scheduler.loss(f, z_t, z0), authors, atol=1e-6, rtol=1e-6)
    # the same with probabilities: BCE(p(z0=1), z0), p(z0=1) = z (1 - p) + (1 - z) p, p = sigmoid(f)
    p = torch.sigmoid(f)
    p_one = z_t * (1 - p) + (1 - z_t) * p
    direct = -(z0 * p_one.log() + (1 - z0) * (1 - p_one).log())
    torch.testing.assert_close(scheduler.loss(f, z_t, z0), direct.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scheduler.loss(f, z_t, z0, reduction="none"), direct, atol=1e-5, rtol=1e-5)


def test_loss_hand_value_and_stable_for_large_logits():
    scheduler = BernoulliScheduler()
    # z_t = 0, f = 0: p(z0=1) = 1/2 -> loss log 2 whatever z0
    assert scheduler.loss(torch.zeros(4), torch.zeros(4), torch.tensor([0.0, 1.0, 0.0, 1.0])).item() == pytest.approx(
        math.log(2), abs=1e-6
    )
    # confident and right (z_t=1 not flipped, z0=1): ~0; confident and wrong: ~|f|
    f = torch.tensor([-50.0, -50.0])
    loss = scheduler.loss(f, torch.ones(2), torch.tensor([1.0, 0.0]), reduction="none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, torch.tensor([0.0, 50.0]), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling steps
# ----------------------------------------------------------------------------------------------------------------------

# step index 1 of N = 4 (t = 0.75 -> t' = 0.5) and index 2 (t = 0.5 -> t' = 0.25), hand-computed from
# A1 = [(1-t') x0 + t'/2] [k z + (1-k)/2], A0 = [(1-t')(1-x0) + t'/2] [k (1-z) + (1-k)/2], P = A1 / (A0 + A1)
# official k = 1 - (t - t') (0.75 in both cases); exact k = (1 - t) / (1 - t') (1/2, then 2/3)
POSTERIOR_CASES = [
    # index, x0, z, official, exact, simplified
    (1, 0.8, 1.0, 13 / 14, 39 / 46, 0.65),
    (1, 0.8, 0.0, 13 / 62, 13 / 34, 0.65),
    (2, 0.3, 1.0, 49 / 62, 35 / 48, 0.35),
    (2, 0.3, 0.0, 1 / 14, 7 / 72, 0.35),
]


@pytest.mark.parametrize("index, x0, z, official, exact, simplified", POSTERIOR_CASES)
def test_posterior_step_matches_closed_form(index, x0, z, official, exact, simplified):
    draws_official = _one_step(index, x0, z, algorithm="posterior", posterior_keep_rate="official", seed=10)
    _assert_frequency(draws_official, official)
    draws_exact = _one_step(index, x0, z, algorithm="posterior", posterior_keep_rate="exact", seed=11)
    _assert_frequency(draws_exact, exact)
    # the cases are chosen so that the two keep rates are far apart: the 4-sigma windows above do not overlap
    window = sum(4 * math.sqrt(p * (1 - p) / NUM_DRAWS) for p in (official, exact))
    assert abs(official - exact) > window


@pytest.mark.parametrize("index, x0, z, official, exact, simplified", POSTERIOR_CASES)
def test_simplified_step_renoises_prediction(index, x0, z, official, exact, simplified):
    draws = _one_step(index, x0, z, algorithm="simplified", seed=12)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    _assert_frequency(draws, simplified)  # (1 - t') x0 + t'/2, independent of z


def test_algorithm_override_at_call_time():
    scheduler = BernoulliScheduler(algorithm="simplified", posterior_keep_rate="exact")
    scheduler.set_timesteps(4)
    out = scheduler.step(_full(_logit(0.2)), 0.75, _full(1.0), generator=_gen(13), algorithm="posterior")
    _assert_frequency(out.prev_sample, 39 / 46)


@pytest.mark.parametrize("z", [0.0, 1.0])
def test_exact_posterior_at_first_step_equals_simplified(z):
    # at t = 1 the exact keep rate is 0: the likelihood of z is flat, the posterior is the re-noised prediction
    x0, t_next = 0.8, 0.75
    expected = (1 - t_next) * x0 + t_next / 2  # 0.575
    exact = _one_step(0, x0, z, algorithm="posterior", posterior_keep_rate="exact", seed=14)
    simplified = _one_step(0, x0, z, algorithm="simplified", seed=14)
    _assert_frequency(exact, expected)
    _assert_frequency(simplified, expected)
    # same probabilities + same generator -> (up to rounding of the probabilities) the same draws
    assert (exact != simplified).float().mean().item() < 1e-3
    # whereas the official keep rate (k = t' = 0.75 at t = 1) still trusts z
    official = _one_step(0, x0, z, algorithm="posterior", posterior_keep_rate="official", seed=14)
    assert abs(official.mean().item() - expected) > 0.1


@pytest.mark.parametrize("algorithm", ["simplified", "posterior"])
def test_last_step_is_deterministic_threshold(algorithm):
    g = _gen(15)
    f = torch.randn(2, 64, 8, generator=g) * 3
    z = torch.randint(0, 2, (2, 64, 8), generator=g).float()
    outs = []
    for seed in (0, 1):
        scheduler = BernoulliScheduler(algorithm=algorithm)
        scheduler.set_timesteps(4)
        out = scheduler.step(f, scheduler.timesteps[3], z, generator=_gen(seed), temperature=0.7)
        x0 = BernoulliScheduler.predict_original(f, z, 0.7)
        torch.testing.assert_close(out.pred_original_sample, x0, atol=0, rtol=0)
        assert torch.equal(out.prev_sample, (x0 > 0.5).float())
        outs.append(out.prev_sample)
    assert torch.equal(outs[0], outs[1])
    # and without any generator
    scheduler = BernoulliScheduler(algorithm=algorithm)
    scheduler.set_timesteps(4)
    assert torch.equal(scheduler.step(f, 0.25, z).prev_sample, outs[0])


def test_full_sampling_loop_with_confident_model_recovers_target():
    target = torch.randint(0, 2, (2, 32, 8)).float()
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(5)
    sample = scheduler.initial_sample(target.shape, generator=_gen(16))
    for t in scheduler.timesteps:
        # flip logit +10 where the bit is wrong, -10 where it is right
        logits = 10.0 * (2 * (sample != target).float() - 1)
        sample = scheduler.step(logits, t, sample, generator=_gen(17)).prev_sample
    assert scheduler.step_index == 5
    assert torch.equal(sample, target)


def _step_draws(generator, index=1, shape=(3, 4096, 1)):
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(4)
    return scheduler.step(torch.zeros(shape), scheduler.timesteps[index], torch.zeros(shape), generator=generator)


def test_seeded_generators_reproducible():
    a = _step_draws(_gen(20)).prev_sample
    b = _step_draws(_gen(20)).prev_sample
    c = _step_draws(_gen(21)).prev_sample
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a != c).float().mean().item() > 0.3  # independent fair-ish coins differ about half the time


def test_generator_list_gives_per_row_draws():
    seeds = [30, 31, 32]
    batched = _step_draws([_gen(s) for s in seeds]).prev_sample
    for row, seed in enumerate(seeds):
        alone = _step_draws(_gen(seed), shape=(1, 4096, 1)).prev_sample
        assert torch.equal(batched[row : row + 1], alone)
    assert not torch.equal(batched[0], batched[1])
    # add_noise follows the same convention
    z0 = torch.zeros(3, 4096, 1)
    noisy = BernoulliScheduler().add_noise(z0, 1.0, generator=[_gen(s) for s in seeds])
    assert torch.equal(noisy[1:2], BernoulliScheduler().add_noise(z0[1:2], 1.0, generator=_gen(31)))
    with pytest.raises(ValueError, match="generators"):
        _step_draws([_gen(0), _gen(1)])


def test_step_requires_set_timesteps():
    with pytest.raises(ValueError, match="set_timesteps"):
        BernoulliScheduler().step(torch.zeros(1, 4, 1), 1.0, torch.zeros(1, 4, 1))


def test_step_rejects_timestep_not_in_schedule():
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(torch.zeros(1, 4, 1), 0.6, torch.zeros(1, 4, 1))


def test_step_index_advances_and_dtype_kept():
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(3)
    assert scheduler.step_index is None
    sample = torch.zeros(1, 8, 4, dtype=torch.bfloat16)
    for i, t in enumerate(scheduler.timesteps):
        out = scheduler.step(torch.zeros(1, 8, 4), t, sample, generator=_gen(i))
        assert scheduler.step_index == i + 1
        assert out.prev_sample.dtype == torch.bfloat16
        assert out.pred_original_sample.dtype == torch.float32
    # the first lookup uses the given timestep: starting at the second entry
    scheduler.set_timesteps(3)
    scheduler.step(torch.zeros(1, 8, 4), scheduler.timesteps[1], sample)
    assert scheduler.step_index == 2
    # tuple output
    scheduler.set_timesteps(3)
    prev, x0 = scheduler.step(torch.zeros(1, 8, 4), 1.0, sample, return_dict=False)
    assert prev.shape == x0.shape == (1, 8, 4)


def test_set_begin_index():
    g = _gen(40)
    f = torch.randn(2, 64, 8, generator=g)
    z = torch.randint(0, 2, (2, 64, 8), generator=g).float()
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(4)
    scheduler.set_begin_index(3)
    assert scheduler.begin_index == 3
    # begin index 3 is the last step: deterministic threshold, whatever timestep value is passed
    out = scheduler.step(f, scheduler.timesteps[0], z, generator=_gen(41))
    assert scheduler.step_index == 4
    assert torch.equal(out.prev_sample, (BernoulliScheduler.predict_original(f, z) > 0.5).float())
    # begin index 2: t = 0.5 -> t' = 0.25, simplified P = 0.75 x0 + 0.125 = 0.35 for x0 = 0.3
    scheduler.set_timesteps(4)
    scheduler.set_begin_index(2)
    out = scheduler.step(_full(_logit(0.3)), scheduler.timesteps[0], _full(0.0), generator=_gen(42))
    assert scheduler.step_index == 3
    _assert_frequency(out.prev_sample, 0.35)
    # set_timesteps resets the begin index
    scheduler.set_timesteps(4)
    assert scheduler.begin_index is None and scheduler.step_index is None


def test_scale_model_input_is_identity():
    sample = torch.randint(0, 2, (1, 8, 4)).float()
    assert BernoulliScheduler().scale_model_input(sample, 0.5) is sample


# ----------------------------------------------------------------------------------------------------------------------
# Training-time timesteps
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("logit_mean, logit_std", [(0.0, 1.0), (0.0, 2.0), (1.0, 0.5)])
def test_sample_timesteps_logit_normal(logit_mean, logit_std):
    n = 200_000
    scheduler = BernoulliScheduler(logit_mean=logit_mean, logit_std=logit_std)
    t = scheduler.sample_timesteps(n, generator=_gen(50))
    assert t.shape == (n,) and t.dtype == torch.float32
    assert bool(((t > 0) & (t < 1)).all())
    # median of sigmoid(N(m, s)) is sigmoid(m); std error of a sample median ~ 1.25 sigma / sqrt(n)
    median = t.median().item()
    assert median == pytest.approx(1 / (1 + math.exp(-logit_mean)), abs=0.01)
    logits = torch.logit(t.double())
    assert logits.mean().item() == pytest.approx(logit_mean, abs=4 * logit_std / math.sqrt(n))
    assert logits.std().item() == pytest.approx(logit_std, rel=0.02)


def test_sample_timesteps_uniform():
    n = 200_000
    scheduler = BernoulliScheduler(timestep_distribution="uniform")
    t = scheduler.sample_timesteps(n, generator=_gen(51))
    assert bool(((t >= 0) & (t < 1)).all())
    assert t.mean().item() == pytest.approx(0.5, abs=4 * math.sqrt(1 / 12 / n))
    assert t.var().item() == pytest.approx(1 / 12, rel=0.02)
    # uniform, not logit-normal: a quarter of the mass below 0.25 (logit-normal(0,1) has ~14%)
    assert (t < 0.25).float().mean().item() == pytest.approx(0.25, abs=0.005)
    # the per-call override picks the other distribution
    ln = scheduler.sample_timesteps(n, generator=_gen(51), distribution="logit_normal")
    expected = 0.5 * (1 + math.erf(math.log(0.25 / 0.75) / math.sqrt(2)))  # Phi(logit(0.25)) ~ 0.136
    assert (ln < 0.25).float().mean().item() == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal"])
def test_sample_timesteps_generator_reproducible(distribution):
    scheduler = BernoulliScheduler(timestep_distribution=distribution)
    a = scheduler.sample_timesteps(64, generator=_gen(52))
    assert torch.equal(a, scheduler.sample_timesteps(64, generator=_gen(52)))
    assert not torch.equal(a, scheduler.sample_timesteps(64, generator=_gen(53)))
    assert scheduler.sample_timesteps(8, device="cpu").device.type == "cpu"


def test_step_after_the_last_step_raises():
    scheduler = BernoulliScheduler()
    scheduler.set_timesteps(2)
    z = torch.zeros(1, 4, 4)
    for t in scheduler.timesteps:
        z = scheduler.step(torch.zeros(1, 4, 4), t, z).prev_sample
    with pytest.raises(ValueError, match="exhausted"):
        scheduler.step(torch.zeros(1, 4, 4), scheduler.timesteps[-1], z)
