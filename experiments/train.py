"""`promptgym train`: SFT warm start, then DiffChat PPO, logged into a run directory (see `rundir.py`).
With `env.kind: chat` (the `chat` preset) PPO trains on multi-turn conversations and the fixed evaluation set is a
set of test conversations, logged one row per turn, with the summary's per-turn table.

    promptgym train [--config synth] [--out runs/NAME] [--set ppo.learning_rate=1e-4 ...]
    promptgym train --resume runs/NAME [--set train.num_updates=80]
    accelerate launch --num_processes 2 -m promptgym.experiments train [same arguments]

Ctrl-C saves a checkpoint and exits cleanly; `--resume` continues the same run from its latest intact checkpoint
(the metrics and samples logs continue without a gap or a repeat; a last log line torn by a kill is dropped, a
damaged checkpoint is skipped, each said on stderr). One process writes a run directory at a time (its lock,
`RunDir.lock`); a directory that already holds a run is refused unless `resume` or `overwrite` is given.

Under `accelerate launch` (or `torchrun`) the run is data-parallel: `ppo.n_episodes` stays the global batch,
each process collects `n_episodes / processes` of its episodes, gradients are all-reduced every minibatch (see
`promptgym.agents.distributed`), and only the main process writes the run directory. Every process runs the
same seeded SFT and the main process's weights are then broadcast, so all start from the same policy.
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from promptgym.agents import DataParallel, PolicyWithValue, PPOAgent, sft_warm_start
from promptgym.agents.checkpoint import latest_checkpoint, verify_checksums, write_checksums
from promptgym.agents.rollout import sample_episodes
from promptgym.envs import Conversation, EditTask, load_conversations, load_tasks
from promptgym.experiments.builders import (
    build_chat_env,
    build_parallel,
    build_policy,
    build_run_reward,
    build_tokenizer,
    build_training_env,
    build_vector_env,
    policy_device,
    seed_everything,
    sft_examples,
)
from promptgym.experiments.config import ConfigError, save_config
from promptgym.experiments.plots import (
    REWARD_KEY,
    plot_evaluations,
    plot_image_grid,
    plot_training,
    proxy_key,
)
from promptgym.experiments.rundir import RunDir, intact_checkpoint, read_run_jsonl
from promptgym.experiments.stats import PairedChange, format_paired_table, paired_changes
from promptgym.rewards import CompositeReward, reward_stats
from promptgym.rewards.composite import UNNORMALIZED_COMPONENT, monitoring, unwrap

SAMPLE_SEED = 20241113  # every evaluation samples with the same seed, so sample changes reflect the policy


@dataclass
class RunResult:
    """What `train` did: the run directory, metrics of every update, and whether it was interrupted."""

    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False
    wall_time_s: float = 0.0
    is_main: bool = True  # False in the other processes of a data-parallel run


def fixed_eval_tasks(tasks: list[EditTask], n: int) -> list[EditTask]:
    """`n` tasks spread evenly over the split (deterministic), for samples and plots."""
    if n <= 0 or not tasks:
        return []
    step = max(1, len(tasks) // n)
    return tasks[::step][:n]


def sample_rows(agent: PPOAgent, tasks: list[EditTask], update: int, config) -> list[dict[str, Any]]:
    """One edited prompt per fixed task, sampled with a fixed seed, with its reward components."""
    env = build_vector_env(config, tasks, agent.env.tokenizer, agent.env.reward)
    batch = sample_episodes(agent.policy, env, SAMPLE_SEED, tasks, config.ppo.typical_mass)
    return [_sample_row(update, batch, i) for i in range(len(tasks))]


def sample_chat_rows(agent: PPOAgent, conversations: list[Conversation], update: int, config) -> list[dict[str, Any]]:
    """The fixed conversations played by the policy (fixed seed): one row per turn, its task the turn's edit of the
    policy's own previous prompt, with `conversation_id`, `turn` (0-based) and `num_turns`."""
    env = build_chat_env(config, conversations, agent.env.tokenizer, agent.env.reward)
    batch = sample_episodes(agent.policy, env, SAMPLE_SEED, conversations, config.ppo.typical_mass)
    rows = []
    for r, (i, k) in enumerate(zip(batch.episode.tolist(), batch.turn.tolist())):
        extra = {"conversation_id": conversations[i].id, "turn": k, "num_turns": len(conversations[i].turns)}
        rows.append(_sample_row(update, batch, r) | extra)
    return rows


