"""Prompt templates: how a task becomes the context the policy reads, and how a target is appended."""

from __future__ import annotations

from dataclasses import dataclass

from promptgym.rewards.base import TaskLike


@dataclass(frozen=True)
class EditTemplate:
    """Formats `(source, instruction)` as the policy's context; the edited prompt follows it.

    `context_format` must contain `{source}` and `{instruction}`. The completion is the edited prompt with
    `completion_prefix` in front (a space, so byte-level tokenizers see a word boundary) and EOS after it.
    """

    context_format: str = "Prompt: {source}\nInstruction: {instruction}\nEdited prompt:"
    completion_prefix: str = " "

    def __post_init__(self) -> None:
        for field_name in ("{source}", "{instruction}"):
            if field_name not in self.context_format:
                raise ValueError(
                    f"context_format={self.context_format!r} must contain {field_name}; "
                    "expected something like 'Prompt: {source}\\nInstruction: {instruction}\\nEdited prompt:'"
                )

    def context(self, task: TaskLike) -> str:
        """The text the policy reads before writing the edited prompt."""
        return self.context_format.format(source=task.source, instruction=task.instruction)

    def completion(self, prompt: str) -> str:
        """The text the policy should write for edited prompt `prompt` (EOS is added by the caller)."""
        return self.completion_prefix + prompt

    @staticmethod
    def clean(decoded: str) -> str:
        """The edited prompt from decoded completion text (surrounding whitespace removed)."""
        return decoded.strip()
