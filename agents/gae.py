"""Generalized Advantage Estimation (Schulman et al. 2016) on right-padded token sequences."""

from __future__ import annotations

import numbers

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    last_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns (advantages + values), both [B, T], zero on padding.

    rewards[B, T], values[B, T]: per-token reward r_t and critic value V(s_t).
    mask[B, T]: True (or 1) on real tokens; each row is right-padded (a run of 1s, then 0s).
        Padded positions are never read, so they may hold anything.
    last_values[B]: the value used to bootstrap after each row's last real token. Pass V(s_next)
        for rows that were truncated (cut off, e.g. at max_new_tokens) and 0 for rows that
        terminated (EOS). None means every row terminated. Ignored for all-padding rows.
    """
    rewards, values, mask, bootstrap = _check_gae_inputs(rewards, values, mask, gamma, lam, last_values)
    batch, horizon = rewards.shape
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(horizon)):
        # V(s_{t+1}): the next real token's value, or the bootstrap value after the last real token.
        nextvalues = torch.where(mask[:, t + 1], values[:, t + 1], bootstrap) if t + 1 < horizon else bootstrap
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        # lastgaelam is 0 after the last real token, so nothing leaks in from the padding.
        lastgaelam = torch.where(mask[:, t], delta + gamma * lam * lastgaelam, zero)
        advantages[:, t] = lastgaelam
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


def _check_gae_inputs(rewards, values, mask, gamma, lam, last_values):
    """Validate compute_gae's arguments; return (rewards, values, bool mask, bootstrap[B]) in one dtype."""
    for name, tensor in (("rewards", rewards), ("values", values), ("mask", mask)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [B, T], got shape {tuple(rewards.shape)}")
    for name, tensor in (("values", values), ("mask", mask)):
        if tensor.shape != rewards.shape:
            raise ValueError(f"{name} must have the shape of rewards {tuple(rewards.shape)}, got {tuple(tensor.shape)}")
    for name, tensor in (("rewards", rewards), ("values", values)):
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    for name, x in (("gamma", gamma), ("lam", lam)):
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not 0.0 <= x <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {x!r}")
    if mask.dtype != torch.bool:
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must be bool or hold only 0/1 values, got other values")
        mask = mask != 0
    if mask.shape[1] > 1 and torch.any(mask[:, 1:] & ~mask[:, :-1]):
        rows = torch.nonzero(torch.any(mask[:, 1:] & ~mask[:, :-1], dim=1)).flatten().tolist()
        raise ValueError(f"mask must be right-padded (1s then 0s in every row); rows {rows} have a gap")
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    rewards, values = rewards.to(dtype), values.to(dtype)
    if last_values is None:
        bootstrap = torch.zeros(rewards.shape[0], dtype=dtype, device=rewards.device)
    else:
        if not isinstance(last_values, torch.Tensor) or last_values.shape != rewards.shape[:1]:
            got = tuple(last_values.shape) if isinstance(last_values, torch.Tensor) else type(last_values).__name__
            raise ValueError(f"last_values must be a tensor of shape [B] = ({rewards.shape[0]},), got {got}")
        bootstrap = last_values.to(dtype)
        if not torch.all(torch.isfinite(bootstrap[mask.any(dim=1)])):
            raise ValueError("last_values must be finite for rows with real tokens, got inf or nan")
    for name, tensor in (("rewards", rewards), ("values", values)):
        if not torch.all(torch.isfinite(tensor[mask])):
            raise ValueError(f"{name} must be finite on real (mask=1) tokens, got inf or nan")
    return rewards, values, mask, bootstrap
