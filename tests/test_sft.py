"""SFT warm start: loss mask, held-out loss, learning, validation, determinism, what it leaves untouched."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.sft import (
    IGNORE_INDEX,
    SFTConfig,
    build_batch,
    completion_loss,
    sft_warm_start,
)
from promptgym.envs import EditEpisodes, EditTask, EditTemplate, default_tokenizer, load_tasks

TEMPLATE = EditTemplate()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model gains nothing from two intra-op threads, and on a loaded 2-core machine they can make a
    step several times slower (threads wait on each other); one thread keeps these tests fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def train_tasks():
    return load_tasks("demo", "train")[:256]


@pytest.fixture(scope="module")
def test_tasks():
    return load_tasks("demo", "test")[:64]


def tiny(tokenizer, seed=0, **kwargs) -> PolicyWithValue:
    return PolicyWithValue.tiny(tokenizer, seed=seed, **kwargs)


# ------------------------------------------------------------------------------------------- loss mask
def test_labels_cover_exactly_the_completion_and_eos(tokenizer):
    tasks = load_tasks("demo", "train")[:7]
    batch = build_batch(tokenizer, tasks, TEMPLATE)
    env_contexts = EditEpisodes(tasks, tokenizer, TEMPLATE, 48, 64).encode(tasks)  # how the env encodes them
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for row, (task, env_context) in enumerate(zip(tasks, env_contexts)):
        context = tokenizer(TEMPLATE.context(task))["input_ids"]
        completion = tokenizer(" " + task.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert context[0] == tokenizer.bos_token_id and context == env_context.tolist()
        n = len(context) + len(completion)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["input_ids"][row, :n].tolist() == context + completion
        labels = batch["labels"][row].tolist()
        assert labels[: len(context)] == [IGNORE_INDEX] * len(context)  # context: no loss
        assert labels[len(context) : n] == completion  # completion + EOS: loss on each
        assert labels[n:] == [IGNORE_INDEX] * (len(labels) - n)  # padding: no loss
        assert sum(label != IGNORE_INDEX for label in labels) == len(completion)
        assert tokenizer.decode(completion, skip_special_tokens=True).strip() == task.target


def test_completion_loss_equals_independent_cross_entropy(tokenizer):
    """Token-weighted mean NLL over completion tokens, each sequence alone (no padding) vs batched."""
    policy = tiny(tokenizer, seed=3)
    tasks = load_tasks("demo", "test")[:10]
    total, count = 0.0, 0
    with torch.no_grad():
        for task in tasks:
            context = tokenizer(TEMPLATE.context(task))["input_ids"]
            completion = tokenizer(" " + task.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([context + completion])
            logits = policy.model(input_ids=ids).logits[0]
            targets = ids[0, len(context) :]
            predicted_from = logits[len(context) - 1 : -1]  # logits at s predict the token at s+1
            total += float(F.cross_entropy(predicted_from, targets, reduction="sum"))
            count += len(targets)
    expected = total / count
    for batch_size in (1, 4, 10):  # batches of unequal lengths: padding must not change the value
        assert completion_loss(policy, tokenizer, tasks, TEMPLATE, batch_size) == pytest.approx(expected, abs=1e-5)
    assert completion_loss(policy.model, tokenizer, tasks, batch_size=3) == pytest.approx(expected, abs=1e-5)
    assert abs(expected - math.log(len(tokenizer))) < 0.5  # an untrained model is near uniform


# ------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_short_sft_lowers_held_out_loss_and_updates_policy_model_in_place(tokenizer, train_tasks, test_tasks):
    policy = tiny(tokenizer)
    with torch.no_grad():
        policy.value_head.summary.weight.normal_()  # non-zero, so "unchanged" is not trivially zeros
    policy.model.eval()
    model_before = policy.model
    head_before = {k: v.clone() for k, v in policy.value_head.state_dict().items()}
    lm_before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    config = SFTConfig(max_steps=40, batch_size=16, learning_rate=1e-2, eval_every=20)
    result = sft_warm_start(policy, tokenizer, train_tasks, test_tasks, config=config, progress=False)

    assert result.eval_loss_before == pytest.approx(completion_loss(tiny(tokenizer), tokenizer, test_tasks), abs=1e-5)
    assert result.eval_loss_after == pytest.approx(completion_loss(policy, tokenizer, test_tasks), abs=1e-5)
    assert result.eval_loss_before > 6.0
    assert result.eval_loss_after < result.eval_loss_before - 2.5, result.eval_curve
    assert [step for step, _ in result.eval_curve] == [0, 20, 40]
    assert result.eval_curve[0][1] == result.eval_loss_before and result.eval_curve[-1][1] == result.eval_loss_after
    assert len(result.train_losses) == result.num_steps == 40
    assert sum(result.train_losses[-10:]) / 10 < sum(result.train_losses[:5]) / 5 - 2.0
    assert result.num_train_tokens > 40 * 16 * 30 and result.tokens_per_s > 0 and result.wall_time_s > 0

    assert policy.model is model_before  # trained in place: the object PPO uses
    changed = [k for k, v in policy.model.state_dict().items() if not torch.equal(v, lm_before[k])]
    assert len(changed) == len(lm_before)
    for key, value in policy.value_head.state_dict().items():
        assert torch.equal(value, head_before[key])
    assert not policy.model.training  # the caller's eval mode is restored


def test_separate_critic_is_untouched(tokenizer, train_tasks):
    policy = tiny(tokenizer, separate_critic=True)
    critic_before = {k: v.clone() for k, v in policy.critic.state_dict().items()}
    sft_warm_start(policy, tokenizer, train_tasks[:32], config=SFTConfig(max_steps=3), progress=False)
    for key, value in policy.critic.state_dict().items():
        assert torch.equal(value, critic_before[key])


def test_loss_ignores_the_context(tokenizer):
    """Changing only the context tokens' labels must not matter; changing the target must."""
    task = load_tasks("demo", "train")[0]
    other_instruction = EditTask(task.source, "something else entirely", task.target, task.id)
    other_target = EditTask(task.source, task.instruction, task.target + " at night", task.id)
    a, b, c = (build_batch(tokenizer, [t])["labels"] for t in (task, other_instruction, other_target))
    assert (a != IGNORE_INDEX).sum() == (b != IGNORE_INDEX).sum()
    assert a[a != IGNORE_INDEX].tolist() == b[b != IGNORE_INDEX].tolist()
    assert a[a != IGNORE_INDEX].tolist() != c[c != IGNORE_INDEX].tolist()


