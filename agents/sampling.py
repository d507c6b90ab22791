"""Action-space dynamic modification: the locally typical token set and sampling restricted to it.

DiffChat draws positive samples from A'_t, the smallest set of locally typical tokens whose probability
mass reaches `mass` (Meister et al. 2023, "Locally Typical Sampling"). `typical_mask` computes exactly the
set kept by transformers' `TypicalLogitsWarper`; `sample_restricted` samples from the renormalised set.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

TYPICAL_CANDIDATES = 32  # tokens ranked on the fast path of typical_mask (it falls back to a full sort)
ROUNDING = 1e-4  # a cumulative mass this close to `mass` takes the full sort, whose sums the warper's equal


def typical_mask(logits: torch.Tensor, mass: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """BoolTensor[..., V], True where a token is in the locally typical set of logits[..., V].

    Tokens are ranked by |-log p - H| (H = entropy) and kept up to the first whose cumulative
    probability reaches `mass`, plus every token tied with it; the `min_tokens_to_keep` most typical
    always stay (among tied tokens, in torch.sort's order, as in transformers). mass == 1 keeps every
    token (as generate() does with typical_p=1.0). Tokens with -inf logits have probability 0: they are
    never sampled, though like the warper the mask may mark them when min_tokens_to_keep exceeds the
    finite ones or rounding leaves the finite mass just below `mass`.
    """
    _check_logits(logits)
    if isinstance(mass, bool) or not isinstance(mass, numbers.Real) or not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be a number in (0, 1], got {mass!r}")
    if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be an int >= 1, got {min_tokens_to_keep!r}")
    if mass == 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    vocab = logits.shape[-1]
    scores = logits.detach().reshape(-1, vocab)
    # The same quantities as TypicalLogitsWarper.__call__ (ties included).
    normalized = F.log_softmax(scores, dim=-1)
    p = torch.exp(normalized)
    ent = -(normalized * p).nansum(-1, keepdim=True)  # 0 * -inf = nan for blocked tokens is skipped
    shifted_scores = torch.abs((-normalized) - ent)
    k = max(TYPICAL_CANDIDATES, min_tokens_to_keep + 1)
    if k >= vocab:
        return _typical_mask_sorted(scores, shifted_scores, mass, min_tokens_to_keep).reshape(logits.shape)
    # Fast path: a trained policy's typical set is a handful of tokens, so rank only the k most typical. The kept
    # set is the tokens whose score is at most the score where the cumulative mass crosses `mass`, which does not
    # depend on how ties are ordered. A row falls back to the full sort when its k most typical tokens do not
    # reach `mass`, when the crossing is within rounding of `mass` (the two paths sum the probabilities in
    # different orders), or when min_tokens_to_keep cuts through a tie (then torch.sort's order decides).
    top_scores, top_indices = torch.topk(shifted_scores, k, dim=-1, largest=False, sorted=True)
    cumulative_probs = p.gather(-1, top_indices).cumsum(dim=-1)
    last_ind = (cumulative_probs < mass).sum(dim=-1).clamp(max=k - 1)
    threshold = top_scores.gather(-1, last_ind[:, None])
    before = cumulative_probs.gather(-1, (last_ind - 1).clamp(min=0)[:, None])[:, 0]
    clear = (cumulative_probs.gather(-1, last_ind[:, None])[:, 0] >= mass + ROUNDING) & (
        (last_ind == 0) | (before < mass - ROUNDING))
    m = min_tokens_to_keep
    cut_tie = (top_scores[:, m - 1] > threshold[:, 0]) & (top_scores[:, m - 1] == top_scores[:, m])
    fast = clear & ~cut_tie
    mask = torch.empty_like(scores, dtype=torch.bool)
    if fast.any():
        kept = shifted_scores[fast] <= threshold[fast]
        kept.scatter_(-1, top_indices[fast, :m], True)
        mask[fast] = kept
    if not fast.all():
        slow = ~fast
        mask[slow] = _typical_mask_sorted(scores[slow], shifted_scores[slow], mass, min_tokens_to_keep)
    return mask.reshape(logits.shape)



def _typical_mask_sorted(scores: torch.Tensor, shifted_scores: torch.Tensor, mass: float,
                         min_tokens_to_keep: int) -> torch.Tensor:
    """The locally typical set of rows `scores[N, V]` by a full sort, in TypicalLogitsWarper's operations."""
    vocab = scores.shape[-1]
    sorted_scores, sorted_indices = torch.sort(shifted_scores, descending=False)
    sorted_logits = scores.gather(-1, sorted_indices)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    last_ind = (cumulative_probs < mass).sum(dim=-1).clamp(max=vocab - 1)
    sorted_indices_to_remove = sorted_scores > sorted_scores.gather(-1, last_ind[:, None])
    sorted_indices_to_remove[:, :min_tokens_to_keep] = False
    indices_to_remove = sorted_indices_to_remove.scatter(-1, sorted_indices, sorted_indices_to_remove)
    return ~indices_to_remove


def sample_restricted(
    logits: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample actions[...] from softmax(logits[..., V]) renormalised over mask[..., V] (None: all tokens).

    Returns (actions, logprob_full, logprob_restricted): the log-probability of each action under the
    full policy and under the restricted one. generator=None uses torch's global RNG. `uniforms[...]` (one
    number in [0, 1) per row, any device) replaces the draw from `generator`: a CPU generator can then drive
    sampling on a GPU, and data-parallel processes can each take their slice of one global draw.
    """
    return sample_with_log_probs(logits, mask, generator, uniforms)[:3]


def sample_with_log_probs(
    logits: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sample_restricted`'s (actions, logprob_full, logprob_restricted) and the full policy's log-softmax[..., V]
    it computed on the way, so that a caller needing more of the distribution (the rollout's entropy) does not
    compute it again."""
    _check_logits(logits)
    restricted = _restrict(logits, mask)
    logprobs_restricted = F.log_softmax(restricted, dim=-1)
    probs = logprobs_restricted.exp().reshape(-1, logits.shape[-1])
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
    if uniforms is not None and uniforms.numel() != probs.shape[0]:
        raise ValueError(f"uniforms has {uniforms.numel()} numbers; expected one per row ({probs.shape[0]})")
    actions = _inverse_cdf_draw(probs, generator, uniforms).reshape(logits.shape[:-1])
    logprob_restricted = logprobs_restricted.gather(-1, actions[..., None]).squeeze(-1)
    if mask is None:  # nothing restricted: the full distribution is the one just computed
        return actions, logprob_restricted, logprob_restricted.clone(), logprobs_restricted
    log_probs = F.log_softmax(logits, dim=-1)
    return actions, log_probs.gather(-1, actions[..., None]).squeeze(-1), logprob_restricted, log_probs


def _inverse_cdf_draw(
    probs: torch.Tensor, generator: torch.Generator | None, uniforms: torch.Tensor | None = None
) -> torch.Tensor:
    """One categorical draw per row of probs[N, V] from a single uniform (multinomial draws one per token).

    The CDF is accumulated in float64 so large vocabularies keep their tail; `right=True` never lands on a
    zero-probability token, and u stays strictly below the total.
    """
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    if uniforms is None:
        uniforms = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=probs.device)
    u = uniforms.to(device=probs.device, dtype=torch.float64).reshape(total.shape) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


