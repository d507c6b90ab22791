"""One validation style for every config class: pydantic dataclasses whose fields carry their range and their doc.

    @config_dataclass
    class PPOConfig:
        gamma: Annotated[float, Field(ge=0, le=1, description="Discount factor.")] = 1.0

    PPOConfig(gamma=1.5)  # ConfigError: PPOConfig.gamma=1.5: expected a number in [0, 1]

A config class stays a standard dataclass (`dataclasses.replace`, `fields` and `asdict` work) that pydantic v2
validates in strict mode on construction: no string-to-number or number-to-bool conversion, no NaN or infinity,
no unknown keyword; an int widens to a float for a float field. A wrong field raises `ConfigError` (a ValueError)
naming `<owner>.<field>`, the value and what is allowed; the allowed text is made from the field's type and
constraints (`allowed`), so a message never drifts from the check. Checks across fields go in `__post_init__`
and raise `ConfigError` themselves. `field_docs` gives each field's description: it is documented once, there.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

import annotated_types
import pydantic
from pydantic import ConfigDict, ValidationError

__all__ = ["ConfigError", "allowed", "bounds", "config_dataclass", "field_docs", "unknown_key_message"]

STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the (dotted) key, the value and what is allowed."""


def config_dataclass(cls: type[T] | None = None, *, name: str | None = None) -> Any:
    """Make `cls` a strictly validated pydantic dataclass whose errors are one-line `ConfigError`s.

    name: how messages name the owner of a field ("PPOConfig" by default; "" for keys without a prefix).
    """

    def wrap(cls: type[T]) -> type[T]:
        cls = pydantic.dataclasses.dataclass(cls, config=STRICT)
        owner = cls.__name__ if name is None else name
        validate = cls.__init__

        @functools.wraps(validate)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                validate(self, *args, **kwargs)
            except ValidationError as error:
                raise _config_error(cls, owner, error, args, kwargs) from None

        cls.__init__ = __init__
        cls.config_owner = owner  # how this class's messages name it (see `rename_owner`)
        return cls

    return wrap if cls is None else wrap(cls)


def rename_owner(message: str, cls: type, key: str) -> str:
    """`message` with the owner prefix of `cls` ("PPOConfig.") replaced by `key` ("ppo.")."""
    owner = getattr(cls, "config_owner", cls.__name__)
    prefix = f"{owner}." if owner else ""
    return message.replace(prefix, f"{key}.") if prefix else message


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description (its documentation), in field order; "" where a field has none."""
    return {name: info.description or "" for name, info in cls.__pydantic_fields__.items()}


def allowed(cls: type, name: str) -> str:
    """What field `name` of config class `cls` accepts, in words: "a number in [0, 1]", "an integer >= 1 or null"."""
    info = cls.__pydantic_fields__[name]
    return _describe(info.annotation, info.metadata)


def bounds(cls: type, name: str) -> str:
    """The numeric range of field `name` in words ("> 0", "in [0, 1]"), or "" when it has none."""
    return _range(cls.__pydantic_fields__[name].metadata).strip()


def unknown_key_message(dotted: str, key: str, valid: Iterable[str], where: str) -> str:
    """ "unknown key 'ppo.learning_rat'; did you mean 'ppo.learning_rate'? valid keys of 'ppo': [...]"."""
    valid = list(valid)
    close = difflib.get_close_matches(str(key), valid, n=1)
    prefix = dotted[: len(dotted) - len(str(key))]
    hint = f"; did you mean {prefix + close[0]!r}?" if close else ";"
    return f"unknown key {dotted!r}{hint} valid keys of {where}: {valid}"


# --------------------------------------------------------------------------------------------- internals
def _config_error(cls: type, owner: str, error: ValidationError, args: tuple, kwargs: dict[str, Any]) -> ConfigError:
    """The first of pydantic's errors as one line naming the key, the value given and what is allowed."""
    first = error.errors(include_url=False)[0]
    original = first.get("ctx", {}).get("error")
    if isinstance(original, ConfigError):  # raised by __post_init__: already says it all
        return original
    prefix = f"{owner}." if owner else ""
    fields = cls.__pydantic_fields__
    positional = [f.name for f in dataclasses.fields(cls) if f.init]
    given = dict(zip(positional, args)) | kwargs
    key = first["loc"][0] if first["loc"] else ""
    key = positional[key] if isinstance(key, int) and key < len(positional) else str(key)
    if key not in fields:
        if first["type"] == "unexpected_keyword_argument":
            return ConfigError(unknown_key_message(prefix + key, key, fields, owner or "the config"))
        return ConfigError(f"{owner or cls.__name__}: {first['msg']}")
    value = given.get(key, first["input"])  # the whole field (a dict or list), not just its bad item
    return ConfigError(f"{prefix}{key}={value!r}: expected {allowed(cls, key)}")


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _describe(hint: Any, constraints: Iterable[Any] = ()) -> str:
    constraints = list(constraints)
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(hint)
        return _describe(inner, [*constraints, *extra])
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(option, constraints) for option in typing.get_args(hint)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin is list:
        return f"a list of {_plural(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"a mapping from strings to {_plural(typing.get_args(hint)[1])}"
    if hint is Any:
        return "any value"
    if hint is str and any(getattr(c, "min_length", 0) for c in _flat(constraints)):
        return "a non-empty string"
    if hint in (int, float):
        return _NAMES[hint] + _range(constraints)
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__}"
    return _NAMES.get(hint, repr(hint))


def _plural(hint: Any) -> str:
    return "values" if hint is Any else _describe(hint).split(" ", 1)[1] + "s"


def _flat(constraints: Iterable[Any]) -> list[Any]:
    """Constraint objects, with `Field(...)` infos opened into theirs."""
    out: list[Any] = []
    for c in constraints:
        out.extend(c.metadata if isinstance(c, pydantic.fields.FieldInfo) else [c])
    return out


def _range(constraints: Iterable[Any]) -> str:
    bounds: dict[str, Any] = {}
    for c in _flat(constraints):
        for kind, cls in (("gt", annotated_types.Gt), ("ge", annotated_types.Ge), ("lt", annotated_types.Lt),
                          ("le", annotated_types.Le)):
            if isinstance(c, cls):
                bounds[kind] = getattr(c, kind)
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        return f" in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f" {'>' if low[0] == '(' else '>='} {low[1]}"
    if high:
        return f" {'<' if high[0] == ')' else '<='} {high[1]}"
    return ""

