"""TRL adapter: `as_trl_reward_func`, `tasks_to_dataset`, and real GRPO/RLOO trainers running on our reward.

The trainer tests are the acceptance test of issue 3 ("a GRPOTrainer with a tiny policy runs 2 steps on CPU with
our reward func"): a tiny random BLOOM policy, the demo tasks as a `datasets.Dataset`, two optimizer steps. They
check that TRL called our function with the dataset columns aligned to the prompts, that what it logged as the
reward is what our function returned, and that the policy was updated.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from promptgym.envs import EditTask, EditTemplate, default_tokenizer, load_tasks, tasks_to_dataset
from promptgym.rewards import CompositeReward, ContentIntegrityScorer, EditResult, as_trl_reward_func, build_reward

COLUMNS = ["prompt", "source", "instruction", "target", "task_id"]


class CharLength:
    """Score = number of characters of the edited prompt (a cheap scorer whose value varies between completions)."""

    name = "chars"

    def __call__(self, results):
        return torch.tensor([float(len(r.prompt)) for r in results])


class Recorder:
    """A scorer that records the `EditResult`s it is given and scores them by word count."""

    name = "recorder"

    def __init__(self):
        self.results: list[EditResult] = []

    def __call__(self, results):
        self.results.extend(results)
        return torch.tensor([float(len(r.prompt.split())) for r in results])


@pytest.fixture(scope="module")
def tasks() -> list[EditTask]:
    return load_tasks("demo", "train")[:8]


def trl_columns(tasks: list[EditTask]) -> dict[str, list]:
    """The keyword columns TRL passes to a reward function for a batch of these tasks (as `tasks_to_dataset` makes)."""
    return {
        "source": [t.source for t in tasks],
        "instruction": [t.instruction for t in tasks],
        "target": [t.target or "" for t in tasks],
        "task_id": [t.id for t in tasks],
    }


def integrity_reward() -> CompositeReward:
    return CompositeReward({"integrity": (ContentIntegrityScorer(), 1.0)})


# ----------------------------------------------------------------------------- as_trl_reward_func


def test_values_equal_the_composite_reward_on_the_same_edit_results(tasks):
    batch = tasks[:4]
    # Two completions keep the content (the reference edits), two throw it away: integrity is 1, 1, 0, 0.
    completions = [f"  {batch[0].target} ", batch[1].target, "a blank canvas", "an empty room, 4k"]
    func = as_trl_reward_func(integrity_reward())
    prompts = [EditTemplate().context(t) for t in batch]
    values = func(prompts=prompts, completions=completions, **trl_columns(batch))

    expected_scores = ContentIntegrityScorer()([EditResult(t, c.strip()) for t, c in zip(batch, completions)])
    assert isinstance(values, list) and all(type(v) is float for v in values)
    assert values == expected_scores.tolist() == [1.0, 1.0, 0.0, 0.0]
    composite = integrity_reward()([EditResult(t, c.strip()) for t, c in zip(batch, completions)]).total
    assert values == composite.tolist()


def test_weighted_composite_and_single_scorer(tasks):
    batch = tasks[:3]
    completions = [batch[0].target, "a cat", batch[2].source + ", at night"]
    reward = CompositeReward({"integrity": (ContentIntegrityScorer(mode="ratio"), 2.0), "chars": (CharLength(), -0.5)})
    values = as_trl_reward_func(reward)(prompts=[""] * 3, completions=completions, **trl_columns(batch))
    scorer = ContentIntegrityScorer(mode="ratio")
    expected = [2.0 * scorer.ratio(t, c) - 0.5 * len(c) for t, c in zip(batch, completions)]  # by hand
    assert len(set(expected)) == 3  # the three completions score differently
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    # A bare Scorer is accepted too (weight 1).
    single = as_trl_reward_func(CharLength())(prompts=[""] * 3, completions=completions, **trl_columns(batch))
    assert single == [float(len(c)) for c in completions]


def test_columns_become_edit_results(tasks):
    batch = [tasks[0], EditTask("a dog", "make it a cat", target=None, id="no-target")]
    recorder = Recorder()
    func = as_trl_reward_func(recorder)
    func(prompts=["p0", "p1"], completions=[" edited one\n", "two"], **trl_columns(batch))
    got = recorder.results
    assert [r.prompt for r in got] == ["edited one", "two"]  # surrounding whitespace stripped
    assert [(r.task.source, r.task.instruction, r.task.id) for r in got] == [
        (t.source, t.instruction, t.id) for t in batch
    ]
    assert got[0].task.target == tasks[0].target
    assert got[1].task.target is None  # the dataset's "" means "no target"


def test_only_source_and_instruction_columns_are_required():
    recorder = Recorder()
    func = as_trl_reward_func(recorder)
    values = func(prompts=["p"], completions=["a b c"], source=["a dog"], instruction=["make it red"])
    assert values == [3.0]
    assert recorder.results[0].task.target is None and recorder.results[0].task.id == ""


def test_extra_trl_keyword_arguments_are_ignored(tasks):
    """TRL 1.x also passes completion_ids, trainer_state, log_extra, log_metric; none of them may break the call."""
    batch = tasks[:2]
    func = as_trl_reward_func(integrity_reward())
    plain = func(prompts=["", ""], completions=[batch[0].target, "x"], **trl_columns(batch))
    extra = func(
        prompts=["", ""],
        completions=[batch[0].target, "x"],
        completion_ids=[[5, 6], [7]],
        trainer_state=object(),
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
        **trl_columns(batch),
    )
    assert plain == extra == [1.0, 0.0]


def test_conversational_completions_use_the_last_message(tasks):
    batch = tasks[:2]
    conversational = [
        [{"role": "assistant", "content": f" {batch[0].target} "}],
        [{"role": "assistant", "content": "draft"}, {"role": "assistant", "content": "a blank canvas"}],
    ]
    func = as_trl_reward_func(integrity_reward())
    values = func(prompts=[[{"role": "user", "content": "edit"}]] * 2, completions=conversational, **trl_columns(batch))
    plain = func(prompts=["", ""], completions=[batch[0].target, "a blank canvas"], **trl_columns(batch))
    assert values == plain == [1.0, 0.0]


def test_bad_completion_type_is_named():
    func = as_trl_reward_func(integrity_reward())
    with pytest.raises(TypeError, match="completion="):
        func(prompts=[""], completions=[42], source=["a dog"], instruction=["make it red"])


def test_missing_source_column_raises_key_error_naming_the_columns(tasks):
    func = as_trl_reward_func(integrity_reward())
    columns = trl_columns(tasks[:1])
    del columns["source"]
    with pytest.raises(KeyError) as info:
        func(prompts=[""], completions=["x"], **columns)
    message = str(info.value)
    assert "'source'" in message  # the missing column
    for present in ("instruction", "target", "task_id"):  # and the columns it did get
        assert present in message
    assert "tasks_to_dataset" in message  # and how to fix it


def test_missing_instruction_column_is_named():
    func = as_trl_reward_func(integrity_reward())
    with pytest.raises(KeyError, match="instruction"):
        func(prompts=[""], completions=["x"], source=["a dog"])


def test_column_length_mismatch_is_an_error():
    func = as_trl_reward_func(integrity_reward())
    with pytest.raises(ValueError):
        func(prompts=["", ""], completions=["x", "y"], source=["a dog"], instruction=["make it red"])


def test_function_name_is_what_trl_logs():
    func = as_trl_reward_func(integrity_reward())
    assert func.__name__ == "promptgym_reward"
    trl_utils = pytest.importorskip("trl.trainer.utils")
    assert trl_utils.get_callable_name(func) == "promptgym_reward"  # -> "rewards/promptgym_reward/mean" in logs


def test_not_a_reward_is_rejected():
    with pytest.raises(TypeError, match="reward="):
        as_trl_reward_func(lambda results: results)


# ----------------------------------------------------------------------------- tasks_to_dataset


def test_tasks_to_dataset_columns_and_prompt_text(tasks):
    extra = EditTask("a red car", "make it blue", target=None, id="custom")
    dataset = tasks_to_dataset([*tasks, extra])
    assert dataset.column_names == COLUMNS
    assert len(dataset) == len(tasks) + 1
    template = EditTemplate()
    for row, task in zip(dataset, [*tasks, extra]):
        assert row == {
            "prompt": template.context(task),
            "source": task.source,
            "instruction": task.instruction,
            "target": task.target or "",
            "task_id": task.id,
        }
    assert dataset[0]["prompt"] == f"Prompt: {tasks[0].source}\nInstruction: {tasks[0].instruction}\nEdited prompt:"


def test_tasks_to_dataset_custom_template_and_empty(tasks):
    template = EditTemplate(context_format="Edit <{source}> so that: {instruction} =>")
    dataset = tasks_to_dataset(tasks[:2], template=template)
    assert dataset["prompt"] == [template.context(t) for t in tasks[:2]]
    with pytest.raises(ValueError, match="tasks"):
        tasks_to_dataset([])


def test_dataset_rows_feed_the_reward_func(tasks):
    """A dataset row's columns, passed as TRL passes them, score like the tasks themselves."""
    dataset = tasks_to_dataset(tasks[:4])
    columns = dataset[:4]  # {column: list}; TRL passes "prompt" as `prompts` and the other columns by name
    prompts = columns.pop("prompt")
    func = as_trl_reward_func(integrity_reward())
    completions = [t.target for t in tasks[:4]]
    values = func(prompts=prompts, completions=completions, **columns)
    assert values == integrity_reward()([EditResult(t, t.target) for t in tasks[:4]]).total.tolist()


