"""The one JSON-lines reader: every non-blank line one JSON object, any other line an error naming file and line.

Task files (`promptgym.envs.load_tasks`), run logs (`metrics.jsonl`, `samples.jsonl`) and label files all read
through it. It lives in `rewards`, the bottom layer, so that every other package may use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def jsonl_objects(text: str, where: str, expected: str = "an object") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of `text`; `where` names the source in errors.

    Lines are split on "\\n" only (`str.splitlines` would also split inside a JSON string holding a raw U+2028).
    A line that is not JSON, or is JSON but not an object, raises ValueError naming `where` and the line;
    `expected` says what an object should hold.
    """
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{where}: line {number} is not valid JSON ({err.msg} at column {err.colno}): {line[:80]!r}"
            ) from None
        if not isinstance(obj, dict):  # bad file content, not a bad argument: ValueError
            raise ValueError(f"{where}: line {number} is a JSON {type(obj).__name__}; expected {expected}")  # noqa: TRY004
        rows.append((number, obj))
    return rows


def read_jsonl(path: str | os.PathLike, missing_hint: str = "") -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, in order; a missing file is a FileNotFoundError naming it (and the hint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist{'; ' + missing_hint if missing_hint else ''}")
    return [obj for _, obj in jsonl_objects(path.read_text(encoding="utf-8"), str(path))]
