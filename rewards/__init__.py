"""Rewards for prompt editing: the scorer interface, content integrity, composite reward and shaping.

This package imports nothing from the other promptgym packages (tasks are typed structurally by `TaskLike`).
"""

from promptgym.rewards.base import EditResult, RewardOutput, Scorer, TaskLike
from promptgym.rewards.composite import CompositeReward, RunningMeanStd, ScorerError, as_composite
from promptgym.rewards.integrity import ContentIntegrityScorer
from promptgym.rewards.keywords import KeywordSpec, extract_keywords
from promptgym.rewards.shaping import PotentialShaping

__all__ = [
    "CompositeReward",
    "ContentIntegrityScorer",
    "EditResult",
    "KeywordSpec",
    "PotentialShaping",
    "RewardOutput",
    "RunningMeanStd",
    "Scorer",
    "ScorerError",
    "TaskLike",
    "as_composite",
    "extract_keywords",
]
