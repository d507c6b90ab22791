"""The embedded default tokenizer: deterministic training, special tokens, save/load round trip."""

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from promptgym.envs import EditTemplate, default_tokenizer, train_tokenizer
from promptgym.envs.tokenizer import demo_corpus


def test_default_tokenizer_special_tokens_and_bos():
    tok = default_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)  # EOS != 2: see tokenizer.py
    ids = tok("a red dog")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a red dog"


def test_training_is_deterministic_and_compact():
    corpus = demo_corpus()
    a, b = train_tokenizer(corpus), train_tokenizer(corpus)
    assert a.get_vocab() == b.get_vocab()
    assert 256 < len(a) <= 1024
    # the demo vocabulary is mostly whole-word tokens: a context is short
    context = EditTemplate().context(type("T", (), {"source": "two red dogs in a park, watercolor", "instruction": "make the dogs blue"})())
    assert len(a(context)["input_ids"]) < 30


def test_round_trips_any_text_byte_level():
    tok = default_tokenizer()
    for text in ["an émoji 🐶 and 中文", "UPPER case, punctuation!?", "tabs\tand  spaces"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_save_and_reload(tmp_path):
    tok = default_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "a black cat with a hat on a beach at sunset"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.eos_token_id == tok.eos_token_id and loaded.pad_token_id == tok.pad_token_id
    assert loaded.padding_side == "left"


def test_default_tokenizer_returns_independent_copies():
    a = default_tokenizer()
    a.add_tokens(["<extra>"])
    assert "<extra>" not in default_tokenizer().get_vocab()
