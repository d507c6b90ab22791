"""Negative samples for DiffChat's PPO: prompts with some keywords deleted or replaced.

Everything about them is here, in the order an update uses it: `NegativeSampler.choose` picks which episodes'
tasks get a negative this update, `NegativeSampler.samples` seeds one generator per episode and builds the batch
with `negative_samples` (each task's target through `corrupt_keywords`, scored by the env's reward and
teacher-forced through the policy), so it joins the PPO batch like sampled episodes.

A word matches a keyword when both lemmatise to the same lower-cased lemma ("Dogs" matches "dog");
matching is whole-word only ("dogma" does not match "dog"). Words are runs of letters/digits, possibly
joined by apostrophes ("dog's"); hyphens and other punctuation separate words.
"""

from __future__ import annotations

import math
import numbers
import random
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from promptgym.agents.distributed import SINGLE_PROCESS, DataParallel
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import RolloutBatch, evaluate_actions, reference_logprobs
from promptgym.envs import EditTask, PromptEditVectorEnv
from promptgym.rewards import EditResult, extract_keywords
from promptgym.rewards.keywords import lemma

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_CLOSING = frozenset(",.;:!?)]}")
_OPENING = frozenset("([{")


def corrupt_keywords(
    prompt: str,
    keywords: Iterable[str],
    rate: float,
    rng: random.Random | np.random.Generator,
    vocabulary: Sequence[str],
    *,
    lemmatize: Callable[[str], str] | None = None,
) -> str:
    """Delete or replace (a fair coin per keyword) a `rate` fraction of the keywords present in prompt.

    n = max(1, round-half-up(rate * present)) of the distinct keywords present are corrupted, every
    occurrence of each. A replacement is one word from `vocabulary` whose lemma differs from the keyword's
    (case follows the original word); with no such word the keyword is deleted instead. Other text is kept
    exactly, except the whitespace a deletion leaves doubled, leading, trailing, or before closing punctuation.
    `lemmatize` maps a word to its matching key (default: `promptgym.rewards.keywords.lemma`, the same
    normalisation the content-integrity reward uses, so a corrupted keyword is one the reward misses).
    """
    key_of = lemmatize or lemma
    keys = _check_arguments(prompt, keywords, rate, rng, vocabulary, key_of)
    words = list(_WORD.finditer(prompt))
    word_keys = [key_of(match.group()) for match in words]
    present = list(dict.fromkeys(key for key in word_keys if key in keys))  # in order of first occurrence
    if rate == 0 or not present:
        return prompt
    n_corrupt = max(1, math.floor(rate * len(present) + 0.5))
    edits: dict[str, str | None] = {}  # keyword lemma -> replacement word, or None to delete
    for index in sorted(_sample(rng, len(present), n_corrupt)):
        key = present[index]
        delete = rng.random() < 0.5
        candidates = [word for word in vocabulary if key_of(word) != key]
        edits[key] = None if delete or not candidates else candidates[_randrange(rng, len(candidates))]

    out, pos, just_deleted = "", 0, False
    for match, key in zip(words, word_keys):
        separator = prompt[pos : match.start()]
        out = _join_after_deletion(out, separator, at_end=False) if just_deleted else out + separator
        word = match.group()
        just_deleted = key in edits and edits[key] is None
        if not just_deleted:
            out += _match_case(edits[key], word) if key in edits else word
        pos = match.end()
    tail = prompt[pos:]
    return _join_after_deletion(out, tail, at_end=True) if just_deleted else out + tail


