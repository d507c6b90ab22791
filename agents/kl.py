"""KL penalty against a reference policy: per-token estimators and the coefficient controllers.

Estimators follow Schulman, "Approximating KL Divergence" (2020): with tokens sampled from the policy,
k1 and k3 are unbiased estimates of KL(policy || reference); k3 is also never negative.
Controllers follow Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences".
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, Protocol

import torch

Estimator = Literal["k1", "k2", "k3"]


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Estimator = "k1") -> torch.Tensor:
    """Per-token KL estimate from log-probs of the sampled tokens under the policy and the reference.

    k1 = logp - logp_ref, k2 = 0.5 * (logp - logp_ref)^2, k3 = (r - 1) - log r with r = exp(logp_ref - logp).
    """
    if estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"estimator must be one of 'k1', 'k2', 'k3', got {estimator!r}")
    for name, tensor in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"ref_logprobs must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(ref_logprobs.shape)}"
        )
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    log_r = -log_ratio  # k3: log r = logp_ref - logp
    return torch.expm1(log_r) - log_r  # (r - 1) - log r, with expm1 for accuracy when r is near 1


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || softmax(ref_logits)) summed over the last (vocabulary) axis: `[..., V] -> [...]`.

    The exact per-token KL of the policy from the reference at each position, where the estimators above see only
    the sampled token. Where the reference is confident (copying the source) a sampled estimate is almost always
    ~0 and only the rare off-token draw carries signal; the exact value moves with every change of the policy's
    distribution. Differentiable in `logits`; a token the reference rules out (-inf) while the policy gives it mass
    makes the KL +inf, one the policy rules out contributes 0.
    """
    for name, tensor in (("logits", logits), ("ref_logits", ref_logits)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() == 0:
            raise ValueError(f"{name} must be a floating-point tensor with a vocabulary axis")
    if ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits must have the shape of logits {tuple(logits.shape)}, got {tuple(ref_logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half-precision logits: the sum in float32
    log_p = logits.to(dtype).log_softmax(-1)
    log_q = ref_logits.to(dtype).log_softmax(-1)
    p = log_p.exp()
    mass = p > 0  # 0 * log 0 = 0, without a nan in the value or the gradient
    zero = torch.zeros_like(log_p)
    return (p * (torch.where(mass, log_p, zero) - torch.where(mass, log_q, zero))).sum(-1)


class KLController(Protocol):
    """What the PPO loop needs from a KL-coefficient controller."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...
    def state_dict(self) -> dict[str, float]: ...
    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedKLController:
    """Constant KL coefficient: `value` stays at kl_coef whatever the observed KL."""

    def __init__(self, kl_coef: float):
        self.value = _nonnegative("kl_coef", kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Check the arguments and keep the coefficient unchanged."""
        _check_update(current_kl, n_steps)

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = _nonnegative("value", _read_state(state, ("value",))["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): moves `value` so the observed KL tracks `target`.

    proportional_error = clip(current_kl / target - 1, -0.2, 0.2); value *= 1 + proportional_error * n_steps / horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = _nonnegative("init_kl_coef", init_kl_coef)
        self.target = _positive("target", target)
        self.horizon = _positive("horizon", horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust the coefficient after n_steps samples (or updates) whose mean KL was current_kl."""
        current_kl = _check_update(current_kl, n_steps)
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore value, target and horizon (like an optimizer's state_dict restores its hyperparameters)."""
        state = _read_state(state, ("value", "target", "horizon"))
        self.value = _nonnegative("value", state["value"])
        self.target = _positive("target", state["target"])
        self.horizon = _positive("horizon", state["horizon"])


def _read_state(state: dict, keys: tuple[str, ...]) -> dict:
    missing, unexpected = set(keys) - set(state), set(state) - set(keys)
    if missing or unexpected:
        raise ValueError(f"state dict has missing keys {sorted(missing)} and unexpected keys {sorted(unexpected)}")
    return state


def _as_float(name: str, x) -> float:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def _nonnegative(name: str, x) -> float:
    x = _as_float(name, x)
    if x < 0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return x


def _positive(name: str, x) -> float:
    x = _as_float(name, x)
    if x <= 0:
        raise ValueError(f"{name} must be > 0, got {x!r}")
    return x


def _check_update(current_kl, n_steps) -> float:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int, got {n_steps!r}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    return _as_float("current_kl", current_kl)
