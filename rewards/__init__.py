"""Rewards for prompt editing: scorer interface, renderer, image scorers, content integrity, presets, shaping.

This package imports nothing from the other promptgym packages (tasks are typed structurally by `TaskLike`).
"""

from promptgym.rewards.base import EditResult, EditTask, RewardOutput, Scorer, TaskLike
from promptgym.rewards.checks import ScorerCheckError, ScorerCheckWarning, ScorerReport, check_scorer
from promptgym.rewards.composite import (
    CompositeReward,
    RewardWrapper,
    RunningMeanStd,
    ScorerError,
    as_composite,
    monitoring,
    reward_seconds,
)
from promptgym.rewards.counting import CountingReward
from promptgym.rewards.image_scorers import AestheticMLP, AestheticScorer, PickScoreScorer
from promptgym.rewards.integrity import ContentIntegrityScorer, IntegrityDetails, integrity_ratio
from promptgym.rewards.keywords import KeywordSpec, extract_keywords, lemma, prompt_lemmas
from promptgym.rewards.presets import PRESETS, build_reward, byte_tokenizer, clear_reward_caches, reward_stats
from promptgym.rewards.render import DiffusersRenderer
from promptgym.rewards.semantic import SemanticConsistencyScorer
from promptgym.rewards.shaping import PotentialShaping
from promptgym.rewards.surrogate import SentenceEmbedder, SurrogateHead, SurrogateScorer
from promptgym.rewards.trl import as_trl_reward_func

__all__ = [
    "PRESETS",
    "AestheticMLP",
    "AestheticScorer",
    "CompositeReward",
    "ContentIntegrityScorer",
    "CountingReward",
    "DiffusersRenderer",
    "EditResult",
    "EditTask",
    "IntegrityDetails",
    "KeywordSpec",
    "PickScoreScorer",
    "PotentialShaping",
    "RewardOutput",
    "RewardWrapper",
    "RunningMeanStd",
    "Scorer",
    "ScorerCheckError",
    "ScorerCheckWarning",
    "ScorerError",
    "ScorerReport",
    "SemanticConsistencyScorer",
    "SentenceEmbedder",
    "SurrogateHead",
    "SurrogateScorer",
    "TaskLike",
    "as_composite",
    "as_trl_reward_func",
    "build_reward",
    "byte_tokenizer",
    "check_scorer",
    "clear_reward_caches",
    "extract_keywords",
    "integrity_ratio",
    "lemma",
    "monitoring",
    "prompt_lemmas",
    "reward_seconds",
    "reward_stats",
]
