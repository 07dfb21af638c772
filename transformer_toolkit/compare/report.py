"""The report folder of a compare: ``report.md``, a self-contained ``report.html`` (the plots
embedded as base64 PNG, no other file needed), ``results.json`` and the PNG plots.

The tables are built once as lists of cells and rendered to markdown and to HTML, so the two
files always hold the same numbers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..atomic import atomic_write_text
from . import html, plots
from .summary import RULE, fmt_stat, scaling, spread_words, summarise

PLOTS = {"loss_vs_tokens.png": "tokens", "loss_vs_flops.png": "flops", "loss_vs_time.png": "elapsed"}
ALT = {"tokens": "tokens", "flops": "FLOPs", "elapsed": "wall time"}
HEADER = ["Variant", "Params (active)", "Tokens/s", "MFU", "Peak memory", "KV cache / token", "Decode tok/s (batch 1)",
          "Val loss", "Bits/byte"]


def fmt_count(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def fmt_bytes(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def _mean(row: dict, key: str) -> float | None:
    return row[key]["mean"] if row.get(key) else None


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the main table; a variant that failed on every seed shows its error."""
    tasks = sorted({k for r in rows for k in r["tasks"]})
    header = HEADER + tasks
    cells = []
    for r in rows:
        name = r["variant"]
        if r["failed"]:
            errors = {}
            for f in r["failed"]:
                errors.setdefault(f["error"], []).append(str(f["seed"]))
            said = "; ".join(f"{e} (seed {', '.join(seeds)})" for e, seeds in errors.items())
            name += f": failed: {said}"
        if not r["seeds"]:
            cells.append([name] + ["-"] * (len(header) - 1))
            continue
        total, active = _mean(r, "params"), _mean(r, "active_params")
        params = fmt_count(total) + (f" ({fmt_count(active)})" if active is not None and active != total else "")
        mfu = _mean(r, "mfu")
        cells.append([name, params, fmt_count(_mean(r, "tok_s")), "-" if mfu is None else f"{100 * mfu:.1f}%",
                      fmt_bytes(_mean(r, "peak_memory")), fmt_bytes(_mean(r, "kv_bytes_per_token")),
                      fmt_count(_mean(r, "decode_tok_s")), fmt_stat(r["val_loss"]), fmt_stat(r["bits_per_byte"])]
                     + [fmt_stat(r["tasks"].get(t)) for t in tasks])
    return header, cells


def scaling_table(fits: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    header = ["Family", "a", "b", "c", "RMSE", "Points", "Fitted on"]
    cells = []
    for family, e in fits.items():
        f = e.get("fit")
        if f:
            cells.append([family, f"{f['a']:.4g}", f"{f['b']:.4f}", f"{f['c']:.4f}", f"{f['rmse']:.4f}",
                          str(f["points"]), e["basis"]])
        else:
            cells.append([family, "-", "-", "-", "-", str(len(e["points"])),
                          e.get("error", "fewer than 3 sizes finished")])
    return header, cells


def runs_table(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    cells = [[r["variant"], str(r["seed"]), r["status"] + (" (reused)" if r.get("skipped") else ""), r["folder"]]
             for r in results]
    return ["Variant", "Seed", "Status", "Run folder"], cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    def line(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(c) for c in cells])


NOTES = ("Val loss: the Trainer's last validation loss (the same held-out batches for every variant). Bits/byte: "
         "evaluation.bits_per_byte on the first {bpb_tokens:,} held-out tokens of the shared split. Tokens/s: "
         "training steps only, median of the logged windows. MFU: against the bf16 peak of a known GPU, or on a "
         "CPU against its measured matmul peak (the best torch.mm) in the training dtype. Peak memory: {memory} "
         "while training. KV cache / token: the decode cache at batch 1 in the model's dtype (fp32). Decode tok/s: "
         "greedy batch-1 generation of {decode_tokens} tokens, prefill left out, best of three.")


def build(meta: dict, variants, results: list[dict]) -> dict:
    """Everything the report says, as one JSON-ready dict (``results.json``)."""
    rows = summarise(variants, results)
    kinds = sorted({r.get("peak_memory_kind") for r in results if r.get("peak_memory_kind")})
    return {**meta, "rule": RULE, "variants": rows, "runs": results, "scaling": scaling(rows),
            "spread": {"val_loss": spread_words(rows, "val_loss", "final validation loss"),
                       "bits_per_byte": spread_words(rows, "bits_per_byte", "bits per byte")},
            "notes": NOTES.format(bpb_tokens=meta["bpb_tokens"], decode_tokens=meta["decode_tokens"],
                                  memory=" / ".join(kinds) or "-")}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def render_markdown(report: dict, images: dict[str, bytes]) -> str:
    parts = [f"# Architecture comparison: {report['name']}", "", report["summary"], "",
             markdown(*table(report["variants"])), "", report["notes"], "",
             "## Which differences exceed the seed-to-seed spread", "", report["rule"], ""]
    for key, label in (("val_loss", "Final validation loss"), ("bits_per_byte", "Bits per byte")):
        parts += [f"{label}:", ""] + [f"- {s}" for s in report["spread"][key]] + [""]
    parts += ["## Validation loss", ""]
    parts += [f"![validation loss against {ALT[x]}]({name})" for name, x in PLOTS.items() if name in images] + [""]
    if report["scaling"]:
        parts += ["## Scaling", "", markdown(*scaling_table(report["scaling"])), ""]
        if "scaling.png" in images:
            parts += ["![loss against compute](scaling.png)", ""]
    parts += ["## Runs", "", "Each is an ordinary run folder: `ttk generate --run FOLDER`, `ttk eval --run FOLDER` "
              "and `ttk export --run FOLDER` work on it.", "", markdown(*runs_table(report["runs"])), ""]
    return "\n".join(parts)


def write_report(folder: str | os.PathLike, meta: dict, variants, results: list[dict]) -> dict:
    """Write report.md, report.html, results.json and the plots into ``folder``; returns the
    report dict (what results.json holds)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = build(meta, variants, results)
    images = {name: plots.curves(report["variants"], x) for name, x in PLOTS.items()}
    images["scaling.png"] = plots.scaling(report["scaling"]) if report["scaling"] else None
    images = {k: v for k, v in images.items() if v is not None}
    for name, png in images.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(png)
        os.replace(tmp, folder / name)
    atomic_write_text(folder / "results.json", json.dumps(_json_safe(report), indent=1) + "\n")
    atomic_write_text(folder / "report.md", render_markdown(report, images))
    atomic_write_text(folder / "report.html", html.page(report, images, {
        "main": table(report["variants"]), "scaling": scaling_table(report["scaling"]),
        "runs": runs_table(report["runs"])}))
    return report
