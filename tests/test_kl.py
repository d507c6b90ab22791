"""KL estimators (k1, k2, k3) and the fixed/adaptive KL-penalty controllers."""

import json
import math

import pytest
import torch

from promptgym.agents.kl import AdaptiveKLController, FixedKLController, kl_estimate


def test_estimators_match_hand_computations():
    logprobs = torch.tensor([-1.0, -2.0, -0.3])
    ref_logprobs = torch.tensor([-1.5, -0.5, -0.3])
    # logp - logp_ref = [0.5, -1.5, 0]; log r = logp_ref - logp = [-0.5, 1.5, 0].
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k1"), torch.tensor([0.5, -1.5, 0.0]))
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k2"), torch.tensor([0.125, 1.125, 0.0]))
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.5) - 1 - 1.5, 0.0]
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k3"), torch.tensor(k3))
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs), torch.tensor([0.5, -1.5, 0.0]))  # k1 default


def test_shape_dtype_and_gradient_are_kept():
    logprobs = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(3, 5, dtype=torch.float64)
    for estimator in ("k1", "k2", "k3"):
        out = kl_estimate(logprobs, ref, estimator)
        assert out.shape == (3, 5) and out.dtype == torch.float64
    kl_estimate(logprobs, ref, "k3").sum().backward()
    # d/dlogp [(r - 1) - log r] with r = exp(ref - logp) is 1 - r.
    torch.testing.assert_close(logprobs.grad, 1 - (ref - logprobs.detach()).exp())


def test_k2_and_k3_are_nonnegative_even_for_tiny_and_huge_ratios():
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.randn(100_000, generator=gen) * torch.logspace(-8, 1, 100_000)
    ref = torch.randn(100_000, generator=gen) * torch.logspace(-8, 1, 100_000)
    for estimator in ("k2", "k3"):
        assert torch.all(kl_estimate(logprobs, ref, estimator) >= 0), estimator


def _two_categoricals(seed, vocab=6):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(vocab, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(vocab, generator=gen, dtype=torch.float64), -1)
    return p, q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_and_k3_are_exactly_unbiased_over_the_policy(seed):
    # E_{x~p}[k(x)] summed over the support equals KL(p || q) for k1 and k3, but not for k2.
    p, q = _two_categoricals(seed)
    exact_kl = (p * (p.log() - q.log())).sum()
    for estimator in ("k1", "k3"):
        expectation = (p * kl_estimate(p.log(), q.log(), estimator)).sum()
        torch.testing.assert_close(expectation, exact_kl, rtol=1e-12, atol=1e-12)
    assert not math.isclose((p * kl_estimate(p.log(), q.log(), "k2")).sum().item(), exact_kl.item(), rel_tol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monte_carlo_means_of_k1_and_k3_converge_to_the_exact_kl(seed):
    p, q = _two_categoricals(seed)
    logp, logq = p.log(), q.log()
    exact_kl = (p * (logp - logq)).sum().item()
    n = 200_000
    x = torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(100 + seed))
    # Plausible mistakes: the sign of k1 flipped, the ratio of k3 inverted.
    wrong_formulas = {"k1": lambda a, b: b - a, "k3": lambda a, b: (a - b).exp() - 1 - (a - b)}
    for estimator, wrong_formula in wrong_formulas.items():
        # Tolerance: 6 exact standard errors (a chance failure has probability ~2e-9; the seed is fixed anyway).
        values = kl_estimate(logp, logq, estimator)
        std = math.sqrt((p * values**2).sum().item() - exact_kl**2)
        tolerance = 6 * std / math.sqrt(n)
        assert abs(kl_estimate(logp[x], logq[x], estimator).mean().item() - exact_kl) < tolerance, estimator
        # The same tolerance rejects the wrong formula, so the check above has teeth.
        assert abs(wrong_formula(logp[x], logq[x]).mean().item() - exact_kl) > tolerance, estimator


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(3), torch.zeros(3), "k4"), r"estimator.*k1.*'k4'"),
        ((torch.zeros(3), torch.zeros(4), "k1"), r"ref_logprobs.*shape"),
        ((torch.zeros(3, dtype=torch.long), torch.zeros(3), "k1"), r"logprobs.*floating"),
        (([0.0], torch.zeros(1), "k1"), r"logprobs.*Tensor"),
    ],
)
def test_bad_estimator_input(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        kl_estimate(*args)


# ---------------------------------------------------------------- controllers


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 10.0, -1.0, 1e6):
        ctl.update(kl, 256)
    assert ctl.value == 0.05
    assert ctl.state_dict() == {"value": 0.05}


def test_adaptive_controller_single_step_by_hand():
    # kl/target - 1 = 12/6 - 1 = 1 -> clipped to 0.2; mult = 1 + 0.2 * 256 / 10000 = 1.00512.
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    ctl.update(12.0, 256)
    assert math.isclose(ctl.value, 0.2 * 1.00512, rel_tol=1e-15)
    # kl/target - 1 = 5.4/6 - 1 = -0.1 (inside the clip); mult = 1 - 0.1 * 1000 / 10000 = 0.99.
    ctl.update(5.4, 1000)
    assert math.isclose(ctl.value, 0.2 * 1.00512 * 0.99, rel_tol=1e-12)


