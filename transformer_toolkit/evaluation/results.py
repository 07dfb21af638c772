"""Results as files and tables: every evaluation leaves a JSON file (lm-eval's results layout)
and a markdown table, written atomically, so a crash never leaves half a file.

>>> json_path, md_path = write_results(out, "runs/sft/eval")    # doctest: +SKIP
runs/sft/eval/results_2026-11-26T10-31-02.json, runs/sft/eval/results_2026-11-26T10-31-02.md
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

from ..atomic import atomic_write_text

SKIP_KEYS = ("alias", "name", "sample_len", "tokens", "bytes")


def _json_safe(value):
    """numpy numbers and other strays as plain JSON values (NaN/inf as null: strict JSON has none)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    return str(value)


def write_results(results: dict, folder: str | os.PathLike, stem: str | None = None) -> tuple[Path, Path]:
    """``folder/STEM.json`` (the whole results dict) and ``folder/STEM.md`` (its table); the stem
    defaults to ``results_<date>T<time>`` as lm-eval names its files (``-2``, ``-3``... when that
    second is taken). Returns both paths."""
    folder = Path(folder)
    stem = stem or "results_" + time.strftime("%Y-%m-%dT%H-%M-%S")
    if not stem.startswith("tasks_step_"):  # two evaluations in one second keep both files
        base, n = stem, 1
        while (folder / f"{stem}.json").exists():
            n += 1
            stem = f"{base}-{n}"
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(_json_safe(results), indent=2) + "\n")
    atomic_write_text(md_path, markdown_table(results) + "\n")
    return json_path, md_path


def rows(results: dict) -> list[tuple[str, str, float, float | None]]:
    """``(task, metric, value, stderr)`` for every number of a results dict."""
    out = []
    for task, entry in results.get("results", {}).items():
        for key, value in entry.items():
            metric, _, filt = key.partition(",")
            if key in SKIP_KEYS or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) and not hasattr(value, "item"):
                continue
            err = entry.get(f"{metric}_stderr,{filt}") if filt else None
            label = metric if filt in ("", "none") else f"{metric} [{filt}]"
            out.append((task, label, float(value), float(err) if isinstance(err, (int, float)) else None))
    return out


def fmt_number(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"


def markdown_table(results: dict) -> str:
    """| Task | Metric | Value | Stderr | over every number of ``results``."""
    lines = ["| Task | Metric | Value | Stderr |", "|---|---|---|---|"]
    for task, metric, value, err in rows(results):
        lines.append(f"| {task} | {metric} | {fmt_number(value)} | {fmt_number(err)} |")
    return "\n".join(lines)


def side_by_side(results: Mapping[str, dict]) -> str:
    """| Task | Metric | A | B | ...: the same numbers of several models, one column each."""
    labels = list(results)
    table: dict[tuple[str, str], dict[str, float]] = {}
    for label, res in results.items():
        for task, metric, value, _ in rows(res):
            table.setdefault((task, metric), {})[label] = value
    lines = ["| Task | Metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for (task, metric), values in table.items():
        lines.append(f"| {task} | {metric} | " + " | ".join(fmt_number(values.get(lab)) for lab in labels) + " |")
    return "\n".join(lines)


def bpb_results(figures: Mapping[str, dict], source: str) -> dict:
    """Bits-per-byte figures (``bpb.bits_per_byte``) in the results layout: one entry per domain."""
    out = {"results": {}, "higher_is_better": {}, "config": {"model": source}, "date": time.time()}
    for domain, f in figures.items():
        out["results"][domain] = {"alias": domain, "tokens": f["tokens"], "bytes": f["bytes"],
                                  "bits_per_byte,none": f["bits_per_byte"], "perplexity,none": f["perplexity"],
                                  "loss,none": f["loss"]}
        out["higher_is_better"][domain] = {"bits_per_byte": False, "perplexity": False, "loss": False}
    return out
