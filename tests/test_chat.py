"""The multi-turn chat env: its data, the context it shows, the Gymnasium contract, per-turn rewards, the vector
env against single envs, and error paths."""

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from promptgym.envs import (
    CHAT_ENV_ID,
    ChatTurn,
    Conversation,
    PromptChatEnv,
    PromptChatVectorEnv,
    PromptEditEnv,
    load_conversations,
)
from promptgym.envs.chat import unbatch_info
from promptgym.envs.demo_chat import CHAT_KINDS, main, single_turn_sources
from promptgym.rewards import CompositeReward, ContentIntegrityScorer, CountingReward
from promptgym.rewards.scene import parse_scene

INTEGRITY = ContentIntegrityScorer(mode="ratio")
CHAIN = Conversation("a red dog in a park", (
    ChatTurn("make the dog blue", "a blue dog in a park"),
    ChatTurn("add a hat", "a blue dog with a hat in a park"),
    ChatTurn("change the background to a beach", "a blue dog with a hat on a beach"),
), id="chain")


@pytest.fixture(scope="module")
def env():
    return PromptChatEnv(reward=INTEGRITY)


def type_text(env, text):
    """Type `text` then EOS; returns the last step's (obs, reward, terminated, truncated, info)."""
    tok = env.tokenizer
    out = None
    for token in tok(" " + text)["input_ids"][len(tok("")["input_ids"]):] + [tok.eos_token_id]:
        out = env.step(token)
    return out


# ------------------------------------------------------------------------------------------------ data
def test_bundled_conversations_match_a_fresh_generation(capsys):
    assert main(["--check"]) == 0


