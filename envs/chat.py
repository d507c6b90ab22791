"""Multi-turn prompt editing (DiffChat's chat with a text-to-image model): `PromptChatEnv`, `PromptChatVectorEnv`.

An episode is a `Conversation`: a starting prompt and T turns. Each turn shows the next instruction; the policy
writes the new prompt token by token; when the turn ends (EOS, or `max_new_tokens` tokens) the reward scores it
as an edit of the turn's source, i.e. the prompt the *policy itself* wrote the turn before (the conversation's
source on turn 0), against that turn's target (on the synth world: the scene known after the turn, so gold
content says whether every edit so far survived). The next turn then starts from that prompt.

Observation: the same layout as `PromptEditEnv`, [context left-padded to `max_context_tokens` | this turn's
tokens right-padded to `max_new_tokens`], where the context of turn k is the history and then exactly the
single-turn context of (prompt so far, instruction k):

    <s> Prompt: {p_0}\\nInstruction: {i_0}\\n  ...  Prompt: {p_{k-1}}\\nInstruction: {i_{k-1}}\\n
        Prompt: {p_k}\\nInstruction: {i_k}\\nEdited prompt:

(`ChatTemplate`; p_0 is the conversation's source, p_j the policy's prompt after turn j-1). The history is
truncated from the left, whole turns at a time (oldest first), until the context fits; turn 0 and any turn whose
history was dropped read exactly what `PromptEditEnv` shows for that (source, instruction), so a single-turn
policy applies as it is. `info["history_turns"]` says how many earlier turns the context kept; in the rare case
that the current turn alone does not fit, its first tokens are cut and `info["context_truncated"]` is True
(the constructor checks that the longest instruction plus `max_new_tokens` tokens of prompt fit).

Rewards: 0 on every step but a turn's last, which gets the composite reward of that turn's edit; `info` on that
step has `prompt`, `reward_components`, `turn`, `task_id` and `num_tokens`. The episode ends after the last
turn: terminated at EOS, truncated when the last turn hit `max_new_tokens` (an earlier turn that hits the limit
just ends; the conversation goes on). The step that ends a turn returns the next turn's first observation.

`PromptChatVectorEnv` steps N conversations and scores every turn that ends on the same step in one reward call;
`PromptChatEnv` is the one-conversation view of it (same code path, same seeding: sub-environment i of a vector
env reset with seed s behaves as `PromptChatEnv` reset with s + i).

Turn-synchronous stepping (`PromptChatVectorEnv(..., sync_turns=True)`, opt-in): a sub-env whose turn ended (and
whose conversation goes on) *waits*: the step that ended the turn returns its next turn's first observation as
usual, then its actions are ignored, its observation stays frozen and its reward is 0 (`env.waiting[i]` is True)
until no sub-env is writing a turn any more; at the end of that step every waiting sub-env is released, and all of
them write the first token of their next turn on the next step. A rollout collector then prefills its KV cache
once per turn for the whole batch instead of once per sub-env and turn. Per sub-env, the rewards, prompts and
infos of each turn are those of unsynchronised stepping given the same tokens for that turn; only the steps on
which they arrive differ. (With `autoreset_mode="next_step"`, a finished conversation is not writing; it resets
on the next step, together with the release.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from transformers import PreTrainedTokenizerBase

from promptgym.envs.prompt_edit import EditEpisodes, default_reward
from promptgym.envs.tasks import EditTask
from promptgym.envs.templates import EditTemplate
from promptgym.envs.vector import TokenVectorEnv, autoreset_mode_of, check_num_envs
from promptgym.rewards import CompositeReward, EditResult, Scorer, as_composite
from promptgym.rewards.jsonl import jsonl_objects
from promptgym.rewards.scene import parse_scene

CHAT_OPTION_KEYS = ("conversation", "conversation_index")  # plus "prompts", read by the env itself
ENCODE_CACHE_SIZE = 4096  # encoded texts kept by `ChatEpisodes` (history blocks recur at every later turn)
DEMO_CHAT_FILES = {split: Path(__file__).parent / "data" / f"demo_chat_{split}.jsonl" for split in ("train", "test")}


@dataclass(frozen=True)
class ChatTurn:
    """One turn of a conversation: the instruction and, optionally, the reference prompt after it."""

    instruction: str
    target: str | None = None
    kind: str = ""


@dataclass(frozen=True)
class Conversation:
    """A starting prompt and the turns applied to it one after the other."""

    source: str
    turns: tuple[ChatTurn, ...]
    id: str = ""

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError(f"conversation {self.id!r} has an empty source")
        if not self.turns:
            raise ValueError(f"conversation {self.id!r} has no turns")
        for k, turn in enumerate(self.turns):
            if not isinstance(turn, ChatTurn) or not turn.instruction.strip():
                raise ValueError(f"conversation {self.id!r}: turn {k} needs a non-empty instruction, got {turn!r}")

    def task(self, turn: int, source: str) -> EditTask:
        """Turn `turn` as an edit task of `source` (the prompt the conversation has reached)."""
        step = self.turns[turn]
        return EditTask(source=source, instruction=step.instruction, target=step.target, id=f"{self.id}/{turn}")

    def reference_tasks(self) -> list[EditTask]:
        """Every turn as an edit of the reference prompt before it (the source, then each turn's target): the
        gold path, e.g. to fine-tune on conversations turn by turn. A turn without a target leaves the reference
        where it was (the next turn's source is the last known reference prompt)."""
        tasks, source = [], self.source
        for k, turn in enumerate(self.turns):
            tasks.append(self.task(k, source))
            source = turn.target or source
        return tasks


def load_conversations(spec: str | os.PathLike = "demo", split: str = "train") -> list[Conversation]:
    """Conversations from "demo" (the bundled `demo_chat_{split}.jsonl`) or a .jsonl file whose rows are
    {"id"?, "source", "turns": [{"instruction", "target"?, "kind"?}, ...]}; a bad row is an error naming file
    and line."""
    if isinstance(spec, str) and spec == "demo":
        if split not in DEMO_CHAT_FILES:
            raise ValueError(f"split={split!r}; the demo conversations have splits {sorted(DEMO_CHAT_FILES)}")
        path = DEMO_CHAT_FILES[split]
    else:
        path = Path(spec)
        if path.suffix.lower() != ".jsonl":
            raise ValueError(f"conversation spec {str(spec)!r}: expected 'demo' or a .jsonl file")
        if not path.is_file():
            raise FileNotFoundError(f"conversation file not found: {str(path)!r}")
    where = str(path)
    rows = jsonl_objects(path.read_text(encoding="utf-8"), where, 'a conversation {"source", "turns": [...]}')
    conversations = [_conversation(row, f"{where}: line {number}", f"{path.stem}-{i}")
                     for i, (number, row) in enumerate(rows)]
    if not conversations:
        raise ValueError(f"{where} holds no conversation")
    return conversations


def _conversation(row: dict[str, Any], where: str, default_id: str) -> Conversation:
    unknown = sorted(set(row) - {"id", "source", "turns"})
    if unknown or not isinstance(row.get("source"), str) or not isinstance(row.get("turns"), list):
        raise ValueError(f"{where}: expected keys 'source' (a string) and 'turns' (a list) and optionally 'id'; "
                         f"got {sorted(row)}")
    turns = []
    for k, turn in enumerate(row["turns"]):
        if not isinstance(turn, dict) or not isinstance(turn.get("instruction"), str) \
                or set(turn) - {"instruction", "target", "kind"}:
            raise ValueError(f"{where}: turn {k} must be {{'instruction': str, 'target'?: str, 'kind'?: str}}, "
                             f"got {turn!r}")
        target = (turn.get("target") or "").strip() or None
        turns.append(ChatTurn(turn["instruction"].strip(), target, str(turn.get("kind", ""))))
    try:
        return Conversation(row["source"].strip(), tuple(turns), str(row.get("id", default_id)))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation so far becomes the policy's context: `history_format` once per earlier turn (its
    prompt and instruction), then `edit`'s single-turn context of the current turn."""

    edit: EditTemplate = EditTemplate()
    history_format: str = "Prompt: {source}\nInstruction: {instruction}\n"

    def __post_init__(self) -> None:
        for name in ("{source}", "{instruction}"):
            if name not in self.history_format:
                raise ValueError(f"history_format={self.history_format!r} must contain {name}")

    def history(self, source: str, instruction: str) -> str:
        return self.history_format.format(source=source, instruction=instruction)


def room_needed(tokenizer: PreTrainedTokenizerBase, template: EditTemplate, instructions: Sequence[str],
                max_new_tokens: int) -> int:
    """Context tokens a turn may need: the longest instruction's single-turn context around a prompt of
    `max_new_tokens` tokens (the prompt being edited is one the policy wrote)."""
    longest = max(len(tokenizer(template.context(EditTask("", i)), verbose=False)["input_ids"]) for i in instructions)
    return longest + max_new_tokens


class ChatEpisodes:
    """What the chat envs share: conversations, the context builder, spaces, action checks and decoding (the
    single-turn `EditEpisodes` of the conversations' reference tasks, which also checks that they fit)."""

    def __init__(self, conversations: Sequence[Conversation] | str | os.PathLike, tokenizer: PreTrainedTokenizerBase,
                 template: ChatTemplate, max_new_tokens: int, max_context_tokens: int) -> None:
        self.conversations = (load_conversations(conversations) if isinstance(conversations, (str, os.PathLike))
                              else list(conversations))
        if not self.conversations:
            raise ValueError("conversations is empty; expected at least one Conversation (or 'demo')")
        for i, conversation in enumerate(self.conversations):
            if not isinstance(conversation, Conversation):
                raise TypeError(f"conversations[{i}]={conversation!r}; expected a Conversation")
        self.template = template
        self.edit = EditEpisodes([t for c in self.conversations for t in c.reference_tasks()],
                                 tokenizer, template.edit, max_new_tokens, max_context_tokens)
        self.tokenizer = tokenizer
        self.prefix = list(tokenizer("")["input_ids"])  # what the tokenizer puts in front of any text (e.g. BOS)
        self._encoded: dict[str, list[int]] = {}
        self._check_room()

    def _check_room(self) -> None:
        """The longest instruction's context plus `max_new_tokens` tokens of prompt must fit."""
        instructions = [turn.instruction for c in self.conversations for turn in c.turns]
        need = room_needed(self.tokenizer, self.template.edit, instructions, self.edit.max_new_tokens)
        if need > self.edit.max_context_tokens:
            raise ValueError(
                f"max_context_tokens={self.edit.max_context_tokens} leaves no room for a turn: the longest "
                f"instruction's context and a prompt of up to max_new_tokens={self.edit.max_new_tokens} tokens "
                f"need {need}; raise max_context_tokens to at least {need}")

    def choose(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Conversation:
        """The episode's conversation: from `options`, else uniformly at random with `rng`."""
        options = options or {}
        unknown = sorted(set(options) - set(CHAT_OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; accepted options are {list(CHAT_OPTION_KEYS)}")
        if len(options) > 1:
            raise ValueError("reset options 'conversation' and 'conversation_index' are exclusive; give one of them")
        if "conversation" in options:
            conversation = options["conversation"]
            if not isinstance(conversation, Conversation):
                raise TypeError(f"options['conversation']={conversation!r}; expected a Conversation")
            return conversation
        if "conversation_index" in options:
            index = options["conversation_index"]
            n = len(self.conversations)
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < n:
                raise ValueError(f"options['conversation_index']={index!r}; expected an integer in [0, {n})")
            return self.conversations[int(index)]
        return self.conversations[int(rng.integers(len(self.conversations)))]

    def context(self, conversation: Conversation, prompts: Sequence[str]) -> tuple[np.ndarray, int, bool]:
        """(context ids, earlier turns kept, current turn cut) of turn `len(prompts) - 1`, whose prompt so far is
        `prompts[-1]` (`prompts[0]` is the source)."""
        turn = len(prompts) - 1
        current = self._encode(self.template.edit.context(conversation.task(turn, prompts[-1])))
        room = self.edit.max_context_tokens - len(self.prefix) - len(current)
        if room < 0:
            return np.asarray(self.prefix + current[-room:], dtype=np.int64), 0, True
        history: list[int] = []
        kept = 0
        for j in range(turn - 1, -1, -1):  # newest first, so the oldest are the ones dropped
            block = self._encode(self.template.history(prompts[j], conversation.turns[j].instruction))
            if len(block) + len(history) > room:
                break
            history, kept = block + history, kept + 1
        return np.asarray(self.prefix + history + current, dtype=np.int64), kept, False

    def _encode(self, text: str) -> list[int]:
        """Token ids of `text` without the tokenizer's prefix (added once, in front of the whole context). Cached:
        a conversation's history blocks are encoded again at every later turn."""
        ids = self._encoded.get(text)
        if ids is None:
            ids = list(self.tokenizer(text, verbose=False)["input_ids"])  # a long context is no error here
            ids = ids[len(self.prefix):] if ids[: len(self.prefix)] == self.prefix else ids
            if len(self._encoded) >= ENCODE_CACHE_SIZE:
                self._encoded.pop(next(iter(self._encoded)))  # the oldest entry (dicts keep insertion order)
            self._encoded[text] = ids
        return ids


def resume_prompts(conversation: Conversation, prompts: Sequence[str] | None) -> list[str]:
    """The `prompts` reset option checked: the conversation's source, then the prompt after each turn already
    played (so the episode starts at turn `len(prompts) - 1`); None starts at turn 0."""
    if prompts is None:
        return [conversation.source]
    prompts = list(prompts)
    if not 1 <= len(prompts) <= len(conversation.turns) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"options['prompts'] has {len(prompts)} entries; expected 1 to {len(conversation.turns)} "
                         "strings (the source, then the prompt after each turn already played)")
    if prompts[0] != conversation.source:
        raise ValueError(f"options['prompts'][0]={prompts[0]!r} must be the conversation's source "
                         f"{conversation.source!r}")
    return prompts


class PromptChatVectorEnv(TokenVectorEnv):
    """N conversations stepped together; every turn that ends on a step is scored in one reward call.

    Args: `num_envs`; `conversations` (`Conversation`s, "demo" = the bundled train conversations, or a .jsonl
    path); `tokenizer`, `reward`, `max_new_tokens` as `PromptEditVectorEnv`; `template` a `ChatTemplate`;
    `max_context_tokens` the room for history + current turn (default 160); `autoreset_mode` "next_step"
    (default) or "disabled" (a finished conversation stays frozen until reset, as a rollout collector needs);
    `sync_turns` (default False) makes turns synchronous: see the module docstring.
    Reset options: `conversation` / `conversation_index` for every reset sub-env, `conversations` /
    `conversation_indices` one per sub-env, `reset_mask`, and `prompts` (the source and the prompts after the
    turns already played: the episode resumes at turn `len(prompts) - 1`, e.g. to continue a user's chat).
    """

    PER_ENV_OPTIONS = {"conversations": "conversation", "conversation_indices": "conversation_index"}

    def __init__(
        self,
        num_envs: int,
        conversations: Sequence[Conversation] | str | os.PathLike = "demo",
        tokenizer: PreTrainedTokenizerBase | None = None,
        reward: CompositeReward | Scorer | None = None,
        template: ChatTemplate | None = None,
        max_new_tokens: int = 48,
        max_context_tokens: int = 160,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        sync_turns: bool = False,
    ) -> None:
        mode, num_envs = autoreset_mode_of(autoreset_mode), check_num_envs(num_envs)
        if not isinstance(sync_turns, (bool, np.bool_)):
            raise ValueError(f"sync_turns={sync_turns!r}; expected True or False")
        if tokenizer is None:
            from promptgym.envs.tokenizer import default_tokenizer

            tokenizer = default_tokenizer()
        self.chats = ChatEpisodes(conversations, tokenizer, template or ChatTemplate(), max_new_tokens,
                                  max_context_tokens)
        self.episodes = self.chats.edit  # the single-turn layout, action checks and decoding
        self.reward = as_composite(reward if reward is not None else default_reward())
        self._allocate(num_envs, mode)
        self._conversations: list[Conversation | None] = [None] * num_envs
        self._prompts: list[list[str]] = [[] for _ in range(num_envs)]
        self.sync_turns = bool(sync_turns)
        self._waiting = np.zeros(num_envs, dtype=bool)

    @property
    def waiting(self) -> np.ndarray:
        """bool[num_envs]: the sub-envs whose turn ended and that wait for the others (`sync_turns` only)."""
        return self._waiting.copy()

    @property
    def finished(self) -> np.ndarray:
        """bool[num_envs]: the sub-envs whose conversation's last turn has ended (and that were not reset since)."""
        return np.array([c is not None and len(p) > len(c.turns) for c, p in zip(self._conversations, self._prompts)])

    @property
    def conversations(self) -> list[Conversation | None]:
        """The conversation of each sub-environment's current episode."""
        return list(self._conversations)

    @property
    def turns(self) -> np.ndarray:
        """The turn each sub-environment is writing (0-based)."""
        return np.array([max(len(p) - 1, 0) for p in self._prompts], dtype=np.int64)

    @property
    def tasks(self) -> list[EditTask | None]:
        """Each sub-environment's current turn as an edit task (its source: the prompt the conversation reached;
        after the last turn, that turn's task)."""
        return [self._task(i) if c is not None else None for i, c in enumerate(self._conversations)]

    def _task(self, i: int) -> EditTask:
        """Sub-env i's current turn as a task; once the conversation is over, its last turn (the one just played)."""
        turn = min(len(self._prompts[i]), len(self._conversations[i].turns)) - 1
        return self._conversations[i].task(turn, self._prompts[i][turn])

    def prompts(self, i: int) -> list[str]:
        """Sub-environment i's prompts so far: the source, then the policy's prompt after each finished turn."""
        return list(self._prompts[i])

    def _reset_one(self, i: int, options: dict[str, Any] | None) -> dict[str, Any]:
        options = dict(options or {})
        prompts = options.pop("prompts", None)
        conversation = self.chats.choose(self._rngs[i], options)
        self._conversations[i], self._prompts[i] = conversation, resume_prompts(conversation, prompts)
        self._waiting[i] = False
        return self._start_turn(i)

    def step(self, actions):
        waiting = self._waiting.copy()
        actions, resetting, infos = self._begin_step(actions, idle=waiting)
        writing = ~resetting & ~waiting
        eos = writing & (actions == self.episodes.eos_id)
        turn_over = eos | (writing & (self._num_tokens >= self.episodes.max_new_tokens))
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        ended = np.flatnonzero(turn_over)
        if len(ended):
            infos = self._score_turns(ended, rewards, infos)
            for i in ended:
                if len(self._prompts[i]) > len(self._conversations[i].turns):  # that was the last turn
                    terminated[i], truncated[i] = bool(eos[i]), not eos[i]
                    infos = self._add_info(infos, {"prompts": list(self._prompts[i])}, int(i))
                else:
                    infos = self._add_info(infos, self._start_turn(i), int(i))
                    self._waiting[i] = self.sync_turns
        self._end_step(terminated | truncated, resetting)
        if not (~self._needs_reset & ~self._waiting).any():  # nobody is writing a turn: every waiting one starts
            self._waiting[:] = False
        return self._observation(), rewards, terminated, truncated, infos

    def _score_turns(self, ended: np.ndarray, rewards: np.ndarray, infos: dict[str, Any]) -> dict[str, Any]:
        """Decode every turn that ended and score them all in one reward call; record each new prompt."""
        prompts = self.episodes.decode_batch([self._generated(i) for i in ended])
        tasks = [self._task(i) for i in ended]
        output = self.reward([EditResult(task, prompt) for task, prompt in zip(tasks, prompts)])
        rewards[ended] = output.total.double().numpy()
        for row, (i, task, prompt) in enumerate(zip(ended, tasks, prompts)):
            info = {"prompt": prompt, "reward_components": output.row(row), "task_id": task.id,
                    "turn": len(self._prompts[i]) - 1, "num_tokens": int(self._num_tokens[i]),
                    "unparsed": " ".join(parse_scene(prompt).unparsed)}
            self._prompts[i].append(prompt)
            infos = self._add_info(infos, info, int(i))
        return infos

    def _start_turn(self, i: int) -> dict[str, Any]:
        """Sub-environment i's observation row for its next turn; returns the turn-start info."""
        conversation, prompts = self._conversations[i], self._prompts[i]
        context, kept, cut = self.chats.context(conversation, prompts)
        self._input_ids[i], self._attention_mask[i] = self.episodes.start(context)
        self._num_tokens[i] = 0
        self._needs_reset[i] = False
        return {"conversation_id": conversation.id, "turn_start": len(prompts) - 1, "num_turns": len(conversation.turns),
                "context_tokens": len(context), "history_turns": kept, "context_truncated": cut}


class PromptChatEnv(gym.Env):
    """One conversation at a time (see the module docstring); `PromptChatEnv()` builds the offline default.

    Takes `PromptChatVectorEnv`'s arguments but `num_envs` and `autoreset_mode`, plus `render_mode` (None or
    "ansi": `render()` returns the context and the text written so far in this turn). Reset options:
    `conversation` (a `Conversation`) or `conversation_index`.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        conversations: Sequence[Conversation] | str | os.PathLike = "demo",
        tokenizer: PreTrainedTokenizerBase | None = None,
        reward: CompositeReward | Scorer | None = None,
        template: ChatTemplate | None = None,
        max_new_tokens: int = 48,
        max_context_tokens: int = 160,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode={render_mode!r}; expected None or one of {self.metadata['render_modes']}")
        self.vector = PromptChatVectorEnv(1, conversations, tokenizer, reward, template, max_new_tokens,
                                          max_context_tokens, autoreset_mode=AutoresetMode.DISABLED)
        self.render_mode = render_mode
        self.action_space = self.vector.single_action_space
        self.observation_space = self.vector.single_observation_space
        self._done = True

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.vector.tokenizer

    @property
    def reward(self) -> CompositeReward:
        return self.vector.reward

    @property
    def conversation(self) -> Conversation | None:
        """The current episode's conversation (None before the first reset)."""
        return self.vector.conversations[0]

    @property
    def turn(self) -> int:
        return int(self.vector.turns[0])

    @property
    def prompts(self) -> list[str]:
        """The source, then the policy's prompt after each finished turn."""
        return self.vector.prompts(0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:  # draw the conversation from this env's own seeded stream
            seed = int(self.np_random.integers(2**63 - 1))
        obs, infos = self.vector.reset(seed=seed, options=options)
        self._done = False
        return _first(obs), unbatch_info(infos)

    def step(self, action):
        if self._done:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        action = self.vector.episodes.check_action(action)
        obs, rewards, terminated, truncated, infos = self.vector.step(np.array([action], dtype=np.int64))
        self._done = bool(terminated[0] or truncated[0])
        return _first(obs), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), unbatch_info(infos)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self.conversation is None:
            return ""
        episodes = self.vector.episodes
        ids = self.vector._input_ids[0]
        context = ids[: episodes.max_context_tokens][self.vector._attention_mask[0, : episodes.max_context_tokens] == 1]
        return self.tokenizer.decode(context.tolist(), skip_special_tokens=True) + self.tokenizer.decode(
            self.vector._generated(0).tolist(), skip_special_tokens=True)


def _first(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value[0] for key, value in obs.items()}


def unbatch_info(infos: dict[str, Any], i: int = 0) -> dict[str, Any]:
    """Sub-environment i's entries of a Gymnasium vector info dict (values masked by their `_key` arrays)."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            inner = unbatch_info(value, i)
            if inner:
                out[key] = inner
        elif infos[f"_{key}"][i]:
            item = value[i]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out
