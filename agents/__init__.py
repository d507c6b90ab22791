"""Agents for prompt editing: policy with value head, sampling, rollouts, PPO, reward-weighted likelihood (RWR), SFT
and baselines.

The math is in pure tensor functions (`compute_gae`, `typical_mask`, `kl_estimate`, `corrupt_keywords`,
`leave_one_out_baseline`) so each DiffChat refinement can be read, tested and swapped on its own.
"""

from promptgym.agents.checkpoint import (
    CheckpointState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from promptgym.agents.conversation import ConversationPacking, conversation_gae
from promptgym.agents.distributed import DataParallel, GlobalRows
from promptgym.agents.gae import compute_gae
from promptgym.agents.groups import leave_one_out_baseline
from promptgym.agents.kl import AdaptiveKLController, FixedKLController, KLController, exact_kl, kl_estimate
from promptgym.agents.negatives import corrupt_keywords
from promptgym.agents.policy import PolicyOutput, PolicyWithValue, ValueHead, fuse_gelu_modules
from promptgym.agents.ppo import Collected, PPOAgent, PPOConfig, ppo_losses
from promptgym.agents.rollout import ChatRolloutCollector, RolloutBatch, RolloutCollector, evaluate_actions
from promptgym.agents.rwr import RWRAgent, RWRConfig, rwr_weights
from promptgym.agents.sampling import action_logprobs, sample_restricted, typical_mask
from promptgym.agents.sft import (
    ContextExample,
    SFTConfig,
    SFTResult,
    chat_examples,
    completion_loss,
    sft_warm_start,
)

__all__ = [
    "AdaptiveKLController",
    "ChatRolloutCollector",
    "CheckpointState",
    "Collected",
    "DataParallel",
    "GlobalRows",
    "PolicyOutput",
    "PolicyWithValue",
    "fuse_gelu_modules",
    "PPOAgent",
    "RWRAgent",
    "RWRConfig",
    "rwr_weights",
    "PPOConfig",
    "RolloutBatch",
    "RolloutCollector",
    "SFTConfig",
    "SFTResult",
    "completion_loss",
    "chat_examples",
    "ContextExample",
    "sft_warm_start",
    "evaluate_actions",
    "ppo_losses",
    "ValueHead",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "FixedKLController",
    "KLController",
    "action_logprobs",
    "compute_gae",
    "conversation_gae",
    "ConversationPacking",
    "corrupt_keywords",
    "exact_kl",
    "kl_estimate",
    "leave_one_out_baseline",
    "sample_restricted",
    "typical_mask",
]
