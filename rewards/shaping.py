"""Potential-based reward shaping (Ng, Harada & Russell, 1999).

The shaping term for a transition s -> s' is F(s, s') = gamma * Phi(s') - Phi(s). Summed with discount
over an episode it telescopes to gamma^T Phi(s_T) - Phi(s_0), so it cannot change which policy is optimal
(with `zero_at_terminal=True`, Phi of a terminal state is 0, the condition for episodic tasks of varying
length). The default potential is the content integrity of the prompt written so far.
"""

from __future__ import annotations

from collections.abc import Callable

from promptgym.rewards.base import TaskLike

Potential = Callable[[TaskLike, str], float]


class PotentialShaping:
    """Shaping F = gamma * Phi(s') - Phi(s), with Phi(task, prefix_text) a potential over partial prompts."""

    def __init__(self, potential: Potential | None = None, gamma: float = 1.0, zero_at_terminal: bool = True):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma!r}; expected a discount in [0, 1]")
        if potential is None:
            from promptgym.rewards.integrity import ContentIntegrityScorer

            potential = ContentIntegrityScorer().partial
        if not callable(potential):
            raise TypeError(f"potential={potential!r}; expected a callable (task, prefix_text) -> float")
        self.potential = potential
        self.gamma = float(gamma)
        self.zero_at_terminal = zero_at_terminal

    def phi(self, task: TaskLike, prefix_text: str, terminal: bool = False) -> float:
        """Phi of the state whose generated text is `prefix_text` (0 at a terminal state if so configured)."""
        if terminal and self.zero_at_terminal:
            return 0.0
        return float(self.potential(task, prefix_text))

    def term(self, phi_before: float, phi_after: float) -> float:
        """F(s, s') = gamma * Phi(s') - Phi(s)."""
        return self.gamma * phi_after - phi_before
