"""The report's plots as PNG bytes: validation loss against tokens, FLOPs and wall time (a line
per variant, the band over its seeds from the lowest to the highest loss), and the scaling fits.

matplotlib's object API (``Figure``), not pyplot: no window and no change to the user's backend.
"""

from __future__ import annotations

import io

import numpy as np

from .fit import power_law

AXES = {"tokens": "training tokens", "flops": "training FLOPs (active parameters)", "elapsed": "wall time (s)"}


def _figure(width: float = 7.5, height: float = 4.5):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("the compare report's plots need matplotlib: pip install -e '.[viz]'") from e
    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves(rows: list[dict], x: str) -> bytes | None:
    """Validation loss against ``x`` ("tokens", "flops" or "elapsed"); None when no variant has
    a curve to draw."""
    drawn = [r for r in rows if len([p for p in r["curve"] if p.get(x) is not None]) > 0]
    if not drawn:
        return None
    fig, ax = _figure()
    for r in drawn:
        pts = [p for p in r["curve"] if p.get(x) is not None]
        xs = np.array([p[x] for p in pts], dtype=float)
        (line,) = ax.plot(xs, [p["mean"] for p in pts], marker="o", markersize=3, linewidth=1.5,
                          label=f"{r['variant']} ({len(r['seeds'])} seed{'s' if len(r['seeds']) != 1 else ''})")
        if len(r["seeds"]) > 1:
            ax.fill_between(xs, [p["min"] for p in pts], [p["max"] for p in pts], color=line.get_color(), alpha=0.2,
                            linewidth=0)
    ax.set_xlabel(AXES[x])
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Validation loss against {AXES[x].split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def scaling(fits: dict[str, dict]) -> bytes | None:
    """Final loss against compute per family (log x), with each fitted L(C) = a * C^-b + c."""
    if not any(len(e["points"]) >= 3 for e in fits.values()):
        return None
    fig, ax = _figure()
    for family, entry in fits.items():
        pts = entry.get("fit_points") or entry["points"]
        cs = np.array([p["flops"] for p in pts], dtype=float)
        (dots,) = ax.plot(cs, [p["val_loss"] for p in pts], "o", label=family)
        fit = entry.get("fit")
        if fit:
            grid = np.geomspace(cs.min(), cs.max(), 100)
            ax.plot(grid, power_law(grid, fit["a"], fit["b"], fit["c"]), "-", color=dots.get_color(),
                    label=f"{family}: {fit['a']:.3g} C^-{fit['b']:.3f} + {fit['c']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel(AXES["flops"])
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Scaling: loss against compute, L(C) = a * C^-b + c")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _png(fig)