@pytest.mark.parametrize("split", ["train", "test"])
def test_demo_conversations_are_exact_chains_of_applicable_edits(split):
    conversations = load_conversations("demo", split)
    assert len(conversations) == (540 if split == "train" else 60)
    single = single_turn_sources()
    for c in conversations:
        assert c.source not in single and 2 <= len(c.turns) <= 4
        scene = parse_scene(c.source).scene
        for previous, turn in zip((None, *c.turns), c.turns):
            assert turn.kind in CHAT_KINDS and (previous is None or turn.kind != previous.kind)
            assert turn.kind != "add" or scene.accessory is None
            assert turn.kind != "remove" or scene.accessory is not None
            parsed = parse_scene(turn.target)
            assert parsed.unparsed == () or not parsed.unparsed
            scene = parsed.scene
        modifiers = {parse_scene(t.target).scene.modifiers for t in c.turns}
        assert len(modifiers) == 1  # the first turn's modifiers are kept by every later turn
    train_sources = {c.source for c in load_conversations("demo", "train")}
    assert not train_sources & {c.source for c in load_conversations("demo", "test")}


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2 is not valid JSON"),
    ('{"source": "a cat", "turns": []}', "line 2: conversation .* has no turns"),
    ('{"source": "a cat", "turns": [{"instruction": ""}]}', "line 2: conversation .* turn 0 needs a non-empty"),
    ('{"source": "a cat", "turns": [{"instr": "x"}]}', "line 2: turn 0 must be"),
    ('{"source": "a cat"}', "line 2: expected keys 'source'"),
])
def test_bad_conversation_files_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "chats.jsonl"
    path.write_text('{"source": "a dog", "turns": [{"instruction": "make it red"}]}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        load_conversations(path)
    assert str(path) in str(error.value)


def test_a_conversation_file_loads_with_default_ids_and_optional_targets(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"source": " a dog ", "turns": [{"instruction": "make it red", "target": ""}]}) + "\n")
    (c,) = load_conversations(path)
    assert c == Conversation("a dog", (ChatTurn("make it red", None, ""),), "mine-0")
    with pytest.raises(ValueError, match="expected 'demo' or a .jsonl"):
        load_conversations(tmp_path / "mine.csv")
    with pytest.raises(FileNotFoundError):
        load_conversations(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------ contexts
def test_turn_zero_shows_exactly_the_single_turn_context(env):
    obs, info = env.reset(options={"conversation": CHAIN})
    single = PromptEditEnv(tasks=[CHAIN.task(0, CHAIN.source)], reward=INTEGRITY, max_context_tokens=160)
    single_obs, _ = single.reset(seed=0)
    np.testing.assert_array_equal(obs["input_ids"], single_obs["input_ids"])
    assert info["history_turns"] == 0 and info["turn_start"] == 0 and info["num_turns"] == 3


def test_later_turns_read_the_history_then_the_current_edit(env):
    env.reset(options={"conversation": CHAIN})
    type_text(env, "a blue dog in a park")
    obs, reward, terminated, truncated, info = type_text(env, "a blue dog with a hat in a park")
    assert info["turn"] == 1 and info["history_turns"] == 2 and not (terminated or truncated)
    text = env.tokenizer.decode(obs["input_ids"][obs["attention_mask"] == 1].tolist())
    assert text == ("<s>Prompt: a red dog in a park\nInstruction: make the dog blue\n"
                    "Prompt: a blue dog in a park\nInstruction: add a hat\n"
                    "Prompt: a blue dog with a hat in a park\nInstruction: change the background to a beach\n"
                    "Edited prompt:")


def test_history_is_dropped_from_the_left_whole_turns_at_a_time():
    env = PromptChatEnv([CHAIN], reward=INTEGRITY, max_new_tokens=16, max_context_tokens=44)
    env.reset(seed=0)
    type_text(env, "a blue dog in a park")
    obs, *_, info = type_text(env, "a blue dog with a hat in a park")
    assert info["history_turns"] == 1 and not info["context_truncated"]  # turn 0 dropped, turn 1 kept
    text = env.tokenizer.decode(obs["input_ids"][obs["attention_mask"] == 1].tolist())
    assert text.startswith("<s>Prompt: a blue dog in a park\nInstruction: add a hat\n")


def test_a_context_budget_without_room_for_a_turn_is_an_error():
    with pytest.raises(ValueError, match="raise max_context_tokens to at least"):
        PromptChatEnv([CHAIN], reward=INTEGRITY, max_new_tokens=48, max_context_tokens=50)


# ------------------------------------------------------------------------------------------------ rewards
def test_typing_each_target_keeps_integrity_on_every_turn(env):
    env.reset(options={"conversation": CHAIN})
    for k, turn in enumerate(CHAIN.turns):
        _, reward, terminated, truncated, info = type_text(env, turn.target)
        assert reward == 1.0 and info["turn"] == k and info["prompt"] == turn.target
        assert info["task_id"] == f"chain/{k}" and terminated == (k == 2) and not truncated
    assert info["prompts"] == [CHAIN.source, *(t.target for t in CHAIN.turns)]
    assert env.prompts == info["prompts"]


def test_the_next_turn_edits_the_policys_own_prompt(env):
    env.reset(options={"conversation": CHAIN})
    _, reward, *_ = type_text(env, "a green cat")  # ignores the instruction
    assert reward < 1.0
    assert env.vector.tasks[0].source == "a green cat" and env.turn == 1


def test_intermediate_steps_pay_zero_and_only_the_last_turn_ends_the_episode():
    env = PromptChatEnv([CHAIN], reward=INTEGRITY, max_new_tokens=3, max_context_tokens=96)
    env.reset(seed=0)
    a = int(env.tokenizer.convert_tokens_to_ids("a"))
    rewards, ends = [], []
    for _ in range(9):  # three turns that all hit the token limit
        _, reward, terminated, truncated, info = env.step(a)
        rewards.append(reward)
        ends.append((terminated, truncated, info.get("turn")))
    assert [e for e in ends if e[2] is not None] == [(False, False, 0), (False, False, 1), (False, True, 2)]
    assert all(r == 0.0 for i, r in enumerate(rewards) if i % 3 != 2)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(a)


# ------------------------------------------------------------------------------------------------ contract
def test_gymnasium_check_env_passes_on_the_registered_chat_env():
    made = gym.make(CHAT_ENV_ID, reward=INTEGRITY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(made.unwrapped, skip_render_check=True)


def test_stable_baselines3_check_env_passes():
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_checker.check_env(gym.make(CHAT_ENV_ID, reward=INTEGRITY).unwrapped, warn=True)


def test_make_vec_gives_the_batched_chat_env():
    vec = gym.make_vec(CHAT_ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", reward=INTEGRITY)
    assert isinstance(vec, PromptChatVectorEnv) and vec.num_envs == 3


def test_vector_env_equals_single_envs_and_batches_reward_calls():
    counting = CountingReward(CompositeReward({"integrity": (INTEGRITY, 1.0)}))
    vec = PromptChatVectorEnv(4, reward=counting, max_new_tokens=6, max_context_tokens=96)
    singles = [PromptChatEnv(reward=INTEGRITY, max_new_tokens=6, max_context_tokens=96) for _ in range(4)]
    obs, _ = vec.reset(seed=7)
    for i, single in enumerate(singles):
        single_obs, _ = single.reset(seed=7 + i)
        np.testing.assert_array_equal(obs["input_ids"][i], single_obs["input_ids"])
    rng = np.random.default_rng(0)
    compared, finished = 0, False
    while not finished:  # until the first conversation ends (the vector env would autoreset it next step)
        actions = rng.integers(0, vec.single_action_space.n, size=4)
        obs, rewards, terminated, truncated, _ = vec.step(actions)
        for i, single in enumerate(singles):
            s_obs, s_reward, s_term, s_trunc, _ = single.step(actions[i])
            np.testing.assert_array_equal(obs["input_ids"][i], s_obs["input_ids"])
            assert (rewards[i], terminated[i], truncated[i]) == (s_reward, s_term, s_trunc)
            finished |= s_term or s_trunc
        compared += 1
    assert compared >= 12  # at least two turns of 6 tokens
    assert counting.reward_calls >= 4 and counting.num_batches < counting.reward_calls  # turns ending together: one call


def test_bad_actions_options_and_order_are_errors(env):
    with pytest.raises(RuntimeError, match="call reset"):
        PromptChatEnv([CHAIN], reward=INTEGRITY).step(0)
    env.reset(seed=0)
    for action in (-1, 10**6, 1.5, None):
        with pytest.raises(ValueError, match=r"\[0, "):
            env.step(action)
    with pytest.raises(ValueError, match=r"unknown reset options \['task'\]"):
        env.reset(options={"task": CHAIN})
    with pytest.raises(ValueError, match="conversation_index"):
        env.reset(options={"conversation_index": 10**6})
    with pytest.raises(TypeError, match="expected a Conversation"):
        env.reset(options={"conversation": "a dog"})


def test_reset_is_seeded(env):
    first = env.reset(seed=3)[1]["conversation_id"]
    assert env.reset(seed=3)[1]["conversation_id"] == first
    assert len({env.reset(seed=s)[1]["conversation_id"] for s in range(10)}) > 1


def test_unbatch_info_reads_masked_entries():
    infos = {"a": np.array([1.0, 2.0]), "_a": np.array([False, True]),
             "d": {"x": np.array(["p", "q"], dtype=object), "_x": np.array([True, False])},
             "_d": np.array([True, False])}
    assert unbatch_info(infos, 0) == {"d": {"x": "p"}}
    assert unbatch_info(infos, 1) == {"a": 2.0}


def test_a_conversation_resumes_at_a_later_turn_from_given_prompts(env):
    obs, info = env.reset(options={"conversation": CHAIN, "prompts": [CHAIN.source, "a blue dog in a park"]})
    assert info["turn_start"] == 1 and info["history_turns"] == 1 and env.turn == 1
    *_, info = type_text(env, "a blue dog with a hat in a park")
    assert info["turn"] == 1 and info["task_id"] == "chain/1"
    with pytest.raises(ValueError, match="must be the conversation's source"):
        env.reset(options={"conversation": CHAIN, "prompts": ["a cat"]})
    with pytest.raises(ValueError, match="expected 1 to 3 strings"):
        env.reset(options={"conversation": CHAIN, "prompts": [CHAIN.source] * 4})


# ------------------------------------------------------------------------------------------------ sync_turns
def turn_tokens(vec, rng, n_turns=4):
    """Per sub-env and turn, the tokens it types: 1 to max_new_tokens + 2 random non-EOS tokens, then EOS (so some
    turns end at EOS and some at the token limit)."""
    eos, limit = vec.episodes.eos_id, vec.episodes.max_new_tokens
    words = [t for t in range(5, vec.single_action_space.n) if t != eos]
    return [[[*rng.choice(words, size=rng.integers(1, limit + 3)).tolist(), eos] for _ in range(n_turns)]
            for _ in range(vec.num_envs)]


def play(vec, tokens, seed):
    """Step `vec` (autoreset disabled) until every conversation ended, each sub-env typing tokens[i][turn] in its
    current turn (anything while it waits). Returns per sub-env the (turn, reward, prompt) of every turn, and the
    turn each sub-env was writing at every step."""
    vec.reset(seed=seed)
    cursor = np.zeros(vec.num_envs, dtype=int)
    turns = [[] for _ in range(vec.num_envs)]
    writing_turns = []
    done = np.zeros(vec.num_envs, dtype=bool)
    while not done.all():
        writing = ~done & ~vec.waiting
        writing_turns.append({int(vec.turns[i]) for i in np.flatnonzero(writing)})
        actions = np.array([tokens[i][vec.turns[i]][cursor[i]] if writing[i] else 7 for i in range(vec.num_envs)])
        _, rewards, terminated, truncated, infos = vec.step(actions)
        cursor[writing] += 1
        for i in np.flatnonzero(infos.get("_turn", np.zeros(vec.num_envs, dtype=bool))):
            turns[i].append((int(infos["turn"][i]), float(rewards[i]), infos["prompt"][i]))
            cursor[i] = 0
        assert (rewards[~writing] == 0).all()
        done |= terminated | truncated
    return turns, writing_turns


def test_sync_turns_gives_the_unsynchronised_turns_and_starts_every_turn_together():
    make = lambda sync: PromptChatVectorEnv(5, reward=INTEGRITY, max_new_tokens=6, max_context_tokens=96,  # noqa: E731
                                            autoreset_mode="disabled", sync_turns=sync)
    synced, free = make(True), make(False)
    tokens = turn_tokens(synced, np.random.default_rng(0))
    got, writing_turns = play(synced, tokens, seed=3)
    expected, free_turns = play(free, tokens, seed=3)
    assert got == expected and all(len(t) >= 2 for t in got)
    assert all(len(turns) == 1 for turns in writing_turns)  # synchronised: every writer is on the same turn
    assert any(len(turns) > 1 for turns in free_turns)  # (unsynchronised, they drift apart)


def test_a_waiting_sub_env_ignores_actions_and_keeps_its_next_turn_observation():
    vec = PromptChatVectorEnv(2, [CHAIN], reward=INTEGRITY, max_new_tokens=6, max_context_tokens=96,
                              autoreset_mode="disabled", sync_turns=True)
    obs, _ = vec.reset(seed=0)
    eos, a = vec.episodes.eos_id, int(vec.tokenizer.convert_tokens_to_ids("a"))
    obs, rewards, *_, infos = vec.step(np.array([eos, a]))  # sub-env 0 ends turn 0 at once; 1 goes on
    assert vec.waiting.tolist() == [True, False] and infos["turn_start"][0] == 1
    frozen = obs["input_ids"][0].copy()
    for _ in range(2):
        obs, rewards, terminated, truncated, _ = vec.step(np.array([a, a]))
        np.testing.assert_array_equal(obs["input_ids"][0], frozen)
        assert rewards[0] == 0 and not terminated[0] and vec.turns.tolist() == [1, 0]
    vec.step(np.array([a, eos]))  # sub-env 1 ends turn 0: nobody writes, so both start turn 1 on the next step
    assert vec.waiting.tolist() == [False, False] and vec.turns.tolist() == [1, 1]
    obs, *_ = vec.step(np.array([a, a]))
    assert (obs["attention_mask"][:, vec.episodes.max_context_tokens] == 1).all()  # both wrote their first token
    with pytest.raises(ValueError, match="sync_turns"):
        PromptChatVectorEnv(2, [CHAIN], reward=INTEGRITY, sync_turns="yes")


def test_sync_turns_with_next_step_autoreset_releases_the_waiting_with_the_reset():
    one_turn = Conversation("a cat", (ChatTurn("make it red", "a red cat"),), id="one")
    vec = PromptChatVectorEnv(2, [one_turn, CHAIN], reward=INTEGRITY, max_new_tokens=6, max_context_tokens=96,
                              sync_turns=True)
    vec.reset(seed=0, options={"conversation_indices": [0, 1]})
    eos, a = vec.episodes.eos_id, int(vec.tokenizer.convert_tokens_to_ids("a"))
    _, _, terminated, _, _ = vec.step(np.array([a, eos]))  # sub-env 1 ends turn 0 and waits for sub-env 0
    assert vec.waiting.tolist() == [False, True] and not terminated.any()
    _, _, terminated, _, _ = vec.step(np.array([eos, a]))  # sub-env 0's conversation ends: nobody writes any more
    assert terminated.tolist() == [True, False] and vec.waiting.tolist() == [False, False]
    _, rewards, terminated, _, infos = vec.step(np.array([a, a]))  # 0 resets (its action ignored), 1 writes turn 1
    assert infos["_conversation_id"][0] and vec.turns.tolist() == [0, 1] and rewards.tolist() == [0.0, 0.0]
