"""SFT warm start: fine-tune the policy's LM on (context -> target edit) pairs before PPO.

Each task with a reference `target` becomes one sequence: the tokenised `template.context(task)` (with the
tokenizer's special tokens, exactly as the env encodes it), then `template.completion(task.target)` tokenised
without special tokens, then EOS. Context and completion are tokenised separately, as the env does (the
policy writes its first token right after the encoded context), so the tokens trained on are the tokens the
policy must produce in an episode. The loss is the mean next-token cross-entropy over the completion tokens
and the EOS only; context tokens and padding are masked out (label -100).

The trainer is a short plain PyTorch loop (AdamW, linear warmup then linear decay, gradient clipping), chosen
over TRL's `SFTTrainer` after measuring both on the same data, model and hyperparameters
(`python -m promptgym.experiments.bench_sft`): on CPU, TRL's defaults (bf16 autocast, gradient checkpointing)
cost ~9x the loop's time per step and write checkpoints into `./trainer_output`; configured for CPU it still
costs ~1.5x per step, reseeds the global RNGs, and leaves a patched `forward` on the model whose closure calls
the original model, so a later deep copy (the frozen KL reference) silently runs the live policy. The loop
trains `policy.model` in place (the object the PPO agent uses) and never touches the value head or a critic.

Tasks without a target are an error naming how many: filter them explicitly first
(`[t for t in tasks if t.target is not None]`), so nothing is silently dropped.

A training example may also be a `ContextExample`: token ids the policy reads (already encoded, e.g. a chat turn's
history and edit exactly as `PromptChatEnv` encodes them) and the target it should write; `chat_examples` makes
one per turn of each conversation along its reference path, so one SFT mixes single-turn tasks and chat turns.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from promptgym.agents.validation import config_dataclass
from promptgym.envs.templates import EditTemplate
from promptgym.rewards.base import TaskLike

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from promptgym.envs.chat import ChatEpisodes, Conversation

IGNORE_INDEX = -100  # label of positions left out of the loss (context tokens, padding), as in transformers


@config_dataclass
class SFTConfig:
    """Hyperparameters of the SFT warm start (conventional names, as in transformers' TrainingArguments).

    The defaults take the tiny offline policy (`PolicyWithValue.tiny`, seed 0) on the demo train split from a
    held-out completion loss of 6.79 nats/token (about ln 865, uniform) to 0.79 on the demo test split in 450 steps:
    about 13 CPU-seconds of training with one torch thread (`experiments/bench_sft.py`). Each field's doc and
    range is on the field.
    """

    learning_rate: Annotated[float, Field(gt=0, description=(
        "AdamW peak learning rate, reached after warmup and decayed linearly to 0"
    ))] = 1e-2
    num_epochs: Annotated[float, Field(gt=0, description=(
        "passes over the training tasks (fractions allowed); ignored when max_steps is set"
    ))] = 3.0
    max_steps: Annotated[int | None, Field(ge=1, description="number of optimiser steps (overrides num_epochs)")] = None
    batch_size: Annotated[int, Field(ge=1, description=(
        "sequences per optimiser step (the last batch of an epoch may be smaller; none are dropped)"
    ))] = 16
    weight_decay: Annotated[float, Field(ge=0, description=(
        "AdamW decoupled weight decay, applied to matrices only (not biases or LayerNorm weights)"
    ))] = 0.0
    warmup_ratio: Annotated[float, Field(ge=0, lt=1, description=(
        "fraction of the total steps spent raising the learning rate linearly to its peak"
    ))] = 0.05
    max_grad_norm: Annotated[float | None, Field(gt=0, description=(
        "clip the global gradient norm to this value; null disables clipping"
    ))] = 1.0
    seed: Annotated[int, Field(description=(
        "seeds the data order and any dropout: the same seed (and torch thread count) gives the same losses"
    ))] = 0
    eval_every: Annotated[int | None, Field(ge=1, description=(
        "compute the held-out loss every this many steps; null: only before and after training"
    ))] = None
    eval_batch_size: Annotated[int, Field(ge=1, description=(
        "sequences per forward pass when computing held-out loss"
    ))] = 128
    max_length: Annotated[int | None, Field(ge=2, description=(
        "longest allowed sequence (context + completion + EOS) in tokens; a longer task is an error, never "
        "truncated; null: no limit"
    ))] = None

    def total_steps(self, num_tasks: int) -> int:
        """Optimiser steps for `num_tasks` training sequences: `max_steps`, else ceil(epochs * batches per epoch)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.num_epochs * math.ceil(num_tasks / self.batch_size)))


