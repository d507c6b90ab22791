"""typical_mask against transformers' TypicalLogitsWarper; restricted sampling and its log-probs."""

import math

import pytest
import torch
from transformers.generation.logits_process import TypicalLogitsWarper

from promptgym.agents.sampling import action_logprobs, sample_restricted, sample_with_log_probs, typical_mask


def warper_kept(logits, mass, min_tokens_to_keep=1):
    """Kept set of the transformers warper on [..., V] logits, read out exactly via a NaN filter value."""
    warper = TypicalLogitsWarper(mass=mass, filter_value=float("nan"), min_tokens_to_keep=min_tokens_to_keep)
    flat = logits.reshape(-1, logits.shape[-1])
    return ~torch.isnan(warper(None, flat)).reshape(logits.shape)


MASSES = [1e-6, 0.05, 0.2, 0.5, 0.7, 0.9, 0.95, 0.999, 1 - 1e-7]


@pytest.mark.parametrize("vocab", [1, 2, 3, 7, 50, 1000])
@pytest.mark.parametrize("min_tokens_to_keep", [1, 2, 5])
def test_matches_warper_on_random_logits(vocab, min_tokens_to_keep):
    gen = torch.Generator().manual_seed(vocab * 10 + min_tokens_to_keep)
    logits = torch.randn(64, vocab, generator=gen) * torch.rand(64, 1, generator=gen) * 8
    for mass in MASSES:
        got = typical_mask(logits, mass, min_tokens_to_keep)
        assert got.dtype == torch.bool and got.shape == logits.shape
        assert torch.equal(got, warper_kept(logits, mass, min_tokens_to_keep)), mass


