"""Edit-task loading (`load_tasks`) and the bundled demo set (`promptgym.envs.demo_data`)."""

from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import simplemma

from promptgym.envs import demo_data
from promptgym.envs.demo_data import (
    ACCESSORIES,
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    INSTRUCTION_WORDS,
    KINDS,
    MODIFIERS,
    STYLES,
    SUBJECTS,
    TIMES,
    VOCABULARY,
    WEATHERS,
    generate_demo,
)
from promptgym.envs.tasks import EditTask, load_tasks
from promptgym.rewards import scene as world

DATA_DIR = Path(demo_data.__file__).parent / "data"
PROMPT_GRAMMAR = {"a", "an", "with", "in", "on", "at", "weather"}  # the non-vocabulary words of a demo prompt


@pytest.fixture(scope="module")
def demo() -> dict[str, list[dict]]:
    """The bundled demo rows (fast); the slow tests below check that they equal a fresh `generate_demo()`."""
    return {split: [json.loads(line) for line in (DATA_DIR / f"demo_{split}.jsonl").read_text(encoding="utf-8").split("\n")
                    if line.strip()] for split in ("train", "test")}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def strip_modifiers(target: str) -> tuple[str, list[str]]:
    """Split a demo target into the edited prompt and its trailing modifiers."""
    parts = target.split(", ")
    n = 0
    while parts[-1 - n] in MODIFIERS:
        n += 1
    return ", ".join(parts[: len(parts) - n]), parts[len(parts) - n :]


def parse(prompt: str) -> world.Scene:
    """The world scene of a demo prompt; every word must be placed."""
    parsed = world.parse_scene(prompt)
    assert parsed.unparsed == (), (prompt, parsed.unparsed)
    return parsed.scene


# ---------------------------------------------------------------- demo set


def test_demo_split_sizes_and_ids():
    train, test = load_tasks("demo"), load_tasks("demo", split="test")
    assert len(train) >= 2400 and len(test) >= 240
    assert [t.id for t in train] == [f"demo-train-{i:05d}" for i in range(len(train))]
    assert [t.id for t in test] == [f"demo-test-{i:05d}" for i in range(len(test))]
    assert all(isinstance(t, EditTask) and t.target for t in train + test)


def test_demo_loader_matches_generator(demo):
    for split in ("train", "test"):
        tasks = load_tasks("demo", split)
        expected = [EditTask(r["source"], r["instruction"], r["target"], r["id"]) for r in demo[split]]
        assert tasks == expected


def test_no_test_source_in_train(demo):
    train_sources = {r["source"] for r in demo["train"]}
    test_sources = {r["source"] for r in demo["test"]}
    assert test_sources and not (test_sources & train_sources)


def test_every_kind_well_represented_in_both_splits(demo):
    assert len(KINDS) == len(set(KINDS)) == 9 and "beautify" in KINDS
    for split, rows in demo.items():
        counts = collections.Counter(r["kind"] for r in rows)
        assert set(counts) == set(KINDS), split
        assert min(counts.values()) >= len(rows) / len(KINDS) / 2, (split, counts)
        for kind in KINDS:  # several phrasings per kind
            phrasings = {" ".join("X" if w in VOCABULARY else w for w in words(r["instruction"]))
                         for r in rows if r["kind"] == kind}
            assert len(phrasings) >= 3, (split, kind, phrasings)


def test_every_source_takes_three_kinds_never_add_and_remove(demo):
    for rows in demo.values():
        kinds_of = collections.defaultdict(list)
        for r in rows:
            kinds_of[r["source"]].append(r["kind"])
        for source, kinds in kinds_of.items():
            assert len(kinds) == len(set(kinds)) == 3, (source, kinds)
            assert not {"add", "remove"} <= set(kinds), (source, kinds)


@pytest.mark.slow
def test_generate_demo_is_deterministic_and_seeded():
    first = generate_demo()
    assert generate_demo() == first
    assert generate_demo(seed=1) != first


