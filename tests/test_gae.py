"""compute_gae against an independent closed-form reference: A_t = sum_l (gamma*lam)^l * delta_{t+l}."""

import math

import pytest
import torch

from promptgym.agents.gae import compute_gae


def reference_gae(rewards, values, lengths, gamma, lam, bootstrap):
    """Per-row Python reference using the closed form of GAE (no backward recursion)."""
    batch, horizon = len(rewards), len(rewards[0])
    advantages = [[0.0] * horizon for _ in range(batch)]
    returns = [[0.0] * horizon for _ in range(batch)]
    for b in range(batch):
        length = lengths[b]
        # Value of the state after step t: the next real token's value, or the bootstrap after the last one.
        next_value = [values[b][t + 1] if t + 1 < length else bootstrap[b] for t in range(length)]
        delta = [rewards[b][t] + gamma * next_value[t] - values[b][t] for t in range(length)]
        for t in range(length):
            advantages[b][t] = sum((gamma * lam) ** k * delta[t + k] for k in range(length - t))
            returns[b][t] = advantages[b][t] + values[b][t]
    return advantages, returns


def random_batch(seed, batch=7, horizon=9, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, horizon, generator=gen, dtype=dtype)
    values = torch.randn(batch, horizon, generator=gen, dtype=dtype)
    lengths = torch.randint(0, horizon + 1, (batch,), generator=gen).tolist()
    lengths[0], lengths[1] = horizon, 0  # always cover a full row and an all-padding row
    mask = torch.arange(horizon)[None, :] < torch.tensor(lengths)[:, None]
    truncated = torch.rand(batch, generator=gen) < 0.5
    last_values = torch.where(truncated, torch.randn(batch, generator=gen, dtype=dtype), torch.zeros((), dtype=dtype))
    return rewards, values, mask, lengths, last_values


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "gamma,lam", [(0.99, 0.95), (0.9, 0.5), (0.0, 0.95), (1.0, 1.0), (0.99, 0.0), (1.0, 0.0), (0.0, 0.0)]
)
def test_matches_reference_on_random_rows(seed, gamma, lam):
    rewards, values, mask, lengths, last_values = random_batch(seed)
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam, last_values)
    ref_adv, ref_ret = reference_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam, last_values.tolist())
    torch.testing.assert_close(advantages, torch.tensor(ref_adv, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, torch.tensor(ref_ret, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_float32_matches_reference():
    rewards, values, mask, lengths, last_values = random_batch(11, batch=16, horizon=33, dtype=torch.float32)
    advantages, returns = compute_gae(rewards, values, mask, 0.99, 0.95, last_values)
    assert advantages.dtype == returns.dtype == torch.float32
    ref_adv, ref_ret = reference_gae(rewards.tolist(), values.tolist(), lengths, 0.99, 0.95, last_values.tolist())
    torch.testing.assert_close(advantages, torch.tensor(ref_adv), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, torch.tensor(ref_ret), rtol=1e-5, atol=1e-5)


def test_hand_computed_terminated_and_truncated():
    # r = [1, 2], V = [0.5, 1], gamma = lam = 0.5.
    # Terminated: delta_1 = 2 + 0 - 1 = 1, delta_0 = 1 + 0.5*1 - 0.5 = 1; A = [1 + 0.25*1, 1] = [1.25, 1].
    # Truncated with V(s_2) = 2: delta_1 = 2 + 0.5*2 - 1 = 2; A = [1 + 0.25*2, 2] = [1.5, 2].
    rewards = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    values = torch.tensor([[0.5, 1.0], [0.5, 1.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    advantages, returns = compute_gae(rewards, values, mask, 0.5, 0.5, torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(advantages, torch.tensor([[1.25, 1.0], [1.5, 2.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.75, 2.0], [2.0, 3.0]]))


def test_lambda_one_gives_discounted_monte_carlo_returns():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.3, -0.2, 0.7, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])  # the 9.0 and 5.0 sit in padding and must be ignored
    _, returns = compute_gae(rewards, values, mask, 0.9, 1.0, torch.tensor([2.0], dtype=torch.float64))
    expected = [0.81 * 1 + 0.729 * 2.0, 0.9 * 1 + 0.81 * 2.0, 1 + 0.9 * 2.0, 0.0]
    torch.testing.assert_close(returns, torch.tensor([expected], dtype=torch.float64))


def test_lambda_zero_gives_one_step_td_errors():
    rewards, values, mask, lengths, last_values = random_batch(3)
    advantages, _ = compute_gae(rewards, values, mask, 0.9, 0.0, last_values)
    for b, length in enumerate(lengths):
        for t in range(length):
            next_value = values[b, t + 1].item() if t + 1 < length else last_values[b].item()
            expected = rewards[b, t].item() + 0.9 * next_value - values[b, t].item()
            assert math.isclose(advantages[b, t].item(), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_single_step_episodes():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.25], [7.0]])
    mask = torch.tensor([[True], [True], [False]])
    advantages, returns = compute_gae(rewards, values, mask, 0.9, 0.95, torch.tensor([0.0, 1.0, 4.0]))
    torch.testing.assert_close(advantages, torch.tensor([[0.5], [2.0 + 0.9 - 0.25], [0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0], [2.9], [0.0]]))


def test_padding_contents_are_ignored_and_outputs_are_zero_there():
    rewards, values, mask, _, last_values = random_batch(5)
    adv, ret = compute_gae(rewards, values, mask, 0.99, 0.95, last_values)
    garbage_rewards = rewards.masked_fill(~mask, float("nan"))
    garbage_values = values.masked_fill(~mask, 1e30)
    adv2, ret2 = compute_gae(garbage_rewards, garbage_values, mask, 0.99, 0.95, last_values)
    torch.testing.assert_close(adv2, adv, rtol=0, atol=0)
    torch.testing.assert_close(ret2, ret, rtol=0, atol=0)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)
    assert torch.all(adv[1] == 0) and torch.all(ret[1] == 0)  # the all-padding row


def test_mask_may_be_bool_int_or_float_and_default_bootstrap_is_zero():
    rewards, values, mask, _, _ = random_batch(7)
    expected = compute_gae(rewards, values, mask, 0.99, 0.95, torch.zeros(rewards.shape[0], dtype=torch.float64))
    for m in (mask, mask.long(), mask.double(), mask.to(torch.uint8)):
        for got, want in zip(compute_gae(rewards, values, m, 0.99, 0.95), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_empty_batch_and_empty_time():
    for shape in [(0, 4), (3, 0)]:
        z = torch.zeros(shape)
        adv, ret = compute_gae(z, z, torch.ones(shape, dtype=torch.bool), 0.99, 0.95)
        assert adv.shape == ret.shape == shape


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rewards": torch.zeros(2, 3, 1)}, r"rewards.*\[B, T\]"),
        ({"values": torch.zeros(2, 4)}, r"values.*shape"),
        ({"mask": torch.ones(3, 3)}, r"mask.*shape"),
        ({"mask": torch.tensor([[1, 0, 1], [1, 1, 1]])}, r"mask.*right-padded"),
        ({"mask": torch.tensor([[1, 2, 0], [1, 1, 1]])}, r"mask.*0/1"),
        ({"gamma": 1.5}, r"gamma.*\[0, 1\].*1\.5"),
        ({"gamma": -0.1}, r"gamma"),
        ({"lam": float("nan")}, r"lam"),
        ({"lam": True}, r"lam"),
        ({"last_values": torch.zeros(3)}, r"last_values.*shape"),
        ({"last_values": torch.tensor([0.0, float("inf")])}, r"last_values.*finite"),
        ({"rewards": torch.tensor([[1.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])}, r"rewards.*finite"),
        ({"values": torch.tensor([[1, 2, 3], [4, 5, 6]])}, r"values.*floating"),
    ],
)
def test_bad_input_gets_clear_error(kwargs, match):
    args = {
        "rewards": torch.zeros(2, 3),
        "values": torch.zeros(2, 3),
        "mask": torch.ones(2, 3, dtype=torch.bool),
        "gamma": 0.99,
        "lam": 0.95,
        "last_values": None,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        compute_gae(**args)