@pytest.mark.parametrize("vocab", [2, 3, 8, 40, 300])
def test_matches_warper_with_heavy_ties(vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randint(0, 3, (64, vocab), generator=gen).float()
    logits[0] = 0.0  # a uniform row: every token equally typical
    logits[1, : vocab // 2] = 5.0  # two tied groups of very different probability
    for mass in MASSES:
        for k in (1, 3, 10, 25):  # the min_tokens_to_keep boundary often falls inside a tied group
            assert torch.equal(typical_mask(logits, mass, k), warper_kept(logits, mass, k)), (mass, k)


@pytest.mark.parametrize("vocab", [1, 2, 5, 60])
def test_matches_warper_with_minus_inf_logits(vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(64, vocab, generator=gen) * 3
    blocked = torch.rand(64, vocab, generator=gen) < 0.6
    blocked[:, 0] = False  # keep at least one finite logit per row
    logits = logits.masked_fill(blocked, float("-inf"))
    for mass in MASSES:
        for k in (1, 2, vocab + 3):
            assert torch.equal(typical_mask(logits, mass, k), warper_kept(logits, mass, k)), (mass, k)


def test_batch_shapes_match_row_by_row():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 17, generator=gen) * 4
    got = typical_mask(logits, 0.6)
    assert got.shape == (3, 4, 17)
    assert torch.equal(got, warper_kept(logits, 0.6))
    for i in range(3):
        for j in range(4):
            assert torch.equal(got[i, j], typical_mask(logits[i, j], 0.6))  # 1-D logits[V] work too


def test_hand_computed_set_can_exclude_the_most_likely_token():
    # p = [0.4, 0.3, 0.3]: H = 1.0889; |-log p - H| = [0.173, 0.115, 0.115], so tokens 1 and 2 are the most
    # typical; their mass 0.6 exceeds 0.5, and the most likely token 0 is left out.
    logits = torch.tensor([0.4, 0.3, 0.3]).log()
    assert typical_mask(logits, 0.5).tolist() == [False, True, True]
    assert typical_mask(logits, 0.61).tolist() == [True, True, True]
    # p = [0.7, 0.2, 0.1]: distances [0.445, 0.808, 1.501]; 0.7 >= 0.5, and 0.7 + 0.2 >= 0.8.
    logits = torch.tensor([0.7, 0.2, 0.1]).log()
    assert typical_mask(logits, 0.5).tolist() == [True, False, False]
    assert typical_mask(logits, 0.8).tolist() == [True, True, False]
    assert typical_mask(logits, 0.5, min_tokens_to_keep=2).tolist() == [True, True, False]


def test_kept_set_is_the_smallest_typical_prefix_with_enough_mass():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 30, generator=gen, dtype=torch.float64) * 3
    mass = 0.8
    kept = typical_mask(logits, mass)
    logp = logits.log_softmax(-1)
    p = logp.exp()
    distance = (-logp - (-(p * logp).sum(-1, keepdim=True))).abs()
    for row in range(200):
        inside_mass = p[row][kept[row]].sum().item()
        assert inside_mass >= mass
        # Every kept token is at least as typical as every dropped one.
        if (~kept[row]).any():
            assert distance[row][kept[row]].max() < distance[row][~kept[row]].min()
        # Dropping the least typical kept tokens would fall below the mass.
        most = distance[row][kept[row]].max()
        assert p[row][kept[row] & (distance[row] < most)].sum().item() < mass


def test_mass_one_keeps_every_token():
    logits = torch.tensor([[3.0, 0.0, float("-inf"), -20.0]])
    assert typical_mask(logits, 1.0).all()


@pytest.mark.parametrize("mass", [0.0, -0.1, 1.5, float("nan"), True, "0.9"])
def test_bad_mass(mass):
    with pytest.raises(ValueError, match=r"mass.*\(0, 1\]"):
        typical_mask(torch.zeros(2, 3), mass)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_min_tokens_to_keep(k):
    with pytest.raises(ValueError, match="min_tokens_to_keep"):
        typical_mask(torch.zeros(2, 3), 0.9, k)


@pytest.mark.parametrize(
    "logits,match",
    [
        (torch.tensor([[0.0, float("nan")]]), "nan"),
        (torch.tensor([[0.0, float("inf")]]), r"\+inf"),
        (torch.tensor([[0.0, 1.0], [float("-inf"), float("-inf")]]), r"row.*\[1\].*-inf"),
        (torch.zeros(2, 0), r"V >= 1"),
        (torch.tensor(1.0), r"\[\.\.\., V\]"),
        (torch.zeros(2, 3, dtype=torch.long), "floating"),
    ],
)
def test_bad_logits(logits, match):
    with pytest.raises(ValueError, match=match):
        typical_mask(logits, 0.9)


# ---------------------------------------------------------------- restricted sampling


def test_samples_stay_in_mask_and_follow_the_renormalised_distribution():
    logits = torch.tensor([1.0, 0.5, 2.0, -1.0, 0.0])
    mask = torch.tensor([True, False, True, True, False])
    n = 40_000
    gen = torch.Generator().manual_seed(0)
    actions, logprob_full, logprob_restricted = sample_restricted(logits.expand(n, 5), mask.expand(n, 5), gen)
    assert actions.shape == logprob_full.shape == logprob_restricted.shape == (n,)
    assert mask[actions].all()
    p = torch.where(mask, logits.exp(), 0.0)
    p = (p / p.sum()).double()
    freq = torch.bincount(actions, minlength=5).double() / n
    sigma = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() <= 5 * sigma + 1e-12), (freq, p)


def test_logprobs_are_exact_under_full_and_restricted_distributions():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64)
    mask = typical_mask(logits, 0.5)
    actions, logprob_full, logprob_restricted = sample_restricted(logits, mask, gen)
    assert actions.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            a = actions[i, j].item()
            p = logits[i, j].exp() / logits[i, j].exp().sum()
            assert mask[i, j, a]
            assert math.isclose(logprob_full[i, j].item(), math.log(p[a].item()), rel_tol=1e-12)
            restricted = p[a].item() / p[mask[i, j]].sum().item()
            assert math.isclose(logprob_restricted[i, j].item(), math.log(restricted), rel_tol=1e-12, abs_tol=1e-12)
    torch.testing.assert_close(action_logprobs(logits, actions, mask), logprob_restricted)
    torch.testing.assert_close(action_logprobs(logits, actions), logprob_full)


def test_same_generator_seed_gives_same_samples():
    logits = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))
    mask = typical_mask(logits, 0.9)
    first = sample_restricted(logits, mask, torch.Generator().manual_seed(42))
    second = sample_restricted(logits, mask, torch.Generator().manual_seed(42))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("masked", [False, True])
