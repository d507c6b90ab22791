"""Rollouts: a batch of episodes from a `PromptEditVectorEnv`, sampled one token per step with the KV cache.

Layout of a `RolloutBatch` (B episodes, C context columns, T generated columns):

    input_ids[B, C + T]:  [pad .. pad | context | a_0 a_1 .. a_{n-1} | pad .. pad]
    mask[B, T]:           True on generated tokens a_0 .. a_{n-1} (each row right-padded)

Per generated token t the batch records the action, log pi_old(a_t | s_t) under the full policy, the log-prob
under the distribution it was actually sampled from (the typical set when `typical_mass` is set), V(s_t), the
reference model's log-prob, and the env's reward (the episode reward lands on the last token). Both episode
endings (EOS and `max_new_tokens`) deliver the final reward, so no episode needs a bootstrap value.

Conversations (`ChatRolloutCollector`, on a `PromptChatVectorEnv` with `sync_turns=True`): one row per (conversation,
turn), holding that turn's context (history + current edit, as the env showed it) and the tokens written in it;
`episode[B]` says which conversation a row belongs to and `turn[B]` which turn it is, rows ordered by conversation
then turn. Each turn's reward lands on that turn's last token. Both collectors share one token loop
(`RolloutCollector.sample_segment`): a single-turn episode is one segment, a conversation one segment per turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode

from promptgym.agents.policy import PolicyOutput, PolicyWithValue, output_cache, select_cache_rows
from promptgym.agents.sampling import (
    action_logprobs,
    action_logprobs_and_entropy,
    sample_with_log_probs,
    typical_mask,
)
from promptgym.envs import Conversation, EditTask, PromptChatVectorEnv, PromptEditVectorEnv


@dataclass
class RolloutBatch:
    """A batch of finished episodes; see the module docstring for the layout."""

    input_ids: torch.Tensor  # [B, C+T] long
    attention_mask: torch.Tensor  # [B, C+T] long
    context_length: int  # C
    actions: torch.Tensor  # [B, T] long
    mask: torch.Tensor  # [B, T] bool
    logprobs: torch.Tensor  # [B, T] log pi_old(a_t | s_t), full policy
    sample_logprobs: torch.Tensor  # [B, T] log-prob under the sampling distribution
    values: torch.Tensor  # [B, T] V(s_t)
    ref_logprobs: torch.Tensor  # [B, T]
    env_rewards: torch.Tensor  # [B, T] the env's per-step rewards
    scores: torch.Tensor  # [B] episode reward
    negative: torch.Tensor  # [B] bool: a keyword-corrupted negative sample, not a policy sample
    entropy: torch.Tensor  # [B, T] entropy of the full policy at s_t (0 for negatives: not sampled)
    tasks: list[EditTask] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    integrity: torch.Tensor | None = None  # [B, T] CI(s_t) of each prefix, when computed
    episode: torch.Tensor | None = None  # [B] long: the (global) conversation of each row; None: one row per episode
    turn: torch.Tensor | None = None  # [B] long: each row's turn in its conversation; None: single-turn episodes

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    def to(self, device: torch.device | str) -> RolloutBatch:
        """The batch with every tensor on `device` (itself when they are there already)."""
        device = torch.device(device)
        if self.actions.device == device:
            return self
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif f.name == "components":
                value = {k: v.to(device) for k, v in value.items()}
            moved[f.name] = value
        return RolloutBatch(**moved)

    def rows(self, index: torch.Tensor) -> RolloutBatch:
        """The sub-batch of episodes `index` (a minibatch)."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value[index]
            elif f.name in ("tasks", "prompts"):
                picked[f.name] = [value[i] for i in index.tolist()]
            elif f.name == "components":
                picked[f.name] = {k: v[index] for k, v in value.items()}
            else:
                picked[f.name] = value
        return RolloutBatch(**picked)

    @staticmethod
    def concat(batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
        """Stack batches: contexts left-padded to the longest C, generated columns right-padded to the longest T."""
        c = max(b.context_length for b in batches)
        t = max(b.actions.shape[1] for b in batches)

        def per_token(name: str, fill) -> torch.Tensor:
            return torch.cat([F.pad(getattr(b, name), (0, t - getattr(b, name).shape[1]), value=fill) for b in batches])

        def sequence(name: str, fill: int) -> torch.Tensor:
            parts = []
            for b in batches:
                x = getattr(b, name)
                parts.append(F.pad(x, (c - b.context_length, t - b.actions.shape[1]), value=fill))
            return torch.cat(parts)

        names = set.intersection(*(set(b.components) for b in batches))
        integrity = None
        if all(b.integrity is not None for b in batches):
            integrity = per_token("integrity", 0.0)

        def per_row(name: str) -> torch.Tensor | None:
            parts = [getattr(b, name) for b in batches]
            if all(part is None for part in parts):
                return None
            if any(part is None for part in parts):
                raise ValueError(f"RolloutBatch.concat: some batches have {name!r} and some do not; give every "
                                 "batch of a conversation collection its episode and turn")
            return torch.cat(parts)
        return RolloutBatch(
            input_ids=sequence("input_ids", pad_id),
            attention_mask=sequence("attention_mask", 0),
            context_length=c,
            actions=per_token("actions", pad_id),
            mask=per_token("mask", False),
            logprobs=per_token("logprobs", 0.0),
            sample_logprobs=per_token("sample_logprobs", 0.0),
            values=per_token("values", 0.0),
            ref_logprobs=per_token("ref_logprobs", 0.0),
            env_rewards=per_token("env_rewards", 0.0),
            scores=torch.cat([b.scores for b in batches]),
            negative=torch.cat([b.negative for b in batches]),
            entropy=per_token("entropy", 0.0),
            tasks=[task for b in batches for task in b.tasks],
            prompts=[p for b in batches for p in b.prompts],
            components={k: torch.cat([b.components[k] for b in batches]) for k in sorted(names)},
            integrity=integrity,
            episode=per_row("episode"),
            turn=per_row("turn"),
        )


def generated_slice(context_length: int, steps: int) -> slice:
    """Columns of a full-sequence forward whose outputs belong to generated tokens: position C-1+t predicts a_t."""
    return slice(context_length - 1, context_length - 1 + steps)


def action_logits(policy: PolicyWithValue, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced logits `[B, T, V]` (float32) and V(s_t) `[B, T]` of `policy` at the batch's generated
    positions (position t predicts a_t), on the policy's device."""
    device = policy.device
    out = policy(batch.input_ids.to(device), batch.attention_mask.to(device))
    cols = generated_slice(batch.context_length, batch.actions.shape[1])
    return out.logits[:, cols].float(), out.values[:, cols].float()


def score_actions(
    logits: torch.Tensor, actions: torch.Tensor, typical_mass: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """log pi(a_t|s_t) and the entropy `[B, T]` from `logits[B, T, V]`; with `typical_mass` also the log-prob
    under the *current* locally typical set (-inf for actions outside it), else None."""
    logprobs, entropy = action_logprobs_and_entropy(logits, actions)
    restricted = None
    if typical_mass is not None:
        restricted = action_logprobs(logits, actions, typical_mask(logits.detach(), typical_mass))
    return logprobs, entropy, restricted


def evaluate_actions(
    policy: PolicyWithValue, batch: RolloutBatch, typical_mass: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log pi(a_t|s_t), V(s_t) and entropy `[B, T]` of the batch's actions under `policy`.

    With `typical_mass`, also the log-prob under the policy's *current* locally typical set (-inf for actions
    outside it); otherwise that entry is None. The results are on the policy's device.
    """
    logits, values = action_logits(policy, batch)
    logprobs, entropy, restricted = score_actions(logits, batch.actions.to(logits.device), typical_mass)
    return logprobs, values, entropy, restricted


def distinct_contexts(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the first row of each distinct context, each row's context as an index into those) for left-padded contexts
    `input_ids[B, C]` / `attention_mask[B, C]`, or None when every row's context is its own. Two rows share a context
    when their real tokens and padding agree (what `ppo.samples_per_task` makes: a task's samples start from one)."""
    keys = torch.cat([input_ids * attention_mask, attention_mask], 1)
    distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if len(distinct) == len(keys):
        return None
    rows = torch.arange(len(keys))
    first = torch.full((len(distinct),), len(keys)).scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


@torch.no_grad()
def reference_action_logits(policy: PolicyWithValue, batch: RolloutBatch) -> torch.Tensor:
    """The reference model's logits `[B, T, V]` (float32) at the batch's generated positions, on the policy's
    device: one teacher-forced pass that computes only those positions' logits. Rows that share a context
    (`distinct_contexts`) encode it once: one cached pass over the distinct contexts, then one over every row's
    generated tokens."""
    steps, device, c = batch.actions.shape[1], policy.device, batch.context_length
    ids, attention = batch.input_ids.to(device), batch.attention_mask.to(device)
    shared = distinct_contexts(batch.input_ids[:, :c], batch.attention_mask[:, :c])
    if shared is None:
        logits = policy.reference_logits(ids, attention, logits_to_keep=steps + 1)
        return logits[:, -(steps + 1) : -1].float()
    first, inverse = (index.to(device) for index in shared)
    context = policy.reference_forward(ids[first, :c], attention[first, :c], use_cache=True, logits_to_keep=1)
    logits = [context.logits[inverse, -1:]]  # position C - 1 predicts a_0
    if steps > 1:
        cache = select_cache_rows(output_cache(context), inverse)
        written = ids[:, c : c + steps - 1]
        logits.append(policy.reference_forward(written, attention[:, : c + steps - 1], cache=cache).logits)
    return torch.cat(logits, 1).float()


def reference_logprobs(policy: PolicyWithValue, batch: RolloutBatch) -> torch.Tensor:
    """log pi_ref(a_t | s_t) `[B, T]` on the batch's device, one teacher-forced pass of the reference model."""
    log_probs = reference_action_logits(policy, batch).log_softmax(-1)
    actions = batch.actions.to(log_probs.device)
    logprobs = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1).to(batch.mask.device)
    return logprobs.masked_fill(~batch.mask, 0.0)


class RolloutCollector:
    """Samples one episode per sub-environment of `env` with the policy, one cached forward per token.

    `env` must use `autoreset_mode="disabled"` so that finished episodes stay finished while the others run.
    With `typical_mass` (DiffChat's action-space correction), tokens are drawn from the renormalised locally
    typical set; `sample_logprobs` then holds the restricted log-probs and `logprobs` the full-policy ones.
    """

    def __init__(
        self,
        policy: PolicyWithValue,
        env: PromptEditVectorEnv,
        typical_mass: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if env.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError(
                f"env has autoreset_mode={env.autoreset_mode.value!r}; the collector needs "
                "PromptEditVectorEnv(..., autoreset_mode='disabled') to collect exactly one episode per sub-env"
            )
        if typical_mass is not None and not 0.0 < typical_mass <= 1.0:
            raise ValueError(f"typical_mass={typical_mass!r}; expected None or a number in (0, 1]")
        self.policy = policy
        self.env = env
        self.typical_mass = typical_mass
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.reference_seconds = 0.0  # wall time of the reference passes so far (a profile for the PPO metrics)

    @torch.no_grad()
    def collect(
        self,
        seed: int | None = None,
        reference: bool = True,
        options: dict | None = None,
        shard: tuple[int, int] | None = None,
    ) -> RolloutBatch:
        """Run one episode in every sub-environment and return them as a batch (tensors on the CPU).

        With `reference`, one teacher-forced pass of the reference model fills `ref_logprobs` (needed for the
        KL penalty; otherwise they are left at 0). `options` go to `env.reset` (e.g. `{"tasks": [...]}` to
        pin each sub-environment to a task). `shard=(offset, total)` makes these episodes rows
        `offset .. offset + num_envs` of a global batch of `total`. The uniforms of every step are drawn up front
        (`max_new_tokens x total`, whatever the episodes' lengths) and each process uses its slice, so
        data-parallel processes together sample what one process would, and their generators stay in step.
        """
        offset, total = _check_shard(shard, self.env.num_envs)
        obs, _ = self.env.reset(seed=seed, options=options)
        batch = self._sample(obs, offset, total)
        return self._with_reference(batch) if reference else batch

    def _sample(self, obs: dict[str, np.ndarray], offset: int, total: int) -> RolloutBatch:
        """One episode per sub-env from the reset observation `obs`: one segment, all sub-envs."""
        n, horizon = self.env.num_envs, self.env.episodes.max_new_tokens
        uniforms = torch.rand(horizon, total, generator=self.generator, dtype=torch.float64)[:, offset : offset + n]
        batch, _ = self.sample_segment(obs, torch.arange(n), uniforms, _episode_ended)
        return batch

    @torch.no_grad()
    def sample_segment(
        self,
        obs: dict[str, np.ndarray],
        rows: torch.Tensor,
        uniforms: torch.Tensor,
        ended: Callable[[np.ndarray, np.ndarray, dict], np.ndarray],
    ) -> tuple[RolloutBatch, dict[str, np.ndarray]]:
        """The token loop: sub-envs `rows` (the others get padding, which a finished or waiting sub-env ignores)
        write from their current observation `obs` until `ended(terminated, truncated, infos)` (bool[num_envs])
        has said so for each; one prefill of their contexts, then one KV-cached forward per token.

        `uniforms[max_new_tokens, len(rows)]` drive the sampling. Returns the segment as a batch of `len(rows)`
        rows (no reference pass; each row's task as it was when the segment started) and the env's last
        observation (for a conversation: the next turns' first observations)."""
        env, pad = self.env, self.env.episodes.pad_id
        n, horizon = len(rows), env.episodes.max_new_tokens
        idx = rows.numpy()
        device = self.policy.device
        tasks = [env.tasks[i] for i in idx]
        ids, mask = _trimmed_context({k: v[idx] for k, v in obs.items()}, env.episodes.max_context_tokens)
        # One entry per step, stacked once at the end (per-step writes into [n, horizon] tensors cost more).
        rec: dict[str, list[torch.Tensor]] = {name: [] for name in ("logprobs", "sample_logprobs", "values", "entropy")}
        step_actions: list[torch.Tensor] = []
        step_alive: list[torch.Tensor] = []
        step_rewards: list[np.ndarray] = []
        done = torch.zeros(n, dtype=torch.bool)
        prompts: list[str] = [""] * env.num_envs
        components: dict[str, torch.Tensor] = {}
        env_actions = np.full(env.num_envs, pad, dtype=np.int64)
        was_training = self.policy.training
        self.policy.eval()
        device_mask = mask.to(device)
        out = self._prefill(ids, mask)
        for t in range(horizon):
            logits = out.logits[:, -1].float()
            keep = typical_mask(logits, self.typical_mass) if self.typical_mass is not None else None
            action, lp_full, lp_sample, log_probs = sample_with_log_probs(logits, keep, None, uniforms[t])
            action = action.cpu().masked_fill(done, pad)
            rec["logprobs"].append(lp_full)
            rec["sample_logprobs"].append(lp_sample)
            rec["values"].append(out.values[:, -1])
            rec["entropy"].append(-(log_probs.exp() * log_probs).nan_to_num().sum(-1))
            step_actions.append(action)
            step_alive.append(~done)
            env_actions[idx] = action.numpy()
            obs, rewards, terminated, truncated, infos = env.step(env_actions)
            step_rewards.append(rewards[idx])
            _record_finished(infos, prompts, components, env.num_envs)
            done |= torch.from_numpy(ended(terminated, truncated, infos)[idx])
            if done.all():
                break
            device_mask = torch.cat([device_mask, torch.ones(n, 1, dtype=mask.dtype, device=device)], dim=1)
            out = self.policy(action.to(device).unsqueeze(1), device_mask, cache=out.cache, use_cache=True)
        self.policy.train(was_training)
        alive = torch.stack(step_alive, 1)
        actions = torch.stack(step_actions, 1)
        per_step = {name: torch.stack(values, 1).float().cpu() * alive for name, values in rec.items()}
        env_rewards = torch.from_numpy(np.stack(step_rewards, 1)).float() * alive
        batch = RolloutBatch(
            input_ids=torch.cat([ids, actions], 1),
            attention_mask=torch.cat([mask, alive.long()], 1),
            context_length=ids.shape[1],
            actions=actions,
            mask=alive,
            logprobs=per_step["logprobs"],
            sample_logprobs=per_step["sample_logprobs"],
            values=per_step["values"],
            ref_logprobs=torch.zeros(alive.shape),
            env_rewards=env_rewards,
            scores=env_rewards.sum(1),
            negative=torch.zeros(n, dtype=torch.bool),
            entropy=per_step["entropy"],
            tasks=tasks,
            prompts=[prompts[i] for i in idx],
            components={name: values[rows] for name, values in components.items()},
        )
        return batch, obs

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> PolicyOutput:
        """The policy's cached forward over the contexts `ids[n, C]`, each distinct context once (`distinct_contexts`:
        a task's samples share one), its last position's logits, value and cache copied to every row that has it."""
        device = self.policy.device
        shared = distinct_contexts(ids, mask)
        if shared is None:
            return self.policy(ids.to(device), mask.to(device), use_cache=True)
        first, inverse = shared
        out = self.policy(ids[first].to(device), mask[first].to(device), use_cache=True)
        return out.last_position_rows(inverse.to(device))

    def _with_reference(self, batch: RolloutBatch) -> RolloutBatch:
        """`batch` with `ref_logprobs` filled by one teacher-forced pass of the reference model (timed)."""
        start = time.perf_counter()
        batch.ref_logprobs = reference_logprobs(self.policy, batch)
        self.reference_seconds += time.perf_counter() - start
        return batch


class ChatRolloutCollector(RolloutCollector):
    """Samples one whole conversation per sub-environment of a `PromptChatVectorEnv`, turn by turn: every turn is
    one `sample_segment` of all conversations still going (one prefill of their contexts, then one cached forward
    per token), and becomes one row per conversation (see the module docstring).

    `collect` takes `RolloutCollector.collect`'s arguments (`options` as `PromptChatVectorEnv.reset` takes them).
    The env must use `autoreset_mode="disabled"` and `sync_turns=True` (turns start together, so the contexts of a
    turn are known, and prefilled, at once). The uniforms of `max_turns x max_new_tokens x total` steps are drawn
    up front, `max_turns` the most turns of any of the env's conversations, so data-parallel processes stay in
    step whatever their conversations' lengths.
    """

    def __init__(
        self,
        policy: PolicyWithValue,
        env: PromptChatVectorEnv,
        typical_mass: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(env, PromptChatVectorEnv) or not env.sync_turns:
            raise ValueError(
                f"env is {type(env).__name__}{'' if not hasattr(env, 'sync_turns') else ' with sync_turns=False'}; "
                "the conversation collector needs PromptChatVectorEnv(..., sync_turns=True, autoreset_mode='disabled')"
            )
        super().__init__(policy, env, typical_mass, generator)

    def _sample(self, obs: dict[str, np.ndarray], offset: int, total: int) -> RolloutBatch:
        """One conversation per sub-env from the reset observation `obs`, a segment per turn; rows (conversation,
        turn) ordered by conversation then turn, `episode` = `offset + i` for sub-env i."""
        env = self.env
        n, horizon = env.num_envs, env.episodes.max_new_tokens
        max_turns = max(len(c.turns) for c in [*env.chats.conversations, *env.conversations])
        uniforms = torch.rand(max_turns, horizon, total, generator=self.generator, dtype=torch.float64)
        uniforms = uniforms[..., offset : offset + n]
        finished = np.zeros(n, dtype=bool)
        segments = []
        for k in range(max_turns):
            rows = torch.from_numpy(np.flatnonzero(~finished))
            if not len(rows):
                break
            turns = torch.from_numpy(env.turns[rows.numpy()])
            segment, obs = self.sample_segment(obs, rows, uniforms[k, :, rows], _turn_ended)
            segment.episode, segment.turn = rows + offset, turns
            segments.append(segment)
            finished = env.finished
        if not finished.all():
            raise RuntimeError(f"conversations {np.flatnonzero(~finished).tolist()} did not end within {max_turns} "
                               "turns; the env's conversations changed during collection")
        batch = RolloutBatch.concat(segments, pad_id=env.episodes.pad_id)
        return batch.rows(torch.from_numpy(np.lexsort((batch.turn.numpy(), batch.episode.numpy()))))


def sample_episodes(
    policy: PolicyWithValue,
    env: PromptEditVectorEnv | PromptChatVectorEnv,
    seed: int,
    tasks: Sequence[EditTask] | Sequence[Conversation] | None = None,
    typical_mass: float | None = None,
    generator: torch.Generator | None = None,
) -> RolloutBatch:
    """One sampled episode per sub-environment of `env` (no reference pass): what every evaluation, sample log
    and `promptgym edit` draws. Sub-env i edits `tasks[i]`, or, without `tasks`, the task its reset draws. On a
    `PromptChatVectorEnv` (with `sync_turns=True`) `tasks` are `Conversation`s and each turn is a row.

    `seed` seeds the reset and, unless a `generator` is passed (to continue one stream over several batches),
    the sampling.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    chat = isinstance(env, PromptChatVectorEnv)
    collector = (ChatRolloutCollector if chat else RolloutCollector)(policy, env, typical_mass, generator)
    key = "conversations" if chat else "tasks"
    return collector.collect(seed=seed, reference=False, options=None if tasks is None else {key: list(tasks)})


def _check_shard(shard: tuple[int, int] | None, n: int) -> tuple[int, int]:
    """(offset, total) of a collector's `n` episodes in the global batch; the whole batch without a shard."""
    offset, total = shard if shard is not None else (0, n)
    if offset < 0 or offset + n > total:
        raise ValueError(f"shard={shard!r} does not hold this collector's {n} episodes")
    return offset, total


def _episode_ended(terminated: np.ndarray, truncated: np.ndarray, infos: dict) -> np.ndarray:
    return terminated | truncated


def _turn_ended(terminated: np.ndarray, truncated: np.ndarray, infos: dict) -> np.ndarray:
    """A chat turn ended: the env's turn-end info (`turn`), or the conversation's end."""
    return infos.get("_turn", np.zeros_like(terminated)) | terminated | truncated


def _trimmed_context(obs: dict[str, np.ndarray], context_columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The contexts of a reset observation without the columns that are padding in every row."""
    ids = torch.from_numpy(obs["input_ids"][:, :context_columns])
    mask = torch.from_numpy(obs["attention_mask"][:, :context_columns]).long()
    first = int(torch.nonzero(mask.any(0))[0])
    return ids[:, first:], mask[:, first:]


def _record_finished(infos: dict, prompts: list[str], components: dict[str, torch.Tensor], n: int) -> None:
    if "_prompt" not in infos:
        return
    for i in np.flatnonzero(infos["_prompt"]):
        prompts[i] = infos["prompt"][i]
    for name, values in infos.get("reward_components", {}).items():
        if name.startswith("_"):
            continue
        if name not in components:
            components[name] = torch.zeros(n)
        finished = torch.from_numpy(infos["reward_components"][f"_{name}"])
        components[name][finished] = torch.from_numpy(np.asarray(values, dtype=np.float32))[finished]