class NegativeSampler:
    """Which episodes of a PPO update get a negative, and their seeded negatives.

    `count = round(fraction * n_episodes)` episodes are drawn among those whose task has a target, by a
    generator seeded with (seed, update); each negative's corruption by its own generator seeded with (seed,
    update, episode). Every choice thus depends only on the global episode index, so data-parallel processes
    agree on the choice and each builds the negatives of its own episodes, as one process would.
    """

    def __init__(self, fraction: float, corruption_rate: float, seed: int, n_episodes: int) -> None:
        self.count = round(fraction * n_episodes)
        self.corruption_rate = corruption_rate
        self.seed = seed
        self._vocabulary: list[str] | None = None

    def choose(self, tasks: Sequence[EditTask], update: int, parallel: DataParallel = SINGLE_PROCESS) -> list[int]:
        """Sorted global indices of the episodes whose task gets a negative in update `update`. `tasks` are this
        process's episodes' tasks; `parallel` gathers which of every process's have a target."""
        if not self.count:
            return []
        has_target = torch.tensor([task.target is not None for task in tasks], device=parallel.device)
        candidates = torch.nonzero(parallel.gather(has_target)).flatten().cpu().numpy()
        if not len(candidates):
            return []
        rng = np.random.default_rng([self.seed, update, 0])
        return sorted(int(i) for i in rng.choice(candidates, size=min(self.count, len(candidates)), replace=False))

    def samples(
        self,
        policy: PolicyWithValue,
        env: PromptEditVectorEnv,
        tasks: Sequence[EditTask],
        episodes: Sequence[int],
        update: int,
        contexts: Sequence[np.ndarray] | None = None,
    ) -> RolloutBatch:
        """`negative_samples` of `tasks`, the tasks of global episodes `episodes` (with their `contexts`, e.g. a
        chat turn's, or the tasks' single-turn contexts); replacement words are the keywords of all of the env's
        tasks."""
        if self._vocabulary is None:
            self._vocabulary = keyword_vocabulary(env.episodes.tasks)
        rngs = [np.random.default_rng([self.seed, update, 1, g]) for g in episodes]
        return negative_samples(policy, env, tasks, self.corruption_rate, rngs, self._vocabulary, contexts)

    def turn_of(self, episode: int, num_turns: int, update: int) -> int:
        """Which turn of conversation `episode` (global index) would get the negative in update `update`: drawn
        uniformly by a generator seeded with (seed, update, episode), so every process agrees."""
        return int(np.random.default_rng([self.seed, update, 2, episode]).integers(num_turns))


def keyword_vocabulary(tasks: Sequence[EditTask]) -> list[str]:
    """Replacement words for keyword corruption: every required keyword of the tasks, sorted."""
    words: set[str] = set()
    for task in tasks:
        words |= extract_keywords(task.source, task.instruction).required
    return sorted(words)


@torch.no_grad()
def negative_samples(
    policy: PolicyWithValue,
    env: PromptEditVectorEnv,
    tasks: Sequence[EditTask],
    rate: float,
    rng: np.random.Generator | Sequence[np.random.Generator],
    vocabulary: Sequence[str],
    contexts: Sequence[np.ndarray] | None = None,
) -> RolloutBatch:
    """DiffChat's negatives: each task's target with some keywords deleted or replaced, teacher-forced.

    The corrupted prompt is scored through the env's reward (one batched call) and its tokens are evaluated
    by the policy (log-probs, values) and the reference, so it joins the PPO batch like a sampled episode.
    A corrupted prompt longer than `max_new_tokens` is cut there (no EOS) and the cut text is what is scored.
    `rng` is one generator for all tasks or one per task (so a task's corruption does not depend on the others).
    `contexts` are the token ids the policy reads before each corrupted prompt (e.g. a chat turn's history and
    edit); None: each task's single-turn context, as the env encodes it.
    """
    episodes, tokenizer = env.episodes, env.tokenizer
    rngs = [rng] * len(tasks) if isinstance(rng, np.random.Generator) else list(rng)
    if len(rngs) != len(tasks):
        raise ValueError(f"got {len(rngs)} generators for {len(tasks)} tasks; pass one, or one per task")
    corrupted = []
    for task, task_rng in zip(tasks, rngs):
        keywords = extract_keywords(task.source, task.instruction).required
        corrupted.append(corrupt_keywords(task.target, keywords, rate, task_rng, vocabulary))
    completions = tokenizer([episodes.template.completion(p) for p in corrupted], add_special_tokens=False)["input_ids"]
    tokens = [(ids + [episodes.eos_id])[: episodes.max_new_tokens] for ids in completions]
    prompts = episodes.decode_batch([np.asarray(ids) for ids in tokens])
    contexts = [episodes.context_ids(t) for t in tasks] if contexts is None else [np.asarray(c, dtype=np.int64) for c in contexts]
    if len(contexts) != len(tasks):
        raise ValueError(f"got {len(contexts)} contexts for {len(tasks)} tasks; expected one per task")
    c, t, n = max(map(len, contexts)), max(map(len, tokens)), len(tasks)
    input_ids = torch.full((n, c + t), episodes.pad_id, dtype=torch.long)
    attention = torch.zeros(n, c + t, dtype=torch.long)
    mask = torch.zeros(n, t, dtype=torch.bool)
    for i, (context, ids) in enumerate(zip(contexts, tokens)):
        input_ids[i, c - len(context) : c] = torch.tensor(context)
        input_ids[i, c : c + len(ids)] = torch.tensor(ids)
        attention[i, c - len(context) : c + len(ids)] = 1
        mask[i, : len(ids)] = True
    output = env.reward([EditResult(task, prompt) for task, prompt in zip(tasks, prompts)])
    env_rewards = torch.zeros(n, t)
    env_rewards[torch.arange(n), mask.sum(1) - 1] = output.total
    batch = RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        context_length=c,
        actions=torch.where(mask, input_ids[:, c:], episodes.pad_id),
        mask=mask,
        logprobs=torch.zeros(n, t),
        sample_logprobs=torch.zeros(n, t),
        values=torch.zeros(n, t),
        ref_logprobs=torch.zeros(n, t),
        env_rewards=env_rewards,
        scores=output.total.clone(),
        negative=torch.ones(n, dtype=torch.bool),
        entropy=torch.zeros(n, t),
        tasks=list(tasks),
        prompts=prompts,
        components=dict(output.components),
    )
    was_training = policy.training
    policy.eval()
    logprobs, values, _, _ = evaluate_actions(policy, batch)
    policy.train(was_training)
    batch.logprobs = logprobs.cpu().masked_fill(~mask, 0.0)
    batch.sample_logprobs = batch.logprobs.clone()
    batch.values = values.cpu().masked_fill(~mask, 0.0)
    batch.ref_logprobs = reference_logprobs(policy, batch)
    return batch