def _sample_row(update: int, batch, i: int) -> dict[str, Any]:
    task = batch.tasks[i]
    return {
        "update": update,
        "task_id": task.id,
        "source": task.source,
        "instruction": task.instruction,
        "target": task.target,
        "prompt": batch.prompts[i],
        "reward": float(batch.scores[i]),
        "components": {name: float(values[i]) for name, values in batch.components.items()},
    }


# -------------------------------------------------------------------------------------------------- training
class Trainer:
    """Builds everything a run needs from its config and runs the PPO loop with logging and checkpoints."""

    def __init__(self, config, run_dir: str | Path, resume: bool = False, parallel: DataParallel | None = None) -> None:
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
        self.config = config
        self.parallel = parallel or build_parallel(config)
        if config.ppo.n_episodes % self.parallel.world_size:
            raise ConfigError(
                f"ppo.n_episodes={config.ppo.n_episodes} cannot be split over {self.parallel.world_size} processes;"
                " make it a multiple of the number of processes"
            )
        self.is_main = self.parallel.is_main
        self.device = policy_device(config, self.parallel)
        self.run = RunDir(run_dir).create() if self.is_main else RunDir(run_dir)
        self.resume = resume
        seed_everything(config.seed)
        self.tokenizer = build_tokenizer(config)
        self.eval_tasks = load_tasks(config.data.tasks, split=config.data.eval_split)
        self.fixed_tasks = fixed_eval_tasks(self.eval_tasks, config.data.num_eval_tasks)
        self.chat = config.env.kind == "chat"
        self.fixed_conversations = fixed_eval_tasks(
            load_conversations(config.data.conversations, split=config.data.eval_split), config.data.num_eval_tasks
        ) if self.chat else []
        self.reward = build_run_reward(config, self.tokenizer)
        unwrap(self.reward).monitoring = config.reward.monitors is True  # "eval": gold in the evaluations only
        self.sft_result = None
        self.policy = self._starting_policy()
        self.env = build_training_env(config, self.tokenizer, self.reward, config.ppo.n_episodes // self.parallel.world_size)
        # the KL reference: the policy as it is now (the main process's, broadcast to all)
        self.agent = PPOAgent(self.policy, self.env, config.ppo, parallel=self.parallel)
        if resume:
            self._restore()
        elif self.is_main:
            save_config(config, self.run.config)
        self.writer = self._tensorboard() if self.is_main else None

    def _starting_policy(self) -> PolicyWithValue:
        """The policy PPO starts from (and the KL reference): after SFT, or reloaded from the run on resume."""
        if self.resume:
            if not self.run.sft_policy.is_dir():
                raise FileNotFoundError(f"{self.run.sft_policy} is missing; {self.run.root} is not a resumable run")
            verify_checksums(self.run.sft_policy)  # runs written before checksums have none: nothing to check
            return PolicyWithValue.from_pretrained(self.run.sft_policy).to(self.device)
        policy = build_policy(self.config, self.tokenizer, self.device)
        if self.config.sft.enabled:
            self.sft_result = sft_warm_start(
                policy,
                self.tokenizer,
                sft_examples(self.config, self.tokenizer),
                [t for t in self.eval_tasks if t.target is not None][:256],
                config=self.config.sft,
                progress=self.config.logging.progress and self.is_main,
            )
        if self.is_main:
            policy.save_pretrained(self.run.sft_policy)
            self.tokenizer.save_pretrained(self.run.sft_policy)
            write_checksums(self.run.sft_policy)  # the KL reference of a resume: damage must not pass silently
        return policy

    def _restore(self) -> None:
        if self.is_main:  # the others wait at the barrier: then the damaged checkpoints are out of the way
            intact_checkpoint(self.run.checkpoints, move_damaged=True)
        self.parallel.barrier()
        checkpoint = latest_checkpoint(self.run.checkpoints)  # the intact one; load verifies it again
        if checkpoint is None:
            raise FileNotFoundError(f"no intact checkpoint in {self.run.checkpoints}; nothing to resume")
        self.agent.load(checkpoint)
        done = self.agent.num_updates
        self.parallel.barrier()  # every process has read the logs' checkpoint before the main one edits them
        if self.is_main:
            for log in (self.run.metrics, self.run.samples):
                self.run.repair_torn_tail(log)
            self.run.truncate_after(self.run.metrics, done)
            self.run.truncate_after(self.run.samples, done)

    def _tensorboard(self):
        if not self.config.logging.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run.tensorboard), purge_step=self.agent.num_updates + 1)

    # -- the loop
    def run_updates(self) -> RunResult:
        from tqdm.auto import tqdm

        c = self.config
        result = RunResult(self.run.root, is_main=self.is_main)
        start = time.perf_counter()
        if self.agent.num_updates == 0:
            self._log_samples(0)
        bar = tqdm(
            total=c.train.num_updates,
            initial=self.agent.num_updates,
            desc="PPO",
            unit="update",
            disable=not (c.logging.progress and self.is_main),
        )
        stop = _StopRequest(bar.write)
        hard_stop = False
        try:
            with stop.on_sigint():
                while self.agent.num_updates < c.train.num_updates:
                    metrics = self.agent.step()
                    update = self.agent.num_updates
                    row = {
                        "update": update,
                        "episodes": self.agent.num_episodes,
                        "reward_calls": self.agent.num_reward_calls,
                        "wall_time_s": time.perf_counter() - start,
                        **metrics,
                        **reward_stats(self.reward),
                    }
                    if self.is_main:
                        self.run.append_jsonl(self.run.metrics, [row])
                    self._log_tensorboard(row, update)
                    result.history.append(row)
                    bar.update(1)
                    bar.set_postfix(
                        reward=f"{metrics['env/reward_mean']:.3f}",
                        kl=f"{metrics['objective/kl']:.2f}",
                        tok_s=f"{metrics['time/tokens_per_s']:.0f}",
                    )
                    if c.train.eval_every and update % c.train.eval_every == 0:
                        self._log_samples(update)
                    if c.train.checkpoint_every and update % c.train.checkpoint_every == 0:
                        self._checkpoint()
                    if self.parallel.sum_float(float(stop.requested))[0] > 0:  # every process stops at this update
                        result.interrupted = True
                        break
        except KeyboardInterrupt:  # a second Ctrl-C (or one outside the main thread): the update was cut short
            result.interrupted = hard_stop = True
            bar.write(
                f"stopped during update {self.agent.num_updates + 1}: no checkpoint of that half-done update is "
                f"written; --resume continues from the newest checkpoint"
            )
        finally:
            bar.close()
        evaluated_last = c.train.eval_every and self.agent.num_updates % c.train.eval_every == 0
        if not result.interrupted and not evaluated_last:
            self._log_samples(self.agent.num_updates)
        if not hard_stop:
            self._checkpoint()
        result.wall_time_s = time.perf_counter() - start
        if self.is_main:
            self.finish(result)
        return result

    def _checkpoint(self) -> Path:
        """Save the agent (main process only), after checking that every process holds the same weights."""
        path = self.run.checkpoints / f"step_{self.agent.num_updates:06d}"
        self.parallel.check_in_sync(self.policy)
        if not self.is_main or (path.exists() and (path / "meta.json").exists()):
            return path
        return self.agent.save(path, keep_last=self.config.train.keep_last)

    def _log_samples(self, update: int) -> None:
        """Sample and log the fixed tasks' edits. Their renders and scores leave the training reward's caches and
        statistics as they were, so training (and a resume) computes the same whether or not an evaluation ran."""
        if self.fixed_tasks and self.is_main:
            reward = self.agent.env.reward
            state = reward.state_dict()
            with monitoring(reward):
                if self.chat:
                    rows = sample_chat_rows(self.agent, self.fixed_conversations, update, self.config)
                else:
                    rows = sample_rows(self.agent, self.fixed_tasks, update, self.config)
            reward.load_state_dict(state)
            self.run.append_jsonl(self.run.samples, rows)

    def _log_tensorboard(self, row: dict[str, Any], update: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "update":
                self.writer.add_scalar(key, value, update)
        self.writer.flush()

    # -- the end of a run
    def finish(self, result: RunResult) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.config.logging.plots:
            self.make_plots()
        self.run.summary.write_text(self.summary(result), encoding="utf-8")

    def make_plots(self) -> list[Path]:
        paths = []
        if self.run.metrics.exists() and read_run_jsonl(self.run.metrics):
            paths += plot_training(self.run.metrics, self.run.plots)
        samples = read_run_jsonl(self.run.samples) if self.run.samples.exists() else []
        if len({row["update"] for row in samples}) > 1:  # the fixed test tasks' proxy and gold at every evaluation
            paths.append(plot_evaluations(samples, self.run.plots / "evaluations.png"))
        renderer = _renderer_of(self.reward)
        if renderer is not None and samples:
            last = max(row["update"] for row in samples)
            rows = [row for row in samples if row["update"] == last]
            before = renderer.render([row["source"] for row in rows])[:, 0]
            after = renderer.render([row["prompt"] for row in rows])[:, 0]
            captions = [(row["source"], row["prompt"], row["instruction"]) for row in rows]
            paths.append(plot_image_grid(captions, before, after, self.run.plots / "image_grid.png"))
        return paths

    def summary(self, result: RunResult) -> str:
        history = read_run_jsonl(self.run.metrics) if self.run.metrics.exists() else []
        samples = read_run_jsonl(self.run.samples) if self.run.samples.exists() else []
        lines = [f"# promptgym run `{self.config.name}`", ""]
        status = "interrupted (resume with `promptgym train --resume DIR`)" if result.interrupted else "finished"
        lines += [
            f"- status: {status} after {self.agent.num_updates} of {self.config.train.num_updates} updates",
            f"- episodes: {self.agent.num_episodes}, reward calls: {self.agent.num_reward_calls}",
            f"- wall time of this session: {result.wall_time_s:.0f} s",
        ]
        if self.sft_result is not None:
            lines.append(
                f"- SFT: held-out loss {self.sft_result.eval_loss_before:.3f} -> {self.sft_result.eval_loss_after:.3f}"
                f" in {self.sft_result.wall_time_s:.0f} s"
            )
        if history:
            lines.append(training_trend(history))
        if samples:
            first_u, last_u = min(r["update"] for r in samples), max(r["update"] for r in samples)
            what = "conversations' turns" if self.chat else "tasks"
            lines += ["", *before_after_table(samples, first_u, last_u, what)]
            if self.chat:
                lines += ["", *chat_turn_table(samples, first_u, last_u)]
            verdict = gold_verdict(samples, first_u, last_u)
            if verdict:
                lines += ["", verdict]
            if verdict and not self.chat:  # promptgym eval scores single-turn tasks, not the fixed conversations
                lines += ["", f"{len(self.fixed_tasks)} fixed tasks are few: `promptgym eval {self.run.root} "
                          f"--samples 2 --against start` pairs the start and the latest policy on all "
                          f"{len(self.eval_tasks)} {self.config.data.eval_split} tasks; `plots/evaluations.png` draws "
                          "every evaluation of the fixed ones."]
            lines += [
                "",
                "## Samples at the last evaluation",
                "",
                "| source | instruction | edited prompt | reward |",
                "|---|---|---|---|",
            ]
            for row in (r for r in samples if r["update"] == last_u):
                lines.append(f"| {row['source']} | {row['instruction']} | {row['prompt']} | {row['reward']:.3f} |")
        lines += ["", "Files: `config.yaml`, `metrics.jsonl`, `samples.jsonl`, `tb/`, `checkpoints/`, `plots/`."]
        if self.config.reward.preset == "tiny":
            lines += [
                "",
                "The tiny reward stack's image scores exercise the pipeline and say nothing about image quality.",
            ]
        return "\n".join(lines) + "\n"


class _StopRequest:
    """Ctrl-C during training: the first one asks to stop after the running update (its checkpoint then holds
    exactly the state an uninterrupted run has there); a second one stops at once, without a checkpoint."""

    def __init__(self, say) -> None:
        self.requested = False
        self.say = say

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.say("Ctrl-C: finishing this update, then saving a checkpoint (Ctrl-C again to stop at once)")

    @contextlib.contextmanager
    def on_sigint(self):
        """Install the handler for the duration (main thread only: elsewhere Ctrl-C stays a KeyboardInterrupt)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _two_evaluations(samples: list[dict[str, Any]], first: int, last: int) -> tuple[list[dict], list[dict]]:
    return [r for r in samples if r["update"] == first], [r for r in samples if r["update"] == last]


def before_after_table(samples: list[dict[str, Any]], first: int, last: int, what: str = "tasks") -> list[str]:
    """Markdown: reward and each component on the fixed test tasks (`what`: what a row is) at two evaluations, with
    the paired change (last minus first, per task) and its 95% percentile-bootstrap CI over the tasks."""
    before, after = _two_evaluations(samples, first, last)
    tasks = {r["task_id"] for r in before} & {r["task_id"] for r in after}
    return [
        f"## Fixed test {what}: update {first} vs update {last} ({len(tasks)} {what}, one sample each)",
        "",
        *format_paired_table(paired_changes(before, after), f"update {first}", f"update {last}"),
    ]


def chat_turn_table(samples: list[dict[str, Any]], first: int, last: int) -> list[str]:
    """Markdown: reward and gold metrics of the fixed test conversations per turn (1-based) and after each
    conversation's last turn, at two evaluations, with the paired change and its 95% bootstrap CI."""
    before, after = _two_evaluations(samples, first, last)
    groups = {f"turn {k + 1}": (lambda r, k=k: r["turn"] == k) for k in range(max(r["turn"] for r in samples) + 1)}
    groups["after the last turn"] = lambda r: r["turn"] == r["num_turns"] - 1
    present = [name for name in ("reward", *GOLD_TERMS, "gold/text_content")
               if name == "reward" or any(name in r["components"] for r in samples)]
    lines = [f"## Fixed test conversations per turn: update {first} vs update {last}", "",
             f"| turn | metric | update {first} | update {last} | change (95% CI over conversations) | conversations |",
             "|---|---|---|---|---|---|"]
    for group, keep in groups.items():
        for c in paired_changes([r for r in before if keep(r)], [r for r in after if keep(r)], present):
            lines.append(f"| {group} | {c.name} | {c.before:.3f} | {c.after:.3f} | {c.change:+.3f} "
                         f"[{c.low:+.3f}, {c.high:+.3f}] | {c.n} |")
    return lines


GOLD_TERMS = ("gold/content", "gold/aesthetic")


def _direction(change: PairedChange) -> str:
    return "rose" if change.low > 0 else "fell" if change.high < 0 else "did not clearly move"


def training_trend(history: list[dict[str, Any]], window: int = 5) -> str:
    """One summary line on the training episodes: the mean over the first and over the last `window` updates (a
    quarter of a shorter run, at least one) of the proxy reward, unnormalised where the reward is normalised (a
    normalised total moves with its running statistics), and of the gold metrics logged beside it. Windows, not
    single updates: one update sees only `n_episodes / samples_per_task` tasks, so its mean is noisy."""
    width = max(1, min(window, len(history) // 4))
    head, tail = history[:width], history[-width:]
    proxy = proxy_key(history)
    names = {proxy: "reward" if proxy == REWARD_KEY else "proxy reward (unnormalised)"}
    names.update({f"env/{term}": term for term in GOLD_TERMS if f"env/{term}" in history[0]})

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(row[key] for row in rows)

    def span(rows: list[dict[str, Any]]) -> str:
        first, last = rows[0]["update"], rows[-1]["update"]
        return f"update {first}" if first == last else f"updates {first}-{last}"

    moves = "; ".join(f"{name} {mean(head, key):.3f} -> {mean(tail, key):.3f}" for key, name in names.items())
    return f"- training episodes, mean of {span(head)} -> {span(tail)}: {moves}"


def gold_verdict(samples: list[dict[str, Any]], first: int, last: int) -> str | None:
    """One sentence on whether the gold metrics followed the proxy reward between two evaluations of the fixed
    test tasks, read off the paired 95% CIs (a change counts only when its CI excludes 0); None without gold."""
    before, after = _two_evaluations(samples, first, last)
    # a normalised reward's total depends on the statistics at each evaluation: compare its unnormalised sum
    proxy = UNNORMALIZED_COMPONENT if any(UNNORMALIZED_COMPONENT in r["components"] for r in before) else "reward"
    changes = [c for c in paired_changes(before, after, [proxy, *GOLD_TERMS]) if c.n >= 2]
    moves = {"reward" if c.name == proxy else c.name: _direction(c) for c in changes}
    gold = {name: move for name, move in moves.items() if name in GOLD_TERMS}
    if not gold or "reward" not in moves:
        return None
    told = "; ".join(f"{name} {move}" for name, move in gold.items())
    if moves["reward"] != "rose":
        reading = "the proxy did not clearly rise, so there is nothing for gold to follow"
    elif any(move == "fell" for move in gold.values()):
        reading = "**over-optimisation**: the proxy rose while gold fell"
    elif all(move == "rose" for move in gold.values()):
        reading = "gold followed the proxy"
    else:
        reading = "the proxy rose; gold did not clearly follow"
    which = "proxy reward (unnormalised)" if proxy == UNNORMALIZED_COMPONENT else "proxy reward"
    return (f"Did gold follow the proxy? The {which} {moves['reward']}; {told} (paired 95% CIs over "
            f"{changes[0].n} tasks): {reading}.")


def _renderer_of(reward: CompositeReward):
    """The renderer of the reward's terms, else of its monitors (the surrogate reward renders only for gold)."""
    for scorer in [scorer for scorer, _ in reward.terms.values()] + list(getattr(reward, "monitors", {}).values()):
        if getattr(scorer, "renderer", None) is not None:
            return scorer.renderer
    return None


def train(config, out: str | Path, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run (or resume) a training run in `out`, holding its lock throughout; returns what happened.

    `out` must not hold a run already unless `resume` (continue it) or `overwrite` (delete it first) is given; that
    is checked, under the lock, before anything is written. Only the main process of a data-parallel run checks,
    locks and writes.
    """
    parallel = build_parallel(config)
    result = _train_in(parallel, config, out, resume, overwrite)
    parallel.close()  # every process, once the main one has written the summary
    return result


def _train_in(parallel: DataParallel, config, out: str | Path, resume: bool, overwrite: bool) -> RunResult:
    """`train` in this process of `parallel`: the main one checks, locks and writes; the others only train."""
    if not parallel.is_main:
        return Trainer(config, out, resume=resume, parallel=parallel).run_updates()
    run = RunDir(out)
    run.check_out(resume=resume, overwrite=overwrite)  # before the lock creates the directory
    for split in (config.data.train_split, config.data.eval_split):  # a bad task file fails before anything is written
        load_tasks(config.data.tasks, split=split)
        if config.env.kind == "chat" or config.sft.chat_turns:
            load_conversations(config.data.conversations, split=split)
    with run.lock():
        run.check_out(resume=resume, overwrite=overwrite)  # again: another writer may have finished meanwhile
        if overwrite:
            run.clear()
        return Trainer(config, out, resume=resume, parallel=parallel).run_updates()

