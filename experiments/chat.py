"""`promptgym chat`: refine a prompt over several turns with a trained run's policy, in the terminal.

    promptgym chat [--run RUN] [--prompt TEXT] [--render DIR] [--input FILE] [--seed 0] [--control NAME]

The first line you type (or `--prompt`) is the starting prompt; every later line is an instruction, applied to
the prompt the previous turn produced, with the conversation so far in the policy's context exactly as
`PromptChatEnv` shows it. Commands: `undo` (drop the last turn), `reset` (start again; the next line is a new
prompt), `history` (the turns so far), `help`, `quit` (or end of input). With `--render DIR` every turn's source
and edit are rendered with the run's renderer into `DIR/turn_NN.png` and scored by the run's reward (each term,
and on synth the gold aesthetic; gold content needs a known target scene, which a typed instruction has not).

When the input is not a terminal (a pipe, or `--input FILE`), lines are read from it and echoed, so a scripted
session reads like the interactive one; that is how it is tested.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from promptgym.agents.rollout import RolloutCollector
from promptgym.envs import ChatTurn, Conversation, PromptChatVectorEnv
from promptgym.envs.chat import ChatTemplate, room_needed
from promptgym.envs.controls import with_control
from promptgym.rewards import ContentIntegrityScorer, EditResult
from promptgym.rewards.composite import UNNORMALIZED_COMPONENT

COMMANDS = {"undo": "drop the last turn", "reset": "start again from a new prompt",
            "history": "show the turns so far", "help": "show this list", "quit": "end the session"}
CHAT_CONTEXT_TOKENS = 160  # PromptChatEnv's default room for history + current turn


@dataclass
class ChatSession:
    """A conversation with a policy: `start(prompt)`, then `edit(instruction)` per turn; `undo()` drops one."""

    policy: Any
    tokenizer: Any
    max_new_tokens: int = 48
    typical_mass: float | None = None
    seed: int = 0
    control: str | None = None  # a control prefix put on every instruction (`promptgym.envs.controls`)
    prompts: list[str] = field(default_factory=list)  # the source, then the prompt after each turn
    instructions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def started(self) -> bool:
        return bool(self.prompts)

    def start(self, prompt: str) -> None:
        if not prompt.strip():
            raise ValueError("the starting prompt is empty")
        self.prompts, self.instructions = [prompt.strip()], []

    def conversation(self, instruction: str | None = None) -> Conversation:
        """The conversation so far (plus `instruction` as its next turn)."""
        turns = [ChatTurn(i) for i in self.instructions] + ([ChatTurn(instruction)] if instruction else [])
        return Conversation(self.prompts[0], tuple(turns) or (ChatTurn("(none yet)"),), id="chat")

    def edit(self, instruction: str) -> str:
        """The policy's prompt for the next turn (sampled as in training); the session moves on to it."""
        if not self.started:
            raise ValueError("no prompt yet: type the starting prompt first")
        if not instruction.strip():
            raise ValueError("the instruction is empty")
        instruction = with_control(instruction, self.control) if self.control else instruction.strip()
        conversation = self.conversation(instruction)
        context = max(CHAT_CONTEXT_TOKENS, self._room_needed(conversation))
        env = PromptChatVectorEnv(1, [conversation], self.tokenizer, ContentIntegrityScorer(),
                                  max_new_tokens=self.max_new_tokens, max_context_tokens=context,
                                  autoreset_mode="disabled")
        collector = RolloutCollector(self.policy, env, self.typical_mass, self.generator)
        batch = collector.collect(reference=False, options={"conversation": conversation, "prompts": self.prompts})
        self.prompts.append(batch.prompts[0])
        self.instructions.append(instruction)
        return batch.prompts[0]

    def _room_needed(self, conversation: Conversation) -> int:
        """Context tokens the conversation's longest instruction needs (a very long one needs more than 160)."""
        return room_needed(self.tokenizer, ChatTemplate().edit, [t.instruction for t in conversation.turns],
                           self.max_new_tokens)

    def undo(self) -> bool:
        """Drop the last turn; False when there is none."""
        if not self.instructions:
            return False
        self.prompts.pop()
        self.instructions.pop()
        return True

    def history(self) -> list[str]:
        lines = [f"  start: {self.prompts[0]}"] if self.started else ["  (no prompt yet)"]
        for k, (instruction, prompt) in enumerate(zip(self.instructions, self.prompts[1:]), 1):
            lines.append(f"  {k}. {instruction!r} -> {prompt}")
        return lines