def test_adaptive_controller_trajectory_matches_a_hand_loop():
    kls = [0.0, 3.0, 6.0, 7.1, 12.0, 100.0, -5.0, 5.5, torch.tensor(6.6)]
    steps = [256, 256, 128, 512, 256, 64, 256, 1, 0]
    ctl = AdaptiveKLController(0.1, 6.0, 10_000)
    value, trajectory = 0.1, []
    for kl, n in zip(kls, steps):
        error = min(max(float(kl) / 6.0 - 1.0, -0.2), 0.2)
        value = value * (1.0 + error * n / 10_000)
        ctl.update(kl, n)
        trajectory.append((ctl.value, value))
        assert isinstance(ctl.value, float)
    for got, want in trajectory:
        assert math.isclose(got, want, rel_tol=1e-12)
    assert trajectory[0][0] < 0.1 and trajectory[4][0] > trajectory[3][0]


def test_state_dict_round_trip_resumes_the_same_trajectory():
    ctl = AdaptiveKLController(0.2, 6.0, 10_000)
    for kl in (1.0, 9.0, 20.0):
        ctl.update(kl, 256)
    saved = json.loads(json.dumps(ctl.state_dict()))  # plain floats: JSON- and torch.save-friendly
    resumed = AdaptiveKLController(0.9, 1.0, 5)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == ctl.state_dict()
    for kl in (3.0, 8.0):
        ctl.update(kl, 256)
        resumed.update(kl, 256)
    assert resumed.value == ctl.value
    fixed = FixedKLController(0.3)
    fixed.load_state_dict({"value": 0.7})
    assert fixed.value == 0.7


@pytest.mark.parametrize(
    "state,match",
    [
        ({"value": 0.1, "target": 6.0}, r"missing.*horizon"),
        ({"value": 0.1, "target": 6.0, "horizon": 10.0, "extra": 1}, r"unexpected.*extra"),
        ({"value": -0.1, "target": 6.0, "horizon": 10.0}, r"value"),
    ],
)
def test_bad_state_dict(state, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(0.1, 6.0, 10.0).load_state_dict(state)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: FixedKLController(-0.1), r"kl_coef.*-0.1"),
        (lambda: AdaptiveKLController(-1.0, 6.0, 10.0), r"init_kl_coef"),
        (lambda: AdaptiveKLController(0.1, 0.0, 10.0), r"target.*> 0"),
        (lambda: AdaptiveKLController(0.1, 6.0, 0.0), r"horizon.*> 0"),
        (lambda: AdaptiveKLController(0.1, 6.0, 10.0).update(float("nan"), 1), r"current_kl.*finite"),
        (lambda: AdaptiveKLController(0.1, 6.0, 10.0).update(1.0, -1), r"n_steps.*>= 0"),
        (lambda: FixedKLController(0.1).update(float("inf"), 1), r"current_kl.*finite"),
    ],
)
def test_bad_controller_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_integer_n_steps_is_a_type_error():
    with pytest.raises(TypeError, match=r"n_steps.*int.*2.5"):
        AdaptiveKLController(0.1, 6.0, 10.0).update(1.0, 2.5)


# ------------------------------------------------------------------------------------------- exact KL
def _reference_kl(p: list[float], q: list[float]) -> float:
    """sum_v p_v log(p_v / q_v), by hand over plain floats (0 log 0 = 0)."""
    return sum(pv * math.log(pv / qv) for pv, qv in zip(p, q) if pv > 0)


def test_exact_kl_matches_a_hand_computation_per_position():
    from promptgym.agents.kl import exact_kl

    p = [[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]
    q = [[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]
    logits, ref = torch.tensor(p, dtype=torch.float64).log(), torch.tensor(q, dtype=torch.float64).log()
    out = exact_kl(logits + 3.0, ref - 1.0)  # logits are free up to a constant per position
    assert out.shape == (2,) and out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([_reference_kl(p[0], q[0]), _reference_kl(p[1], q[1])],
                                                 dtype=torch.float64))
    torch.testing.assert_close(exact_kl(ref, ref), torch.zeros(2, dtype=torch.float64))


def test_exact_kl_is_the_mean_of_the_sampled_k1_estimate():
    from promptgym.agents.kl import exact_kl

    gen = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    draws = torch.multinomial(logits.softmax(-1), 200_000, replacement=True, generator=gen)
    k1 = kl_estimate(logits.log_softmax(-1)[draws], ref.log_softmax(-1)[draws], "k1")
    assert abs(float(k1.mean()) - float(exact_kl(logits, ref))) < 0.02


def test_exact_kl_edge_cases_minus_infinity_and_single_token_vocabulary():
    from promptgym.agents.kl import exact_kl

    inf = float("inf")
    # the policy rules a token out: it contributes 0, value and gradient stay finite
    logits = torch.tensor([0.0, 0.0, -inf], requires_grad=True)
    ref = torch.tensor([0.0, 1.0, 2.0])
    value = exact_kl(logits, ref)
    q = ref.softmax(-1).tolist()
    assert math.isclose(float(value.detach()), _reference_kl([0.5, 0.5, 0.0], q), rel_tol=1e-6)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    # the reference rules out a token the policy gives mass: infinite
    assert exact_kl(torch.tensor([0.0, 0.0]), torch.tensor([0.0, -inf])) == inf
    # both rule it out: 0
    assert float(exact_kl(torch.tensor([0.0, -inf]), torch.tensor([1.0, -inf]))) == pytest.approx(0.0, abs=1e-7)
    # one-token vocabulary: always 0; half-precision logits give a float32 sum
    assert float(exact_kl(torch.zeros(4, 1), torch.ones(4, 1)).abs().max()) == 0.0
    assert exact_kl(torch.randn(2, 5).half(), torch.randn(2, 5).half()).dtype == torch.float32


def test_exact_kl_gradient_matches_finite_differences_and_rejects_bad_input():
    from promptgym.agents.kl import exact_kl

    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: exact_kl(x, ref), (logits,))
    with pytest.raises(ValueError, match="shape"):
        exact_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="floating-point"):
        exact_kl(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