# ----------------------------------------------------------------------------- real TRL trainers


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run inside tmp_path with trackers off, and restore the global RNGs the trainer seeds."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DISABLED", "true")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield tmp_path
    random.setstate(py_state)
    np.random.set_state(np_state)


@dataclass
class Spy:
    """Wraps a TRL reward function, recording every call's arguments and returned values."""

    func: object
    calls: list

    def __call__(self, prompts, completions, **columns):
        values = self.func(prompts=prompts, completions=completions, **columns)
        self.calls.append({"prompts": list(prompts), "completions": list(completions), "values": values, **columns})
        return values


def spy_on(reward) -> Spy:
    spy = Spy(as_trl_reward_func(reward), [])
    spy.__name__ = "promptgym_reward"  # TRL names the reward by the callable's __name__
    return spy


def trainer_args(config_cls, output_dir, **overrides):
    """Two optimizer steps on the CPU, 2 prompts x 2 completions of <= 24 tokens per step, nothing saved or reported."""
    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=24,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    # TRL turns checkpointing on by default (pointless for a tiny model); transformers 5 renamed the flag.
    names = {field.name for field in dataclasses.fields(config_cls)}
    kwargs["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = False
    return config_cls(**(kwargs | overrides))


def check_training(trainer, spy: Spy, reward, before: dict[str, torch.Tensor]) -> None:
    """TRL ran 2 steps, called our function with aligned columns, logged its values as the reward, updated the model."""
    assert trainer.state.global_step == 2
    step_logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert [entry["step"] for entry in step_logs] == [1, 2]
    assert len(spy.calls) == 2  # one generation batch per optimizer step
    template = EditTemplate()
    for call, log in zip(spy.calls, step_logs):
        n = len(call["completions"])
        assert n == 4 and all(isinstance(c, str) for c in call["completions"])
        # The dataset columns TRL passes are aligned with the prompts (repeated once per generation).
        for prompt, source, instruction in zip(call["prompts"], call["source"], call["instruction"]):
            assert prompt == template.context(EditTask(source, instruction))
        assert call["source"][0] == call["source"][1] and call["source"][2] == call["source"][3]
        # The values equal the reward recomputed independently on the same edited prompts.
        tasks = [
            EditTask(s, i, t or None, tid)
            for s, i, t, tid in zip(call["source"], call["instruction"], call["target"], call["task_id"])
        ]
        expected = reward([EditResult(task, c.strip()) for task, c in zip(tasks, call["completions"])]).total
        np.testing.assert_allclose(call["values"], expected.numpy(), rtol=1e-5, atol=1e-6)
        # What TRL logged as this step's reward is the mean of what our function returned.
        assert log["reward"] == pytest.approx(float(np.mean(call["values"])), rel=1e-5, abs=1e-6)
        assert log["rewards/promptgym_reward/mean"] == pytest.approx(log["reward"], rel=1e-6)
    assert any(np.std(call["values"]) > 0 for call in spy.calls)  # a learning signal existed ...
    model = trainer.model
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, before[name])]
    assert changed, "the policy was not updated"  # ... and the optimizer used it