def action_logprobs(logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(actions[...]) under softmax(logits[..., V]), renormalised over mask[..., V] if given.

    Differentiable in logits (use it for PPO's new and old log-probs). An action outside the mask has
    probability 0 under the restricted policy and gets -inf.
    """
    _check_actions(logits, actions)
    logprobs = F.log_softmax(_restrict(logits, mask), dim=-1)
    return logprobs.gather(-1, actions[..., None].long()).squeeze(-1)


def action_logprobs_and_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`action_logprobs(logits, actions)` and the entropy of softmax(logits), from one log-softmax (PPO's update
    needs both of the full policy; the vocabulary-sized tensor is made once)."""
    _check_actions(logits, actions)
    log_probs = F.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, actions[..., None].long()).squeeze(-1), entropy


def _check_actions(logits: torch.Tensor, actions: torch.Tensor) -> None:
    _check_logits(logits)
    if not isinstance(actions, torch.Tensor) or actions.dtype.is_floating_point or actions.dtype == torch.bool:
        raise ValueError(f"actions must be an integer tensor, got {getattr(actions, 'dtype', type(actions))}")
    if actions.shape != logits.shape[:-1]:
        raise ValueError(
            f"actions must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, got {tuple(actions.shape)}"
        )
    vocab = logits.shape[-1]
    if actions.numel() and (actions.min() < 0 or actions.max() >= vocab):
        raise ValueError(
            f"actions must be token ids in [0, {vocab}), got min {actions.min().item()} max {actions.max().item()}"
        )


def _restrict(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """logits with tokens outside mask set to -inf, after checking mask keeps a possible token per row."""
    if mask is None:
        return logits
    if not isinstance(mask, torch.Tensor) or mask.shape != logits.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must have the shape of logits {tuple(logits.shape)}, got {got}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (e.g. from typical_mask), got dtype {mask.dtype}")
    possible = (mask & torch.isfinite(logits)).any(dim=-1)
    if not torch.all(possible):
        rows = torch.nonzero(~possible).tolist()
        raise ValueError(f"mask must keep at least one token with a finite logit in every row; rows {rows} keep none")
    return logits.masked_fill(~mask, float("-inf"))


def _check_logits(logits: torch.Tensor) -> None:
    """Raise a clear error unless logits[..., V] is a float tensor with V >= 1, no nan/+inf, a finite value per row."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() < 1:
        raise ValueError("logits must have shape [..., V], got a 0-dim tensor")
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have V >= 1 tokens in the last dimension, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if torch.isfinite(logits).all():  # the usual case, in one pass; the checks below say what is wrong
        return
    if torch.isnan(logits).any():
        raise ValueError("logits must not contain nan")
    if torch.isposinf(logits).any():
        raise ValueError("logits must not contain +inf")
    dead = torch.isneginf(logits).all(dim=-1)
    if dead.any():
        raise ValueError(f"logits rows {torch.nonzero(dead).tolist()} are all -inf: no token can be sampled")
