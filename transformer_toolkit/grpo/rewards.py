"""Reward functions with TRL's signature: ``fn(prompts, completions, **columns) -> list[float]``.

``prompts`` and ``completions`` are lists of strings (one entry per completion: a prompt
repeats for each of its group's completions); ``columns`` holds the dataset's other columns,
each a list aligned with them (e.g. ``answer``). A function returns one float per completion
(``None`` counts as 0). For conversational prompts (message lists) a completion is, as in TRL,
``[{"role": "assistant", "content": text}]``; the built-ins read either form. Built-in ones, by
name in ``GRPOConfig(rewards=[...])``:

- ``exact_match``: 1.0 when the completion, stripped, equals the ``answer`` column;
- ``regex_match``: 1.0 when the completion matches the ``pattern`` column (``re.fullmatch``
  on the stripped text), or, without that column, when it contains the ``answer`` column as a
  whole word;
- ``numeric_answer``: 1.0 when the last number in the completion equals the ``answer``
  column's number (``"1,234"``, ``"1234.0"`` and ``"1234"`` are the same answer);
- ``char_match``: partial credit, the share of characters right position by position (the
  stripped completion against the stripped ``answer``, over the longer of the two): 1.0 only
  for an exact match, 0.75 for ``1137`` against ``1127``. When full matches are rare, every
  completion of a group scoring 0 gives no advantage; graded scores still rank them.

>>> exact_match(["add: 2 + 2"], [" 4"], answer=["4"])
[1.0]
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable

RewardFn = Callable[..., list]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def text_of(completion) -> str:
    """A completion's text: the string itself, or the content of its last message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion is a string or a list of messages, got {type(completion).__name__}")


def exact_match(prompts: list, completions: list, answer: list, **_) -> list[float]:
    return [float(text_of(c).strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def regex_match(prompts: list, completions: list, pattern: list | None = None, answer: list | None = None,
                **_) -> list[float]:
    texts = [text_of(c) for c in completions]
    if pattern is not None:
        return [float(re.fullmatch(str(p), t.strip(), flags=re.DOTALL) is not None)
                for t, p in zip(texts, pattern, strict=True)]
    if answer is None:
        raise ValueError("regex_match needs a 'pattern' or an 'answer' column")
    return [float(re.search(rf"(?<!\w){re.escape(str(a).strip())}(?!\w)", t) is not None)
            for t, a in zip(texts, answer, strict=True)]


def _number(text: str) -> float | None:
    found = NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_answer(prompts: list, completions: list, answer: list, **_) -> list[float]:
    out = []
    for c, a in zip(completions, answer, strict=True):
        got, want = _number(text_of(c)), _number(a)
        out.append(float(got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9)))
    return out


def char_match(prompts: list, completions: list, answer: list, **_) -> list[float]:
    out = []
    for c, a in zip(completions, answer, strict=True):
        got, want = text_of(c).strip(), str(a).strip()
        longer = max(len(got), len(want))
        out.append(1.0 if longer == 0 else sum(x == y for x, y in zip(got, want, strict=False)) / longer)
    return out


BUILTIN: dict[str, RewardFn] = {"exact_match": exact_match, "regex_match": regex_match,
                                "numeric_answer": numeric_answer, "char_match": char_match}
# the columns each built-in reads (regex_match: either one)
NEEDS = {"exact_match": ("answer",), "regex_match": ("pattern", "answer"), "numeric_answer": ("answer",),
         "char_match": ("answer",)}


def resolve(rewards) -> list[tuple[str, RewardFn]]:
    """``[(name, fn)]`` from names of built-ins and/or callables."""
    out = []
    for r in rewards:
        if callable(r):
            out.append((getattr(r, "__name__", type(r).__name__), r))
        elif r in BUILTIN:
            out.append((r, BUILTIN[r]))
        else:
            raise ValueError(f"unknown reward {r!r}; built-in rewards: {', '.join(BUILTIN)} (or pass a function "
                             "fn(prompts, completions, **columns) -> list[float])")
    if not out:
        raise ValueError("no reward function: give GRPOConfig(rewards=[...]) at least one")
    return out


def required_columns(fn: RewardFn, name: str) -> tuple[tuple[str, ...], bool]:
    """``(columns the function needs, whether any one of them is enough)``: a built-in's
    table entry, or a function's keyword parameters without a default."""
    if fn is BUILTIN.get(name):
        return NEEDS[name], name == "regex_match"
    params = list(inspect.signature(fn).parameters.values())[2:]  # after prompts, completions
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                 and p.default is p.empty), False


def check_columns(rewards: list[tuple[str, RewardFn]], columns: set[str]) -> None:
    """Fail before training when the data lacks a column a reward function needs."""
    for name, fn in rewards:
        need, any_one = required_columns(fn, name)
        missing = [c for c in need if c not in columns]
        if (any_one and len(missing) == len(need)) or (not any_one and missing):
            what = " or ".join(need) if any_one else ", ".join(missing)
            raise ValueError(f"reward {name!r} needs the column {what} but the prompts have only "
                             f"{', '.join(sorted(columns)) or 'none'}; add it to every row (e.g. "
                             f"{{'prompt': ..., '{need[0]}': ...}}) or use another reward")


def score(rewards: list[tuple[str, RewardFn]], weights: list[float], prompts: list, completions: list[str],
          columns: dict[str, list]) -> tuple[list[float], dict[str, list[float]]]:
    """``(weighted total per completion, each function's rewards by name)``; a function that
    raises or returns the wrong number of values fails with its name and what to fix."""
    n = len(completions)
    total, each = [0.0] * n, {}
    for (name, fn), w in zip(rewards, weights, strict=True):
        try:
            values = fn(prompts, completions, **columns)
        except Exception as e:
            raise RuntimeError(f"reward function {name!r} raised {type(e).__name__}: {e}; it is called as "
                               f"{name}(prompts, completions, **columns) with columns "
                               f"{', '.join(sorted(columns)) or '(none)'}; fix the function") from e
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
            raise ValueError(f"reward function {name!r} returned {got} for {n} completions; it must return a list "
                             "with one float per completion (None counts as 0)")
        try:
            values = [0.0 if v is None else float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward function {name!r} returned a value that is not a number ({e}); "
                             "return floats") from None
        each[name] = values
        total = [t + w * v for t, v in zip(total, values, strict=True)]
    return total, each