def integrity_and_length() -> CompositeReward:
    """Content integrity plus a small length term: the integrity ratio of random text is almost always 0, so
    the length term gives the 2 completions of a prompt different rewards and GRPO a non-zero advantage."""
    return CompositeReward({"integrity": (ContentIntegrityScorer(mode="ratio"), 1.0), "chars": (CharLength(), 0.01)})


def tiny_policy(tokenizer):
    from promptgym.agents.policy import PolicyWithValue

    return PolicyWithValue.tiny(tokenizer, seed=0).model


def test_grpo_trainer_runs_two_steps_on_cpu_with_our_reward(isolated, tasks):
    trl = pytest.importorskip("trl")
    tokenizer = default_tokenizer()
    model = tiny_policy(tokenizer)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    reward = integrity_and_length()
    spy = spy_on(reward)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[spy],
        args=trainer_args(trl.GRPOConfig, isolated / "out"),
        train_dataset=tasks_to_dataset(tasks),
        processing_class=tokenizer,
    )
    trainer.train()
    check_training(trainer, spy, reward, before)
    assert not any((isolated / "out").iterdir())  # save_strategy="no": nothing written, not even in output_dir


def test_grpo_trainer_with_the_tiny_image_reward(isolated, tasks):
    """The default offline reward stack (tiny SD renders, aesthetic, PickScore, integrity) under GRPO."""
    trl = pytest.importorskip("trl")
    tokenizer = default_tokenizer()
    model = tiny_policy(tokenizer)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    reward = build_reward("tiny", tokenizer=tokenizer)
    spy = spy_on(reward)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[spy],
        args=trainer_args(trl.GRPOConfig, isolated / "out"),
        train_dataset=tasks_to_dataset(tasks),
        processing_class=tokenizer,
    )
    trainer.train()
    check_training(trainer, spy, reward, before)  # the recomputation hits the render cache: same images


def test_rloo_trainer_runs_two_steps_on_cpu_with_our_reward(isolated, tasks):
    """RLOO's default beta (0.05) loads a reference model from the policy's path, so the policy is saved first."""
    trl = pytest.importorskip("trl")
    tokenizer = default_tokenizer()
    tiny_policy(tokenizer).save_pretrained(isolated / "policy")
    reward = integrity_and_length()
    spy = spy_on(reward)
    trainer = trl.RLOOTrainer(
        model=str(isolated / "policy"),
        reward_funcs=[spy],
        args=trainer_args(trl.RLOOConfig, isolated / "out"),
        train_dataset=tasks_to_dataset(tasks),
        processing_class=tokenizer,
    )
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    assert trainer.ref_model is not None  # the KL-to-reference path is exercised
    trainer.train()
    check_training(trainer, spy, reward, before)