@pytest.mark.slow
def test_bundled_files_equal_a_fresh_generation(demo):
    assert generate_demo() == demo
    assert demo_data.main(["--check"]) == 0


@pytest.mark.slow
def test_check_detects_stale_files_and_out_writes(tmp_path, capsys):
    assert demo_data.main(["--out", str(tmp_path)]) == 0
    assert demo_data.main(["--check", "--out", str(tmp_path)]) == 0
    path = tmp_path / "demo_test.jsonl"
    path.write_text(path.read_text(encoding="utf-8").replace("a", "b", 1), encoding="utf-8")
    assert demo_data.main(["--check", "--out", str(tmp_path)]) == 1
    assert str(path) in capsys.readouterr().err
    assert demo_data.main(["--check", "--out", str(tmp_path / "missing")]) == 1


@pytest.mark.slow
def test_module_check_is_stable_under_another_hash_seed():
    """`python -m ... --check` in a fresh interpreter with a different str hash seed (no set-order luck)."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-m", "promptgym.envs.demo_data", "--check"], env=env, check=False,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_rows_are_well_formed(demo):
    used_instruction_words = set()
    for rows in demo.values():
        for r in rows:
            assert list(r) == ["id", "source", "instruction", "target", "kind"]
            assert r["target"] != r["source"]
            edited, modifiers = strip_modifiers(r["target"])
            assert 1 <= len(modifiers) <= 2 and len(set(modifiers)) == len(modifiers), r
            assert (edited == r["source"]) == (r["kind"] == "beautify"), r
            instruction_words = words(r["instruction"])
            assert all(w in INSTRUCTION_WORDS or w in VOCABULARY for w in instruction_words), r
            used_instruction_words.update(w for w in instruction_words if w not in VOCABULARY)
            assert set(words(r["source"] + " " + edited)) <= set(VOCABULARY) | PROMPT_GRAMMAR, r
    assert used_instruction_words == set(INSTRUCTION_WORDS)  # the stop list is exact: no unused word


def test_sources_and_targets_are_world_scenes(demo):
    """Every prompt parses into the world scene it was written from: `describe(parse(p)) == p`, nothing unparsed."""
    sources = {}
    for rows in demo.values():
        for r in rows:
            source, target = parse(r["source"]), parse(r["target"])
            assert world.describe(source) == r["source"] and world.describe(target) == r["target"], r
            assert source.modifiers == () and 1 <= len(target.modifiers) <= 2, r
            assert source.subject is not None and source.background is not None, r
            sources[r["source"]] = source
    scenes = list(sources.values())
    assert len(set(scenes)) == len(scenes)  # distinct prompts are distinct scenes
    assert 0.7 <= sum(s.colour is not None for s in scenes) / len(scenes) <= 0.9
    for attribute in ("subject", "count", "colour", "accessory", "background", "weather", "style"):
        seen = {getattr(s, attribute) for s in scenes}
        assert seen == set(world.attribute_values()[attribute]) - ({None} if attribute in ("subject", "background")
                                                                  else set()), attribute


CHANGED = {  # kind -> the content attribute it edits (beautify edits none)
    "colour": "colour", "add": "accessory", "count": "count", "background": "background", "remove": "accessory",
    "style": "style", "time": "weather", "replace": "subject", "beautify": None,
}


def test_target_scene_differs_from_source_exactly_as_the_kind_says(demo):
    assert set(CHANGED) == set(KINDS)
    for rows in demo.values():
        for r in rows:
            source, target = parse(r["source"]).content(), parse(r["target"]).content()
            changed = [name for name in source if source[name] != target[name]]
            attribute = CHANGED[r["kind"]]
            assert changed == ([attribute] if attribute else []), r
            if r["kind"] == "add":
                assert source["accessory"] is None and target["accessory"] is not None, r
            elif r["kind"] == "remove":
                assert source["accessory"] is not None and target["accessory"] is None, r
            elif r["kind"] == "count":
                assert target["count"] in (2, 3), r  # never to one
            elif attribute:
                assert target[attribute] is not None, r


@pytest.mark.slow
def test_beautify_targets_add_the_best_modifiers_by_gold_aesthetic(demo):
    """A beautify target keeps the source's content and adds the 1-2 modifiers of highest gold aesthetic: never worse
    than the source, better for most; on the test split, no other subset of one or two modifiers scores higher."""
    from promptgym.rewards.gold import gold_aesthetic
    from promptgym.rewards.scene_render import SceneRenderer

    renderer = SceneRenderer(size=32, images_per_prompt=2, seed=0)
    rows = [r for split in ("train", "test") for r in demo[split] if r["kind"] == "beautify"]
    assert len(rows) >= 200
    sources = gold_aesthetic(renderer.render([r["source"] for r in rows]))
    targets = gold_aesthetic(renderer.render([r["target"] for r in rows]))
    assert bool((targets >= sources).all()), [r["id"] for r, s, t in zip(rows, sources, targets) if t < s][:5]
    assert (targets > sources).float().mean() >= 0.9
    assert (targets - sources).mean() > 0.1
    subsets = [c for size in (1, 2) for c in itertools.combinations(MODIFIERS, size)]
    assert len(subsets) == 15
    test_rows = [r for r in demo["test"] if r["kind"] == "beautify"]
    prompts = [world.describe(dataclasses.replace(parse(r["source"]), modifiers=m)) for r in test_rows for m in subsets]
    best = gold_aesthetic(renderer.render(prompts)).reshape(len(test_rows), len(subsets)).max(1).values
    chosen = gold_aesthetic(renderer.render([r["target"] for r in test_rows]))
    assert chosen.tolist() == pytest.approx(best.tolist(), abs=1e-6)
    chosen_subsets = collections.Counter(parse(r["target"]).modifiers for r in rows)
    assert len(chosen_subsets) >= 3, chosen_subsets  # depends on the scene, not one fixed answer


def test_beautify_modifiers_rejects_a_scene_with_modifiers():
    scene = world.Scene("dog", background="park", modifiers=("soft lighting",))
    with pytest.raises(ValueError, match="without modifiers"):
        demo_data.beautify_modifiers(scene)


def test_articles_and_number_agree(demo):
    singular = {s for s, _ in SUBJECTS} | {s for s, _ in ACCESSORIES}
    plural_only = ({p for _, p in SUBJECTS} | {p for _, p in ACCESSORIES}) - singular
    for rows in demo.values():
        for r in rows:
            for text in (r["source"], r["target"], r["instruction"].lower()):
                for art, word, after in re.findall(r"\b(a|an) ([a-z]+) ?([a-z]*)", text):
                    assert art == ("an" if word[0] in "aeiou" else "a"), text
                    assert (after if word in COLOURS else word) not in plural_only, text  # never "a red dogs"
            for text in (r["source"], r["target"]):
                first = text.split()
                assert first[0] in ("a", "an", *COUNTS[1:]), text
                head = first[2] if first[1] in COLOURS else first[1]
                subject_forms = {pair[0] if first[0] in ("a", "an") else pair[1] for pair in SUBJECTS}
                assert head in subject_forms, text


def test_edits_change_only_their_attribute(demo):
    """Old value gone, new value present: compare the word multisets of source and edited target."""
    subject_words = {w for pair in SUBJECTS for w in pair}
    accessory_words = {w for pair in ACCESSORIES for w in pair}
    style_words = {w for s in STYLES for w in s.split()}
    time_words = {t[0] for t in WEATHERS} | {"at", "in", "weather"}
    articles = {"a", "an"}
    allowed = {  # words a kind may add or remove
        "colour": set(COLOURS) | articles,
        "count": set(COUNTS) | articles | subject_words | accessory_words,
        "background": {b[1] for b in BACKGROUNDS} | {"in", "on"} | articles,
        "add": accessory_words | articles | {"with"},
        "remove": accessory_words | articles | {"with"},
        "style": style_words,
        "time": time_words,
        "replace": subject_words | articles,
        "beautify": set(),
    }
    new_value_words = {"colour": set(COLOURS), "count": set(COUNTS), "background": {b[1] for b in BACKGROUNDS},
                       "add": accessory_words, "style": style_words, "time": {t[0] for t in WEATHERS},
                       "replace": subject_words}
    for rows in demo.values():
        for r in rows:
            source = collections.Counter(words(r["source"]))
            edited = collections.Counter(words(strip_modifiers(r["target"])[0]))
            added, removed = edited - source, source - edited
            kind = r["kind"]
            assert set(added) | set(removed) <= allowed[kind], r
            if kind == "remove":
                assert not added and set(removed) & accessory_words & set(words(r["instruction"])), r
            elif kind == "beautify":  # the instruction names no content
                assert not added and not removed and not set(words(r["instruction"])) & set(VOCABULARY), r
            else:  # the new value is named by the instruction and appears in the target
                new = set(added) & new_value_words[kind] & set(words(r["instruction"]))
                assert new, r
            if kind == "replace":
                assert set(removed) & subject_words, r  # the old subject is gone


def test_vocabulary_is_the_worlds_and_unambiguous():
    # one copy of the word lists: demo_data re-exports the world's
    for name in ("SUBJECTS", "COUNTS", "COLOURS", "ACCESSORIES", "BACKGROUNDS", "WEATHERS", "STYLES", "MODIFIERS"):
        assert getattr(demo_data, name) is getattr(world, name), name
    assert TIMES is WEATHERS
    assert COUNTS == ("one", "two", "three") and len(WEATHERS) == 5
    assert set(VOCABULARY) == {w for values in world.attribute_values().values() for v in values
                               if isinstance(v, str) for w in v.split()} | set(COUNTS) \
        | {p for _, p in SUBJECTS} | {p for _, p in ACCESSORIES}
    lists = {"subjects": {w for pair in SUBJECTS for w in pair}, "colours": set(COLOURS), "counts": set(COUNTS),
             "backgrounds": {b[1] for b in BACKGROUNDS}, "styles": {w for s in STYLES for w in s.split()},
             "times": {t[0] for t in WEATHERS}, "accessories": {w for pair in ACCESSORIES for w in pair},
             "modifiers": {w for m in MODIFIERS for w in m.split()}}
    names = sorted(lists)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not lists[a] & lists[b], (a, b, lists[a] & lists[b])
    assert not set(INSTRUCTION_WORDS) & set(VOCABULARY)
    assert list(INSTRUCTION_WORDS) == sorted(set(INSTRUCTION_WORDS)) and list(VOCABULARY) == sorted(set(VOCABULARY))
    for singular, plural in (*SUBJECTS, *ACCESSORIES):
        assert simplemma.lemmatize(plural, lang="en") == singular, plural
        assert simplemma.lemmatize(singular, lang="en") == singular, singular


def test_edit_task_is_frozen_with_documented_fields():
    task = EditTask("a dog", "make it red")
    assert (task.target, task.id) == (None, "")
    assert [f.name for f in dataclasses.fields(EditTask)] == ["source", "instruction", "target", "id"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.source = "a cat"  # type: ignore[misc]


def test_demo_bad_split_lists_allowed():
    with pytest.raises(ValueError, match=r"split='validation'.*\['train', 'test'\]"):
        load_tasks("demo", split="validation")


# ---------------------------------------------------------------- .jsonl / .csv files


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "edits.jsonl"
    rows = [
        {"source": "  two red dogs, watercolor ", "instruction": "make them blue\t", "target": " two blue dogs "},
        {"source": "a café\u2028at night", "instruction": "make it snowy", "id": "custom-7", "extra": 1},
        {"source": "a cat", "instruction": "add a hat", "target": "   "},
        {"source": "a cat", "instruction": "add a hat", "target": None, "id": 42},
    ]
    path.write_text(json.dumps(rows[0]) + "\r\n\n" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[1:]),
                    encoding="utf-8")
    expected = [
        EditTask("two red dogs, watercolor", "make them blue", "two blue dogs", "edits-0"),
        EditTask("a café\u2028at night", "make it snowy", None, "custom-7"),
        EditTask("a cat", "add a hat", None, "edits-2"),
        EditTask("a cat", "add a hat", None, "42"),
    ]
    assert load_tasks(path) == expected
    assert load_tasks(str(path), split="test") == expected  # split is ignored for files


def test_csv_round_trip(tmp_path):
    path = tmp_path / "my tasks.CSV"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "source", "instruction", "target"])
        writer.writerow(["", 'a "quoted", comma dog', " make it\nnight ", ""])
        writer.writerow(["x1", "a fox", "make it red", "a red fox, 8k"])
    assert load_tasks(path) == [
        EditTask('a "quoted", comma dog', "make it\nnight", None, "my tasks-0"),
        EditTask("a fox", "make it red", "a red fox, 8k", "x1"),
    ]


def test_csv_without_target_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("source,instruction\na dog,make it red\n", encoding="utf-8")
    assert load_tasks(path) == [EditTask("a dog", "make it red", None, "t-0")]


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_tasks(path)


@pytest.mark.parametrize("spec", ["tasks.json", "tasks.txt", "demo2", "hf"])
def test_unknown_spec_says_what_is_accepted(spec):
    with pytest.raises(ValueError) as err:
        load_tasks(spec)
    message = str(err.value)
    assert repr(spec) in message
    assert all(s in message for s in ("'demo'", ".jsonl", ".csv", "hf:"))
    if "." in spec:
        assert f"extension {Path(spec).suffix!r}" in message


def test_spec_of_wrong_type():
    with pytest.raises(TypeError, match="spec=123"):
        load_tasks(123)  # type: ignore[arg-type]


def test_jsonl_missing_column_lists_found_and_expected(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"source": "a", "instruction": "b"}\n{"source": "a dog", "target": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_tasks(path)
    message = str(err.value)
    assert str(path) in message and "line 2" in message
    assert "missing column(s) ['instruction']" in message
    assert "found columns ['source', 'target']" in message and "['source', 'instruction']" in message


def test_csv_missing_column_lists_found_and_expected(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("prompt,instruction\na dog,make it red\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_tasks(path)
    message = str(err.value)
    assert str(path) in message and "missing column(s) ['source']" in message
    assert "found columns ['prompt', 'instruction']" in message and "['source', 'instruction']" in message


def test_jsonl_empty_source_names_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"source": "a", "instruction": "b"}\n\n{"source": "  ", "instruction": "b"}\n',
                    encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 3 has an empty 'source'"):
        load_tasks(path)


def test_csv_blank_instruction_names_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("source,instruction\na dog,make it red\na cat,   \n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 3 has an empty 'instruction'"):
        load_tasks(path)


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"source": "a", "instruction": "b"}\n{"source": "a",\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 2 is not valid JSON"):
        load_tasks(path)
    path.write_text('["a", "b"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 is a JSON list; expected an object"):
        load_tasks(path)


def test_non_string_field_names_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"source": 5, "instruction": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1 column 'source' is 5 \(int\); expected a string"):
        load_tasks(path)


def test_ragged_csv_row_names_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("source,instruction\na dog,red,extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has 3 fields; the header has 2"):
        load_tasks(path)
    path.write_text("source,instruction\na dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has fewer fields"):
        load_tasks(path)


@pytest.mark.parametrize("name,text", [("t.jsonl", "\n"), ("t.csv", ""), ("t.csv", "source,instruction\n")])
def test_empty_file_is_an_error(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_tasks(path)


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' Arrow cache for local test data inside tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_hf_local_dir_input_edit_output(tmp_path, hf_cache):
    root = tmp_path / "ip2p-like"
    root.mkdir()
    rows = [{"input": "a dog ", "edit": "make it red", "output": "a red dog"},
            {"input": "a cat", "edit": " add a hat", "output": ""}]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert load_tasks(f"hf:{root}") == [EditTask("a dog", "make it red", "a red dog", "ip2p-like-train-0"),
                                        EditTask("a cat", "add a hat", None, "ip2p-like-train-1")]


def test_hf_local_parquet_instructpix2pix_columns(tmp_path, hf_cache):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "pix"
    root.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        table = pa.table({"original_prompt": [f"{split} dog {i}" for i in range(n)],
                          "edit_prompt": [f"make it red {i}" for i in range(n)],
                          "edited_prompt": [f"red {split} dog {i}" for i in range(n)],
                          "original_image": [b"\x89PNG" for _ in range(n)]})
        pq.write_table(table, root / f"{split}.parquet")
    test = load_tasks(f"hf:{root}", split="test")
    assert test == [EditTask(f"test dog {i}", f"make it red {i}", f"red test dog {i}", f"pix-test-{i}")
                    for i in range(2)]
    assert len(load_tasks(f"hf:{root}", split="train")) == 3


def test_hf_local_source_instruction_columns_and_errors(tmp_path, hf_cache):
    root = tmp_path / "plain"
    root.mkdir()
    rows = [{"id": "r0", "source": "a dog", "instruction": "make it red", "target": "a red dog"},
            {"id": "r1", "source": "a cat", "instruction": " ", "target": "x"}]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"row index 1 has an empty 'instruction'"):
        load_tasks(f"hf:{root}")
    with pytest.raises(ValueError, match=r"split='test' is not in data set"):
        load_tasks(f"hf:{root}", split="test")


def test_hf_save_to_disk_dir(tmp_path, hf_cache):
    import datasets

    rows = {"source": ["a dog", "a fox"], "instruction": ["make it red", "make it night"], "target": ["x", "y"]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    assert [t.source for t in load_tasks(f"hf:{tmp_path / 'saved'}", split="test")] == ["a dog", "a fox"]
    with pytest.raises(ValueError, match=r"split='train' is not in data set"):
        load_tasks(f"hf:{tmp_path / 'saved'}")


def test_hf_unknown_columns_listed(tmp_path, hf_cache):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "train.jsonl").write_text('{"prompt": "a", "edit": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_tasks(f"hf:{root}")
    message = str(err.value)
    assert "columns ['prompt', 'edit']" in message
    assert all(c in message for c in ("original_prompt", "edit_prompt", "input", "output", "source", "instruction"))


def test_hf_unavailable_offline_fails_fast_with_instructions():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    name = "promptgym-tests/no-such-dataset-xyz"
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        load_tasks(f"hf:{name}")
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "not available offline" in message and name in message
    assert f"huggingface-cli download --repo-type dataset {name}" in message
    assert "save_to_disk" in message


def test_hf_empty_name():
    with pytest.raises(ValueError, match="names no data set"):
        load_tasks("hf:")


def test_split_by_source_keeps_sources_whole_and_is_stable():
    from promptgym.envs import split_by_source

    tasks = load_tasks("demo", "train")
    first, rest = split_by_source(tasks, 0.5)
    assert len(first) + len(rest) == len(tasks) and 0.4 < len(first) / len(tasks) < 0.6
    assert not {t.source for t in first} & {t.source for t in rest}  # every source on one side
    again, _ = split_by_source(list(reversed(tasks)), 0.5)
    assert {t.id for t in again} == {t.id for t in first}  # the order of the file does not matter
    smaller, _ = split_by_source(tasks, 0.25)
    assert {t.id for t in smaller} < {t.id for t in first}  # a smaller share is a subset
    assert split_by_source(tasks, 1.0) == (tasks, [])
    for bad in (0, 1.5, True, "half"):
        with pytest.raises(ValueError, match="share="):
            split_by_source(tasks, bad)
