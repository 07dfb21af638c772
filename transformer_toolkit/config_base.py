"""StrictConfig: the base of every config in the project (model, data, training, SFT).

Unknown fields are rejected with the closest valid name suggested, so a typo such as
``save_every_n`` fails loudly instead of being ignored. Every number must be finite (NaN and
inf are refused for every float field), and each config states the range of its numeric fields
in one table, ``RANGES``, checked by ``check_range`` (see there why a plain ``x <= 0`` test is
not enough). Configs round-trip through plain dicts (safe for JSON, YAML and
``torch.load(weights_only=True)``) and JSON.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from .atomic import atomic_write_text


def suggest(name: str, valid) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(field: str, value: str, valid: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``field`` when ``value`` is not one of ``valid``."""
    if value not in valid:
        close = difflib.get_close_matches(value, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{field}={value!r} is not a known variant; valid: {', '.join(valid)}.{hint}")


def check_range(name: str, value, *, ge=None, gt=None, le=None, lt=None, hint: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``value`` (None passes: "not set") is a finite
    number within the bounds; ``hint`` follows the bounds in the message (what the field means,
    what None does). NaN fails every comparison, so a plain ``if x <= 0: raise`` lets it
    through; here a number must prove it is inside the range.

    >>> check_range("eps", 1e-6, gt=0)
    >>> check_range("eps", float("nan"), gt=0)
    Traceback (most recent call last):
    ...
    ValueError: eps must be > 0, got nan
    """
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (ge is None or value >= ge) and (gt is None or value > gt)
    ok = ok and (le is None or value <= le) and (lt is None or value < lt)
    if not ok:
        raise ValueError(f"{name} must be {_describe(ge, gt, le, lt)}{hint}, got {value!r}")


def check_ranges(cfg, table: dict[str, dict]) -> None:
    """``check_range`` for each ``field: bounds`` of ``table`` on ``cfg``'s values."""
    for name, bounds in table.items():
        check_range(name, getattr(cfg, name), **bounds)


def read_json_object(path: str | os.PathLike, fix: str) -> dict:
    """A JSON file of settings (config.json, tokenizer_config.json, ...): its object, or a
    ValueError naming the file when it is not valid JSON (or UTF-8) or holds something else (a
    list, a number); ``fix`` ends the message (what to do about it)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{os.fspath(path)} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)} holds a JSON {type(data).__name__}, not an object of settings; {fix}")
    return data


def _describe(ge, gt, le, lt) -> str:
    """The bounds in words: ``>= 1``, ``> 0``, ``in [0, 1)``."""
    low, high = (ge, "[") if ge is not None else (gt, "("), (le, "]") if le is not None else (lt, ")")
    if low[0] is not None and high[0] is not None:
        return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low[0] is not None:
        return f"{'>=' if ge is not None else '>'} {low[0]}"
    if high[0] is not None:
        return f"{'<=' if le is not None else '<'} {high[0]}"
    return "a finite number"


class StrictConfig(BaseModel):
    """A pydantic model that forbids unknown fields and serialises to plain dicts and JSON.

    ``RANGES`` maps a numeric field to the bounds ``check_range`` takes (``{"lr": {"gt": 0}}``);
    they are checked before the subclass's own validation, so that can rely on them."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)
    RANGES: ClassVar[dict[str, dict]] = {}

    def __init__(self, *args: Any, **fields: Any):
        if args:
            name = type(self).__name__
            example = ", ".join(f"{k}=..." for k in list(type(self).model_fields)[:2])
            hint = " (an example's `...` stands for your own fields)" if any(a is Ellipsis for a in args) else ""
            raise TypeError(f"{name} takes keyword arguments only, e.g. {name}({example}); "
                            f"got {len(args)} positional argument(s){hint}")
        super().__init__(**fields)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                parts = ", ".join(f"{k!r}{suggest(k, cls.model_fields)}" for k in unknown)
                raise ValueError(f"{cls.__name__} got unknown field(s): {parts}")
        return data

    @model_validator(mode="after")
    def _check_ranges(self):
        check_ranges(self, self.RANGES)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (derived values filled in)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**d)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike):
        """From a JSON string or the path of a JSON file."""
        s = text_or_path.lstrip() if isinstance(text_or_path, str) else ""
        if not s.startswith("{"):
            with open(os.fspath(text_or_path), encoding="utf-8") as f:
                s = f.read()
        return cls.from_dict(json.loads(s))
