"""The embedded default tokenizer: byte-level BPE trained deterministically on the demo corpus.

Any Hugging Face tokenizer works in its place; this one exists so that the offline default stack needs no
download. It is a `transformers.PreTrainedTokenizerFast` with `<pad>`, `<s>` (BOS, prepended by the
post-processor) and `</s>` (EOS), and round-trips through `save_pretrained`/`from_pretrained`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from promptgym.envs.templates import EditTemplate

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# ids 0, 1, 2. EOS is deliberately not id 2: transformers' CLIP text model treats eos_token_id == 2 as a
# legacy config and pools at the highest token id instead of at EOS, which would break tiny CLIP scorers.
SPECIAL_TOKENS = (PAD, EOS, BOS)


def train_tokenizer(
    corpus: Iterable[str], vocab_size: int = 1024, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` (deterministic for a given corpus and order)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="left",
        model_max_length=model_max_length,
    )


def demo_corpus(template: EditTemplate | None = None) -> list[str]:
    """Every context and completion of the bundled demo tasks (train and test), in file order."""
    from promptgym.envs.tasks import load_tasks

    template = template or EditTemplate()
    texts: list[str] = []
    for split in ("train", "test"):
        for task in load_tasks("demo", split=split):
            texts.append(template.context(task))
            if task.target is not None:
                texts.append(template.completion(task.target))
    return texts


@functools.lru_cache(maxsize=1)
def _default_tokenizer_cached() -> PreTrainedTokenizerFast:
    return train_tokenizer(demo_corpus())


def default_tokenizer() -> PreTrainedTokenizerFast:
    """The offline default tokenizer (trained once per process, then copied so callers may mutate it)."""
    import copy

    return copy.deepcopy(_default_tokenizer_cached())