def test_sampling_also_returns_the_full_log_softmax_it_computed(masked):
    logits = torch.randn(3, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    logits[0, 2] = float("-inf")  # a token the policy rules out: log-prob -inf, never sampled
    mask = typical_mask(logits, 0.6) if masked else None
    *sampled, log_probs = sample_with_log_probs(logits, mask, torch.Generator().manual_seed(1))
    for a, b in zip(sampled, sample_restricted(logits, mask, torch.Generator().manual_seed(1))):
        assert torch.equal(a, b)
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)  # the full policy, masked or not
    torch.testing.assert_close(log_probs.exp(), p, rtol=1e-12, atol=0)
    assert log_probs[0, 2] == float("-inf")
    torch.testing.assert_close(log_probs.gather(-1, sampled[0][:, None]).squeeze(-1), sampled[1])


def test_no_mask_samples_the_full_distribution():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    _, logprob_full, logprob_restricted = sample_restricted(logits, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(logprob_full, logprob_restricted)


def test_action_logprobs_outside_mask_is_minus_inf_and_gradients_flow():
    logits = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True]])
    assert action_logprobs(logits, torch.tensor([1]), mask).item() == float("-inf")
    logprob = action_logprobs(logits, torch.tensor([2]), mask)
    logprob.sum().backward()
    # d/dz log softmax over {0, 2}: one-hot(2) - p_restricted, and 0 for the masked token.
    p2 = math.exp(2) / (1 + math.exp(2))
    torch.testing.assert_close(logits.grad, torch.tensor([[-(1 - p2), 0.0, 1 - p2]]))


@pytest.mark.parametrize(
    "mask,match",
    [
        (torch.ones(2, 4, dtype=torch.bool), r"mask.*shape"),
        (torch.ones(2, 3), r"mask.*bool"),
        (torch.tensor([[True, True, True], [False, False, False]]), r"mask.*row.*\[1\]"),
    ],
)
def test_bad_mask(mask, match):
    with pytest.raises(ValueError, match=match):
        sample_restricted(torch.zeros(2, 3), mask, None)


def test_mask_that_keeps_only_minus_inf_tokens_is_rejected():
    logits = torch.tensor([[0.0, float("-inf")]])
    with pytest.raises(ValueError, match=r"mask.*row"):
        sample_restricted(logits, torch.tensor([[False, True]]), None)


@pytest.mark.parametrize(
    "actions,match",
    [
        (torch.tensor([0, 3]), r"actions.*\[0, 3\)"),
        (torch.tensor([0]), r"actions.*shape"),
        (torch.tensor([0.0, 1.0]), "integer"),
    ],
)
def test_bad_actions(actions, match):
    with pytest.raises(ValueError, match=match):
        action_logprobs(torch.zeros(2, 3), actions)


def test_logprobs_and_entropy_in_one_pass_match_categorical():
    from promptgym.agents.sampling import action_logprobs_and_entropy

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 3
    actions = torch.randint(0, 11, (3, 5))
    logprobs, entropy = action_logprobs_and_entropy(logits, actions)
    reference = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(logprobs, reference.log_prob(actions))
    torch.testing.assert_close(entropy, reference.entropy())
    assert torch.equal(logprobs, action_logprobs(logits, actions))  # the same numbers as the one-output function
    with pytest.raises(ValueError, match="actions must be token ids"):
        action_logprobs_and_entropy(logits, actions + 11)


@pytest.mark.parametrize("scale", [2.0, 8.0, 30.0])
def test_matches_warper_on_peaked_rows_of_a_policy_sized_vocabulary(scale):
    # typical_mask ranks only the 32 most typical tokens when they hold the mass (a trained policy's rows) and
    # sorts the whole row otherwise; both must keep the warper's set
    gen = torch.Generator().manual_seed(int(scale))
    logits = torch.randn(256, 644, generator=gen) * scale
    for mass in (0.2, 0.5, 0.9, 0.95, 0.999):
        for k in (1, 3):
            assert torch.equal(typical_mask(logits, mass, k), warper_kept(logits, mass, k)), (mass, k)