class TurnScorer:
    """`--render DIR`: renders each turn's source and edit with the run's renderer and scores the edit with the
    run's reward."""

    def __init__(self, config: Any, tokenizer: Any, out: Path) -> None:
        from promptgym.experiments.builders import build_run_reward
        from promptgym.experiments.edit import _run_renderer

        self.reward = build_run_reward(config, tokenizer) if config is not None else None
        self.renderer = _run_renderer(config, tokenizer)
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, session: ChatSession) -> tuple[Path, dict[str, float]]:
        from promptgym.experiments.edit import _save_edit_grid

        k = len(session.instructions)
        task = session.conversation().task(k - 1, session.prompts[-2])
        path = _save_edit_grid(self.renderer, task, [session.prompts[-1]], self.out / f"turn_{k:02d}.png")
        scores: dict[str, float] = {}
        if self.reward is not None:
            from promptgym.experiments.bench import display_components

            output = self.reward([EditResult(task, session.prompts[-1])])
            row = output.row(0)
            scores = {name.replace("/delta", " Δ"): row[name] for name in display_components(row)
                      if math.isfinite(row[name])}
            # a fresh reward: with normalisation, the weighted sum before it is what means something
            scores["reward"] = row.get(UNNORMALIZED_COMPONENT, float(output.total[0]))
        return path, scores


def read_lines(source: TextIO, interactive: bool, out: TextIO) -> Iterator[str]:
    """Lines of `source` without their newline; a prompt marker before each when `interactive`, an echo after
    each when not (so a transcript shows what was read)."""
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                return
        else:
            line = source.readline()
            if not line:
                return
            line = line.rstrip("\n")
            print(f"> {line}", file=out)
        yield line


def run_session(session: ChatSession, lines: Iterator[str], out: TextIO, scorer: TurnScorer | None = None) -> int:
    """Drive `session` from `lines`; every problem with a line is reported on `out` and the session goes on."""
    say = lambda text: print(text, file=out)  # noqa: E731
    say("Type the starting prompt, then one instruction per line (commands: " + ", ".join(COMMANDS) + ").")
    for line in lines:
        text = line.strip()
        command = text.lower()
        if not text:
            continue
        if command in ("quit", "exit"):
            break
        if command == "help":
            say("\n".join(f"  {name:8s} {what}" for name, what in COMMANDS.items()))
        elif command == "history":
            say("\n".join(session.history()))
        elif command == "undo":
            say(f"back to: {session.prompts[-1]}" if session.undo() else "nothing to undo")
        elif command == "reset":
            session.prompts, session.instructions = [], []
            say("type a new starting prompt")
        elif not session.started:
            session.start(text)
            say(f"start: {session.prompts[0]}")
        else:
            _edit_turn(session, text, say, scorer)
    say(f"{len(session.instructions)} turn(s); final prompt: {session.prompts[-1] if session.started else '(none)'}")
    return 0


def _edit_turn(session: ChatSession, instruction: str, say, scorer: TurnScorer | None) -> None:
    try:
        prompt = session.edit(instruction)
    except ValueError as error:  # e.g. a context no policy position can hold: the line is rejected, not the session
        say(f"error: {error}")
        return
    say(f"{len(session.instructions)}. {prompt}")
    if scorer is not None:
        path, scores = scorer(session)
        shown = ", ".join(f"{name} {value:+.3f}" for name, value in scores.items())
        say(f"   render: {path}" + (f"; {shown}" if shown else ""))


def chat(run_dir: str | os.PathLike | None, prompt: str | None = None, render: str | os.PathLike | None = None,
         input_file: str | os.PathLike | None = None, seed: int = 0, out: TextIO | None = None,
         stdin: TextIO | None = None, control: str | None = None) -> int:
    """`promptgym chat`: the session on `run_dir`'s latest policy (see the module docstring); `out` and `stdin`
    default to the streams of the moment (not of import time, so a redirected stdout is honoured)."""
    out = sys.stdout if out is None else out
    stdin = sys.stdin if stdin is None else stdin
    from promptgym.experiments.rundir import load_run_policy

    policy, tokenizer, config, _ = load_run_policy(run_dir)
    session = ChatSession(policy, tokenizer, config.env.max_new_tokens, config.ppo.typical_mass, seed, control)
    scorer = TurnScorer(config, tokenizer, Path(render)) if render is not None else None
    if prompt is not None:
        session.start(prompt)
        print(f"start: {session.prompts[0]}", file=out)
    if input_file is not None:
        with open(input_file, encoding="utf-8") as source:
            return run_session(session, read_lines(source, False, out), out, scorer)
    return run_session(session, read_lines(stdin, stdin.isatty(), out), out, scorer)