@dataclass
class SFTResult:
    """What `sft_warm_start` did.

    eval_loss_before/after: mean held-out loss per completion token (nats) before and after training (None
        without eval tasks). train_losses[step]: the batch's mean completion-token loss at each step.
    eval_curve: (step, held-out loss) pairs, step 0 and the last step included.
    wall_time_s: seconds for the whole call (evaluation included); train_time_s: the optimiser steps only.
    tokens_per_s: real (non-padding) tokens, context included, through forward+backward per training second.
    """

    eval_loss_before: float | None
    eval_loss_after: float | None
    train_losses: list[float]
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    num_steps: int = 0
    num_train_tokens: int = 0
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    tokens_per_s: float = 0.0


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ContextExample:
    """An SFT example given by the context token ids the policy reads (special tokens included, as an env shows
    them) and the `target` prompt it should write after them."""

    context_ids: tuple[int, ...]
    target: str | None
    id: str = ""


def chat_examples(chats: ChatEpisodes, conversations: Iterable[Conversation]) -> list[ContextExample]:
    """One example per turn with a target of each conversation, along its reference path (the source, then each
    turn's target): the turn's context (history + current edit) exactly as the chat env encodes it when the
    earlier turns wrote their targets, and the turn's target. `chats` is a chat env's `ChatEpisodes` (its
    template, tokenizer and `max_context_tokens`)."""
    examples = []
    for conversation in conversations:
        prompts = [conversation.source]
        for task in conversation.reference_tasks():
            if task.target is not None:
                ids, _, _ = chats.context(conversation, prompts)
                examples.append(ContextExample(tuple(int(i) for i in ids), task.target, task.id))
            prompts.append(task.target or prompts[-1])
    return examples


def encode_example(tokenizer: PreTrainedTokenizerBase, task: TaskLike | ContextExample,
                   template: EditTemplate) -> tuple[list[int], int]:
    """(token ids, number of context tokens) of one task: context (as the env encodes it, or a `ContextExample`'s
    own ids) + completion + EOS."""
    if isinstance(task, ContextExample):
        context_ids = list(task.context_ids)
    else:
        context_ids = list(tokenizer(template.context(task))["input_ids"])
    completion_ids = list(tokenizer(template.completion(task.target), add_special_tokens=False)["input_ids"])
    return context_ids + completion_ids + [int(tokenizer.eos_token_id)], len(context_ids)


def encode_tasks(
    tokenizer: PreTrainedTokenizerBase, tasks: Sequence[TaskLike], template: EditTemplate, max_length: int | None = None, name: str = "tasks"
) -> list[tuple[list[int], int]]:
    """`encode_example` for every task; tasks without a target or longer than `max_length` are errors."""
    _check_tokenizer(tokenizer)
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of tasks with targets, got {_short(tasks)}")
    missing = [task for task in tasks if getattr(task, "target", None) is None]
    if missing:
        ids = [getattr(task, "id", "?") for task in missing[:5]]
        raise ValueError(
            f"{name}: {len(missing)} of {len(tasks)} tasks have no target (first ids {ids}); SFT needs a reference "
            f"edit for every task. Filter them first: [t for t in {name} if t.target is not None]"
        )
    encoded = [encode_example(tokenizer, task, template) for task in tasks]
    if max_length is not None:
        too_long = [(task, len(ids)) for task, (ids, _) in zip(tasks, encoded) if len(ids) > max_length]
        if too_long:
            task, length = too_long[0]
            raise ValueError(
                f"{name}: {len(too_long)} tasks are longer than max_length={max_length} tokens (e.g. id "
                f"{getattr(task, 'id', '?')!r}: {length} tokens of context + completion + EOS); raise max_length "
                "or shorten them (nothing is truncated)"
            )
    return encoded


