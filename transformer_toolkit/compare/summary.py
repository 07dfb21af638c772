"""From run results to per-variant figures: means and spreads over seeds, curves with bands,
the words about which differences exceed the seed-to-seed spread, and the scaling fits.

The rule for "a real difference" is stated in the report (``RULE``): two variants differ beyond
the seed-to-seed spread when their means differ by more than twice the pooled standard
deviation of the seeds, ``sqrt((s1^2 + s2^2) / 2)``. With one seed there is no spread to compare
with, and the report says so instead of guessing.
"""

from __future__ import annotations

import math
import statistics

from .fit import fit_power_law
from .plan import Variant

RULE = ("A difference counts as beyond the seed-to-seed spread when the two means differ by more than twice the "
        "pooled standard deviation over seeds, sqrt((s1^2 + s2^2) / 2); otherwise the seeds alone could explain it.")
FIGURES = ("params", "active_params", "tok_s", "mfu", "peak_memory", "kv_bytes_per_token", "decode_tok_s", "val_loss",
           "bits_per_byte", "steps", "tokens", "flops", "elapsed")


def stats(values: list[float]) -> dict | None:
    """``{"mean", "std", "min", "max", "n"}``; std is None for one value (no spread known)."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def _band(runs: list[dict]) -> list[dict]:
    """The seeds' curves point by point (same steps in every seed: same config and budget; under
    a time budget the steps differ, so only the points every seed reached are kept)."""
    by_step: dict[int, list[dict]] = {}
    for r in runs:
        for p in r.get("curve") or []:
            by_step.setdefault(p["step"], []).append(p)
    out = []
    for step in sorted(by_step):
        points = by_step[step]
        if len(points) < len(runs):
            continue
        losses = [p["val_loss"] for p in points]
        times = [p["elapsed"] for p in points if p.get("elapsed") is not None]
        out.append({"step": step, "tokens": points[0]["tokens"], "flops": points[0]["flops"],
                    "elapsed": statistics.fmean(times) if times else None, "mean": statistics.fmean(losses),
                    "min": min(losses), "max": max(losses)})
    return out


def summarise(variants: list[Variant], results: list[dict]) -> list[dict]:
    """One row per variant, in plan order: its figures over the seeds that finished, and the
    errors of those that failed."""
    rows = []
    for v in variants:
        runs = [r for r in results if r["variant"] == v.name]
        done = [r for r in runs if r["status"] == "done"]
        row = {"variant": v.name, "family": v.family, "size": v.size, "seeds": [r["seed"] for r in done],
               "failed": [{"seed": r["seed"], "error": r.get("error")} for r in runs if r["status"] == "failed"],
               "folders": [r["folder"] for r in runs]}
        for key in FIGURES:
            row[key] = stats([r.get(key) for r in done])
        task_names = sorted({k for r in done for k in (r.get("tasks") or {})})
        row["tasks"] = {k: stats([(r.get("tasks") or {}).get(k) for r in done]) for k in task_names}
        row["curve"] = _band(done)
        rows.append(row)
    return rows


def differs(a: dict, b: dict) -> tuple[bool | None, float | None]:
    """``(beyond the spread?, twice the pooled std)`` of two figures' stats; None when a seed
    spread is unknown (one seed on either side)."""
    if a["std"] is None or b["std"] is None:
        return None, None
    threshold = 2 * math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    return abs(a["mean"] - b["mean"]) > threshold, threshold


def fmt_stat(s: dict | None, digits: int = 4) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def spread_words(rows: list[dict], key: str, label: str) -> list[str]:
    """Sentences comparing each variant's ``key`` with the best one (lower is better)."""
    scored = [r for r in rows if r.get(key)]
    if len(scored) < 2:
        return [f"{label}: fewer than two variants finished, nothing to compare."]
    best = min(scored, key=lambda r: r[key]["mean"])
    out = [f"Best {label}: {best['variant']} ({fmt_stat(best[key])})."]
    if all(r[key]["n"] < 2 for r in scored):
        return out + [f"With 1 seed per variant the seed-to-seed spread of the {label} is unknown, so no difference "
                      "can be told apart from seed noise; run with --seeds 3 or more to know."]
    for r in scored:
        if r is best:
            continue
        delta = r[key]["mean"] - best[key]["mean"]
        beyond, threshold = differs(r[key], best[key])
        if beyond is None:
            verdict = "spread unknown (one of the two has a single seed)"
        elif beyond:
            verdict = f"exceeds the seed spread (2 x pooled std = {threshold:.4f}): a real difference"
        else:
            verdict = f"within the seed spread (2 x pooled std = {threshold:.4f}): not distinguishable"
        out.append(f"{r['variant']} ({fmt_stat(r[key])}): +{delta:.4f} vs {best['variant']}, {verdict}.")
    return out


def _frontier(members: list[dict]) -> list[tuple[float, float]]:
    """The lowest loss reached at each compute over every size's curve (the compute-efficient
    frontier): the points of the seed-mean curves that beat all points at lower compute."""
    points = sorted((p["flops"], p["mean"]) for m in members for p in m["curve"] if p["flops"] > 0)
    out, best = [], math.inf
    for c, loss in points:
        if loss < best:
            out.append((c, loss))
            best = loss
    return out


def scaling(rows: list[dict]) -> dict[str, dict]:
    """Per family with 3 or more sizes that finished: the points (compute, loss) and the fit
    ``L(C) = a * C^-b + c`` (or the reason there is none). The points are the final losses at
    each size's compute; under a FLOPs budget every size has the same compute, so the fit goes
    through the lower envelope of the sizes' validation curves instead."""
    families: dict[str, list[dict]] = {}
    for r in rows:
        if r["size"] and r.get("val_loss") and r.get("flops"):
            families.setdefault(r["family"], []).append(r)
    out = {}
    for family, members in families.items():
        finals = sorted((m["flops"]["mean"], m["val_loss"]["mean"], m["params"]["mean"], m["variant"])
                        for m in members)
        entry = {"points": [{"flops": c, "val_loss": loss, "params": n, "variant": name}
                            for c, loss, n, name in finals]}
        if len(finals) >= 3:
            fit_on, entry["basis"] = [(c, loss) for c, loss, *_ in finals], "final losses"
            if len({round(math.log(c), 6) for c, _ in fit_on}) < 3:
                fit_on, entry["basis"] = _frontier(members), "lower envelope of the validation curves"
            entry["fit_points"] = [{"flops": c, "val_loss": loss} for c, loss in fit_on]
            try:
                entry["fit"] = fit_power_law([c for c, _ in fit_on], [loss for _, loss in fit_on])
            except ValueError as e:
                entry["error"] = str(e)
        out[family] = entry
    return out
