"""Shared helpers for the reward-call counter and baseline tests: a two-term reward whose score varies with the text."""

from __future__ import annotations

import torch

from promptgym.rewards import CompositeReward, ContentIntegrityScorer


class CharLength:
    """Score = characters of the edited prompt / 10: varies between random completions, so GRPO has a signal."""

    name = "chars"

    def __call__(self, results):
        return torch.tensor([len(r.prompt) / 10.0 for r in results])


def integrity_and_length() -> CompositeReward:
    return CompositeReward({"integrity": (ContentIntegrityScorer(mode="ratio"), 1.0), "chars": (CharLength(), 0.1)})