def collate(examples: Sequence[tuple[list[int], int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids[B, S], attention_mask[B, S] and labels[B, S] (-100 on context and padding).

    Right padding puts every sequence's real tokens at positions 0..n-1, so any architecture (ALiBi or learned
    positions) sees the same positions as unpadded; no position_ids are needed. Labels are not shifted (as in
    transformers): labels[b, s] is the token at s, predicted from positions < s.
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, num_context) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, num_context : len(ids)] = torch.tensor(ids[num_context:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_batch(
    tokenizer: PreTrainedTokenizerBase, tasks: Sequence[TaskLike], template: EditTemplate | None = None
) -> dict[str, torch.Tensor]:
    """The padded training batch for `tasks`: input_ids[B, S], attention_mask[B, S], labels[B, S]."""
    template = template or EditTemplate()
    return collate(encode_tasks(tokenizer, tasks, template), _pad_id(tokenizer))


# ---------------------------------------------------------------------------------------------- loss
def completion_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token NLL over labelled positions, number of labelled positions) for one collated batch."""
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["labels"][:, 1:]  # the token at s+1 is predicted from logits at s
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    return nll, (labels != IGNORE_INDEX).sum()


@torch.no_grad()
def completion_loss(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[TaskLike], template: EditTemplate | None = None,
    batch_size: int = 128,
) -> float:
    """Mean loss (nats) per completion token (completion + EOS) of `tasks` under `model`, in eval mode.

    Every completion token of every task counts once (a token-weighted mean, not a mean of batch means), so
    the value does not depend on `batch_size`. `model` is a causal LM or a `PolicyWithValue`.
    """
    model = _unwrap(model)
    _check_int("batch_size", batch_size, 1)
    encoded = encode_tasks(tokenizer, tasks, template or EditTemplate(), name="tasks")
    return _completion_loss(model, encoded, _pad_id(tokenizer), batch_size)


def _completion_loss(model: nn.Module, encoded: list[tuple[list[int], int]], pad_id: int, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                nll, n = completion_nll(model, collate(encoded[start : start + batch_size], pad_id))
                total += float(nll)
                count += int(n)
    finally:
        model.train(was_training)
    return total / count


# ---------------------------------------------------------------------------------------------- training
def sft_warm_start(
    policy_or_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_tasks: Sequence[TaskLike],
    eval_tasks: Sequence[TaskLike] | None = None,
    template: EditTemplate | None = None,
    config: SFTConfig | None = None,
    progress: bool = True,
) -> SFTResult:
    """Fine-tune the causal LM (a `PolicyWithValue`'s `.model`, updated in place) on the tasks' targets (tasks
    and `ContextExample`s may be mixed in `train_tasks` and `eval_tasks`).

    Loss on completion tokens + EOS only. The held-out loss on `eval_tasks` is measured before and after
    (and every `config.eval_every` steps). Deterministic for a given `config.seed`; the caller's global torch
    RNG state is restored afterwards. Only parameters with `requires_grad` are trained (so a PEFT model trains
    its adapters); a `PolicyWithValue`'s value head and critic are never touched. The KL reference should be
    the SFT model: `PolicyWithValue` freezes it lazily on first use, so if it was frozen before this call,
    call `policy.freeze_reference()` again afterwards.
    """
    start_time = time.perf_counter()
    config = config or SFTConfig()
    if not isinstance(config, SFTConfig):
        raise TypeError(f"config must be a promptgym.agents.sft.SFTConfig, got {type(config).__name__}")
    template = template or EditTemplate()
    model = _unwrap(policy_or_model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("policy_or_model has no parameters with requires_grad=True; nothing to fine-tune")
    pad_id = _pad_id(tokenizer)
    train = encode_tasks(tokenizer, train_tasks, template, config.max_length, name="train_tasks")
    held_out = None if eval_tasks is None else encode_tasks(
        tokenizer, eval_tasks, template, config.max_length, name="eval_tasks")

    def evaluate() -> float | None:
        return None if held_out is None else _completion_loss(model, held_out, pad_id, config.eval_batch_size)

    eval_before = evaluate()
    eval_curve = [] if eval_before is None else [(0, eval_before)]

    total_steps = config.total_steps(len(train))
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(total_steps, config.warmup_ratio))
    generator = torch.Generator().manual_seed(config.seed)
    batches = _batch_indices(len(train), config.batch_size, generator)

    train_losses: list[float] = []
    num_tokens, train_time = 0, 0.0
    was_training = model.training
    bar = _progress_bar(total_steps, progress)
    try:
        cuda_devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda_devices):  # dropout (if any) uses a seeded stream; caller's RNG kept
            torch.manual_seed(config.seed)
            for step in range(1, total_steps + 1):
                model.train()
                step_start = time.perf_counter()
                batch = collate([train[i] for i in next(batches)], pad_id)
                nll, count = completion_nll(model, batch)
                loss = nll / count
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                train_time += time.perf_counter() - step_start
                num_tokens += int(batch["attention_mask"].sum())
                train_losses.append(float(loss.detach()))
                if held_out is not None and config.eval_every and step % config.eval_every == 0 \
                        and step != total_steps:
                    eval_curve.append((step, evaluate()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{train_losses[-1]:.3f}")
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    eval_after = evaluate()
    if eval_after is not None:
        eval_curve.append((total_steps, eval_after))
    return SFTResult(
        eval_loss_before=eval_before,
        eval_loss_after=eval_after,
        train_losses=train_losses,
        eval_curve=eval_curve,
        num_steps=total_steps,
        num_train_tokens=num_tokens,
        wall_time_s=time.perf_counter() - start_time,
        train_time_s=train_time,
        tokens_per_s=num_tokens / train_time if train_time > 0 else 0.0,
    )


def _batch_indices(num_examples: int, batch_size: int, generator: torch.Generator):
    """Endless index batches: a fresh seeded permutation per epoch; the last batch of an epoch may be short."""
    while True:
        order = torch.randperm(num_examples, generator=generator).tolist()
        for start in range(0, num_examples, batch_size):
            yield order[start : start + batch_size]


def _linear_schedule(total_steps: int, warmup_ratio: float):
    """Learning-rate multiplier: linear warmup over ceil(warmup_ratio * total) steps, then linear decay to 0.

    Unlike transformers' schedule, the first warmup step uses lr/(warmup+1) rather than 0 (no wasted step).
    """
    warmup = math.ceil(warmup_ratio * total_steps)

    def multiplier(step: int) -> float:  # step = optimiser steps taken so far
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return multiplier


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on trainable matrices, none on biases and normalisation weights (ndim < 2)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="SFT", unit="step", leave=False)


# ---------------------------------------------------------------------------------------------- checks
def _unwrap(policy_or_model: Any) -> nn.Module:
    """The causal LM: `policy.model` for a `PolicyWithValue` (anything with an nn.Module `.model` and a
    `.value_head`), else the module itself."""
    if isinstance(getattr(policy_or_model, "model", None), nn.Module) and hasattr(policy_or_model, "value_head"):
        return policy_or_model.model
    if not isinstance(policy_or_model, nn.Module):
        raise TypeError(
            f"policy_or_model must be a PolicyWithValue or a transformers causal LM (torch.nn.Module), "
            f"got {type(policy_or_model).__name__}"
        )
    return policy_or_model


def _check_tokenizer(tokenizer: Any) -> None:
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token_id; SFT appends EOS to every target so the "
            "policy learns to stop"
        )


def _pad_id(tokenizer: Any) -> int:
    """Padding id (any id works: padded positions are masked out of attention and loss)."""
    _check_tokenizer(tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(tokenizer.eos_token_id if pad is None else pad)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_int(name: str, value: Any, low: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        allowed = "an int" if low is None else f"an int >= {low}"
        raise ValueError(f"SFTConfig.{name}={value!r} is invalid; expected {allowed}")
