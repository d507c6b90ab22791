"""`promptgym chat`: a scripted session on a tiny policy (commands, undo, history, bad lines), and the CLI's errors."""

import io

import pytest

from promptgym.agents import PolicyWithValue
from promptgym.envs import default_tokenizer
from promptgym.experiments.chat import ChatSession, read_lines, run_session
from promptgym.experiments.cli import main


@pytest.fixture(scope="module")
def session_parts():
    tok = default_tokenizer()
    return PolicyWithValue.tiny(tok, seed=0), tok


def scripted(session_parts, text, seed=0):
    policy, tok = session_parts
    session = ChatSession(policy, tok, max_new_tokens=12, seed=seed)
    out = io.StringIO()
    assert run_session(session, read_lines(io.StringIO(text), False, out), out) == 0
    return session, out.getvalue()


def test_a_scripted_session_edits_turn_by_turn_and_undoes(session_parts):
    session, printed = scripted(session_parts, "a red dog in a park\nmake the dog blue\n\nadd a hat\nhistory\nundo\n")
    assert "> a red dog in a park" in printed and "start: a red dog in a park" in printed  # echoed when piped
    assert "1. " in printed and "2. " in printed and "back to: " in printed
    assert len(session.instructions) == 1 and len(session.prompts) == 2
    assert "  1. 'make the dog blue' -> " in printed  # history lists each turn
    assert printed.rstrip().endswith(f"final prompt: {session.prompts[-1]}")


def test_each_turn_edits_the_previous_prompt_with_the_history_in_context(session_parts, monkeypatch):
    seen = []
    from promptgym.agents import rollout

    original = rollout.RolloutCollector.collect

    def spy(self, *args, **kwargs):
        seen.append(list(kwargs["options"]["prompts"]))  # a copy: the session appends to its list
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rollout.RolloutCollector, "collect", spy)
    session, _ = scripted(session_parts, "a red dog\nmake it blue\nadd a hat\n")
    assert seen == [["a red dog"], ["a red dog", session.prompts[1]]]


def test_same_seed_same_session(session_parts):
    script = "a red dog\nmake it blue\nadd a hat\n"
    assert scripted(session_parts, script, seed=3)[0].prompts == scripted(session_parts, script, seed=3)[0].prompts


def test_commands_without_turns_and_reset_are_handled(session_parts):
    session, printed = scripted(session_parts, "undo\nhelp\nhistory\nreset\na cat\nquit\nmake it red\n")
    assert "nothing to undo" in printed and "drop the last turn" in printed and "(no prompt yet)" in printed
    assert session.prompts == ["a cat"] and session.instructions == []  # nothing after quit was read


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["chat", "--run", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["chat", "--run", str(tmp_path), "--input", str(tmp_path / "none.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
