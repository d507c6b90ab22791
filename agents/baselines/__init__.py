"""Baselines on promptgym's env, reward and budget of reward calls: Stable-Baselines3 PPO, TRL GRPO and RLOO.

Every baseline is held to the same budget as our PPO variants: a *reward call* is one edited prompt scored (one
finished episode, as `PPOAgent.num_reward_calls` counts them), and each baseline stops at the first batch boundary at
or past `budget_reward_calls`, so it uses between `budget` and `budget + batch - 1` calls. The calls are counted by
`promptgym.rewards.CountingReward` around the caller's reward, never inferred from the algorithm's settings; the
learning curve is read off the same records: one point (reward calls so far, mean total reward of the episodes scored
since the previous point) per SB3 rollout or TRL generation batch. Each run returns a `RunResult`.

- `sb3`: `run_sb3_ppo`, SB3's PPO on the token env, from scratch (the "no LM" baseline); `evaluate_sb3`.
- `trl`: `run_trl("grpo" | "rloo", ...)`, TRL's trainers on a copy of the caller's (SFT'd) policy LM.
- `evaluate`: `evaluate_lm`, the final evaluation every LM variant gets (`evaluate_lm_with_kl`: and its KL to the start).

Both runners restore the global RNG states (SB3 and TRL seed `random`, numpy and torch globally) and write nothing
outside a temporary (or the given) directory.
"""

from promptgym.agents.baselines.common import RunResult, preserved_global_rngs
from promptgym.agents.baselines.evaluate import evaluate_lm, evaluate_lm_with_kl
from promptgym.agents.baselines.sb3 import (
    SB3_PPO_DEFAULTS,
    BudgetCallback,
    SB3VecEnv,
    TokenFeaturesExtractor,
    evaluate_sb3,
    run_sb3_ppo,
)
from promptgym.agents.baselines.trl import TRL_ALGORITHMS, run_trl

__all__ = [
    "SB3_PPO_DEFAULTS",
    "TRL_ALGORITHMS",
    "BudgetCallback",
    "RunResult",
    "SB3VecEnv",
    "TokenFeaturesExtractor",
    "evaluate_lm",
    "evaluate_lm_with_kl",
    "evaluate_sb3",
    "preserved_global_rngs",
    "run_sb3_ppo",
    "run_trl",
]
