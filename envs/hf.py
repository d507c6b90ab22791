"""Edit tasks as a Hugging Face `datasets.Dataset`, for TRL trainers and other HF tooling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptgym.envs.tasks import EditTask
from promptgym.envs.templates import EditTemplate


def tasks_to_dataset(tasks: Sequence[EditTask], template: EditTemplate | None = None) -> Any:
    """A `datasets.Dataset` with a `prompt` column (the task in promptgym's template) and the task fields.

    Columns: `prompt`, `source`, `instruction`, `target` ("" when absent), `task_id`; with
    `promptgym.rewards.as_trl_reward_func` it plugs into TRL's GRPOTrainer/RLOOTrainer.
    """
    from datasets import Dataset

    if not tasks:
        raise ValueError("tasks is empty; expected at least one EditTask")
    template = template or EditTemplate()
    return Dataset.from_dict(
        {
            "prompt": [template.context(task) for task in tasks],
            "source": [task.source for task in tasks],
            "instruction": [task.instruction for task in tasks],
            "target": [task.target or "" for task in tasks],
            "task_id": [task.id for task in tasks],
        }
    )
