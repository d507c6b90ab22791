"""Shared helpers for the renderer and scorer tests: a tiny tokenizer, a task type and a pipeline spy."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SENTENCES = [
    "a photo of a cat sleeping on a sofa",
    "a painting of a dog at night",
    "a red car in the snow, highly detailed",
    "make it night time",
    "add a castle on a hill at sunset",
    "oil painting of a forest with a river",
    "turn the dog into a wolf",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on a few sentences, with `<pad>`/`<s>`/`</s>`/`<unk>` like the env's default."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )




class SpyPipeline:
    """Wraps a diffusers pipeline, recording every call's prompts and initial latents; attributes pass through."""

    def __init__(self, pipeline: Any) -> None:
        self.__dict__["_pipeline"] = pipeline
        self.__dict__["calls"] = []

    def __call__(self, **kwargs: Any) -> Any:
        latents = kwargs.get("latents")
        self.calls.append({"prompt": list(kwargs["prompt"]), "latents": None if latents is None else latents.clone()})
        return self._pipeline(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_pipeline"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipeline, name, value)


def rng_state() -> torch.Tensor:
    """The global torch CPU RNG state (to check that constructors leave it alone)."""
    return torch.random.get_rng_state()
