"""StrictConfig: the base of every config in the project (model, data, training, SFT).

Unknown fields are rejected with the closest valid name suggested, so a typo such as
``save_every_n`` fails loudly instead of being ignored. Configs round-trip through plain dicts
(safe for JSON, YAML and ``torch.load(weights_only=True)``) and JSON.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

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


class StrictConfig(BaseModel):
    """A pydantic model that forbids unknown fields and serialises to plain dicts and JSON."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

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
