"""Control prefixes (Prompt Expansion, Datta et al. 2023): a tag in front of the instruction that selects the kind
of rewrite, learned in SFT with prefix dropout.

A control is written as the instruction's first word, `<name>` ("<lighting> make the dog blue"), so it needs no
change to templates, envs or agents: every env shows it, every policy reads it, and a policy fine-tuned without
controls simply sees an unknown word. The controls of the synth world select the family of quality modifiers the
edited prompt adds (its content is the instruction's business either way):

| control    | the edited prompt adds                              |
|------------|-----------------------------------------------------|
| `keep`     | nothing: exactly the edit asked for                 |
| `detail`   | 1-2 of "highly detailed", "depth of field"          |
| `lighting` | 1-2 of "soft lighting", "dramatic shadows"          |
| `vivid`    | "vibrant colors"                                    |

`control_tasks(tasks, dropout, seed)` makes SFT data for them: each task whose target is a synth-world prompt
(`parse_scene` reads it with no unparsed word) gets, with probability 1 - `dropout`, a random control and the
target rewritten to that control (the target's scene with the control's modifiers instead of its own); the
others stay as they are, so the policy still edits without a control (prefix dropout). Tasks whose target is
not a synth prompt are kept unchanged.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from promptgym.rewards.base import EditTask
from promptgym.rewards.scene import describe, parse_scene

CONTROLS: dict[str, tuple[str, ...]] = {
    "keep": (),
    "detail": ("highly detailed", "depth of field"),
    "lighting": ("soft lighting", "dramatic shadows"),
    "vivid": ("vibrant colors",),
}


def check_control(control: str) -> str:
    if control not in CONTROLS:
        raise ValueError(f"control={control!r}; expected one of {list(CONTROLS)}")
    return control


def with_control(instruction: str, control: str | None) -> str:
    """`instruction` with the control's tag in front (unchanged for None); an instruction that already has a tag
    gets it replaced."""
    rest = split_control(instruction)[1]
    return rest if control is None else f"<{check_control(control)}> {rest}"


def split_control(instruction: str) -> tuple[str | None, str]:
    """(control, the instruction without its tag); (None, instruction) when it has no known tag."""
    head, _, rest = instruction.strip().partition(" ")
    if head.startswith("<") and head.endswith(">") and head[1:-1] in CONTROLS:
        return head[1:-1], rest.strip()
    return None, instruction.strip()


def control_target(target: str, control: str, rng: random.Random) -> str:
    """`target`'s scene with the control's modifiers (a random non-empty subset, in `CONTROLS` order) instead
    of its own; ValueError when `target` is not a synth-world prompt."""
    parsed = parse_scene(target)
    if parsed.unparsed or parsed.scene is None:
        raise ValueError(f"target {target!r} is not a synth-world prompt (unparsed: {list(parsed.unparsed)})")
    family = CONTROLS[check_control(control)]
    chosen = set(rng.sample(family, rng.randint(1, len(family)))) if family else set()
    return describe(dataclasses.replace(parsed.scene, modifiers=tuple(m for m in family if m in chosen)))


def control_tasks(tasks: Sequence[EditTask], dropout: float = 0.5, seed: int = 0) -> list[EditTask]:
    """SFT tasks with control prefixes (see the module docstring); same length and order as `tasks`."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout={dropout!r}; expected a number in [0, 1]")
    rng = random.Random(seed)
    names = list(CONTROLS)
    out = []
    for task in tasks:
        controlled = rng.random() >= dropout
        control = rng.choice(names)  # drawn either way, so the stream does not depend on dropout's outcome
        parsed = parse_scene(task.target) if task.target else None
        if not controlled or parsed is None or parsed.unparsed or parsed.scene is None:
            out.append(task)
            continue
        out.append(EditTask(task.source, with_control(task.instruction, control),
                            control_target(task.target, control, rng), id=f"{task.id}@{control}"))
    return out