def _join_after_deletion(left: str, right: str, at_end: bool) -> str:
    """Join the text before and after a deleted word, dropping only the whitespace the deletion misplaced."""
    stripped = right.lstrip()
    if stripped != right and (not left or left[-1] in _OPENING):
        right = stripped  # whitespace at the start or after an opening bracket
    elif stripped != right and left[-1].isspace():
        left = left.rstrip()  # doubled whitespace: keep the run that followed the deleted word
    if (stripped and stripped[0] in _CLOSING) or (at_end and not stripped):
        left, right = left.rstrip(), right.lstrip()  # whitespace before punctuation or at the end
    return left + right


def _match_case(replacement: str, original: str) -> str:
    """Give the replacement the original's casing: ALL CAPS, Capitalised, or as written."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _sample(rng: random.Random | np.random.Generator, n: int, k: int) -> list[int]:
    """k distinct indices from range(n)."""
    if isinstance(rng, random.Random):
        return rng.sample(range(n), k)
    return rng.choice(n, size=k, replace=False).tolist()


def _randrange(rng: random.Random | np.random.Generator, n: int) -> int:
    return rng.randrange(n) if isinstance(rng, random.Random) else int(rng.integers(n))


def _check_arguments(prompt, keywords, rate, rng, vocabulary, lemmatize) -> set[str]:
    """Validate corrupt_keywords' arguments; return the keyword lemmas."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if isinstance(keywords, str):
        raise TypeError(f"keywords must be an iterable of words, got the str {keywords!r}; wrap it in a list")
    keys = set()
    for keyword in keywords:
        if not isinstance(keyword, str):
            raise TypeError(f"keywords must hold str, got {type(keyword).__name__} {keyword!r}")
        if not _WORD.fullmatch(keyword.strip()):
            raise ValueError(f"keywords must each be a single word, got {keyword!r}")
        keys.add(lemmatize(keyword.strip()))
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    if not isinstance(rng, (random.Random, np.random.Generator)):
        raise TypeError(f"rng must be a random.Random or numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(vocabulary, str):
        raise TypeError(f"vocabulary must be a sequence of words, got the str {vocabulary!r}; wrap it in a list")
    for word in vocabulary:
        if not isinstance(word, str) or not _WORD.fullmatch(word):
            raise ValueError(f"vocabulary must hold single words, got {word!r}")
    return keys
