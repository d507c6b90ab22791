"""The one JSON-lines reader (promptgym.rewards.jsonl)."""

import pytest

from promptgym.rewards.jsonl import jsonl_objects, read_jsonl


def test_objects_come_with_their_line_numbers_and_blank_lines_are_skipped():
    text = '{"a": 1}\n\n  \n{"b": "x\u2028y"}\n'  # a raw U+2028 inside a string is not a line break
    assert jsonl_objects(text, "f.jsonl") == [(1, {"a": 1}), (4, {"b": "x\u2028y"})]
    assert jsonl_objects("", "f.jsonl") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}\n{"a": 2', r"f.jsonl: line 2 is not valid JSON \(Expecting .* at column \d+\): '\{\"a\": 2'"),
        ('{"a": 1}\n[1, 2]\n', r"f.jsonl: line 2 is a JSON list; expected rows with a"),
        ("3\n", r"f.jsonl: line 1 is a JSON int; expected rows with a"),
    ],
)
def test_a_damaged_line_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        jsonl_objects(text, "f.jsonl", expected="rows with a")


def test_read_jsonl_names_a_missing_file_with_the_hint(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"update": 1}\n{"update": 2}\n', encoding="utf-8")
    assert read_jsonl(tmp_path / "m.jsonl") == [{"update": 1}, {"update": 2}]
    with pytest.raises(FileNotFoundError, match=r"nope.jsonl does not exist; is this a run\?"):
        read_jsonl(tmp_path / "nope.jsonl", missing_hint="is this a run?")