# ------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_losses_and_caller_rng_untouched(tokenizer, train_tasks):
    def run(seed, policy=None):
        policy = policy or tiny(tokenizer)
        result = sft_warm_start(policy, tokenizer, train_tasks[:64], config=SFTConfig(max_steps=8, seed=seed),
                                progress=False)
        return result.train_losses, policy.model.state_dict()

    first = tiny(tokenizer)  # built before seeding: only sft_warm_start runs between the draws
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    losses_a, state_a = run(0, first)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's global RNG stream is not consumed or reseeded
    losses_b, state_b = run(0)
    losses_c, _ = run(1)
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert losses_a != losses_c  # the seed picks the data order


def test_total_steps_from_epochs_keeps_the_last_partial_batch():
    assert SFTConfig(num_epochs=1, batch_size=16).total_steps(100) == 7  # 6 full batches + one of 4
    assert SFTConfig(num_epochs=1.5, batch_size=16).total_steps(100) == 11
    assert SFTConfig(max_steps=5, num_epochs=100).total_steps(100) == 5


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("learning_rate", 0.0, "> 0"),
        ("learning_rate", float("nan"), "> 0"),
        ("learning_rate", "1e-3", "> 0"),
        ("num_epochs", 0, "> 0"),
        ("max_steps", 0, ">= 1"),
        ("max_steps", 2.5, ">= 1"),
        ("batch_size", 0, ">= 1"),
        ("batch_size", True, ">= 1"),
        ("weight_decay", -0.1, ">= 0"),
        ("warmup_ratio", 1.0, "[0, 1)"),
        ("warmup_ratio", -0.5, "[0, 1)"),
        ("max_grad_norm", 0.0, "> 0 or null"),
        ("seed", 1.5, "an int"),
        ("eval_every", 0, ">= 1"),
        ("eval_batch_size", -1, ">= 1"),
        ("max_length", 1, ">= 2"),
    ],
)
def test_config_validation_names_field_value_and_range(field, value, expected):
    with pytest.raises(ValueError) as err:
        SFTConfig(**{field: value})
    message = str(err.value)
    assert f"SFTConfig.{field}={value!r}" in message and expected in message


def test_tasks_without_target_are_an_error_naming_how_many(tokenizer):
    tasks = load_tasks("demo", "train")[:5]
    tasks[1] = EditTask(tasks[1].source, tasks[1].instruction, None, "no-target-1")
    tasks[3] = EditTask(tasks[3].source, tasks[3].instruction, None, "no-target-3")
    policy = tiny(tokenizer)
    with pytest.raises(ValueError, match=r"train_tasks: 2 of 5 tasks have no target.*no-target-1.*no-target-3"):
        sft_warm_start(policy, tokenizer, tasks, progress=False)
    good = [t for t in tasks if t.target is not None]
    with pytest.raises(ValueError, match=r"eval_tasks: 2 of 5 tasks have no target"):
        sft_warm_start(policy, tokenizer, good, tasks, progress=False)
    with pytest.raises(ValueError, match="train_tasks must be a non-empty sequence"):
        sft_warm_start(policy, tokenizer, [], progress=False)


def test_too_long_is_an_error_not_a_truncation(tokenizer):
    tasks = load_tasks("demo", "train")[:4]
    length = len(build_batch(tokenizer, tasks[:1])["input_ids"][0])
    with pytest.raises(ValueError, match=rf"max_length={length - 1}.*{tasks[0].id}.*{length} tokens.*nothing is truncated"):
        sft_warm_start(tiny(tokenizer), tokenizer, tasks[:1], config=SFTConfig(max_length=length - 1), progress=False)


def test_bad_arguments(tokenizer, train_tasks):
    with pytest.raises(TypeError, match="policy_or_model must be a PolicyWithValue"):
        sft_warm_start("bloom", tokenizer, train_tasks[:4], progress=False)
    with pytest.raises(TypeError, match="config must be"):
        sft_warm_start(tiny(tokenizer), tokenizer, train_tasks[:4], config={"max_steps": 1}, progress=False)
    with pytest.raises(ValueError, match=r"SFTConfig.batch_size=0"):
        completion_loss(tiny(tokenizer), tokenizer, train_tasks[:4], batch_size=0)
    frozen = tiny(tokenizer)
    frozen.model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        sft_warm_start(frozen, tokenizer, train_tasks[:4], progress=False)


# ------------------------------------------------------------------------------------------- side effects
def test_writes_no_files(tokenizer, train_tasks, test_tasks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    sft_warm_start(tiny(tokenizer), tokenizer, train_tasks[:32], test_tasks[:8], config=SFTConfig(max_steps=2),
                   progress=False)
    assert set(os.listdir(tmp_path)) == before == set()


def test_progress_bar_reports_steps(tokenizer, train_tasks, capsys):
    sft_warm_start(tiny(tokenizer), tokenizer, train_tasks[:16], config=SFTConfig(max_steps=2), progress=True)
    assert "SFT" in capsys.readouterr().err
