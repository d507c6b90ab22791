"""Negative samples for DiffChat's PPO: prompts with some keywords deleted or replaced.

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
