"""A scaling law per variant: L(C) = a * C^-b + c, loss against training compute.

Fitted by least squares on the losses themselves. For a fixed exponent ``b`` the model is linear
in ``a`` and ``c`` (``L = a * x + c`` with ``x = C^-b``), so each ``b`` has a closed-form best
``(a, c)``; the fit searches ``b`` on a grid and refines it by golden-section search (variable
projection: no starting guess for ``a`` or ``c``, no scipy). ``c`` is the irreducible loss, kept
``>= 0``; compute is scaled by its geometric mean first so that ``C^-b`` stays in range.

>>> fit = fit_power_law([1e12, 1e13, 1e14, 1e15], [3.2, 2.6, 2.25, 2.05])   # doctest: +SKIP
>>> fit["a"], fit["b"], fit["c"]                                           # doctest: +SKIP
"""

from __future__ import annotations

import math

import numpy as np

B_RANGE = (1e-3, 2.0)  # exponents searched; measured LM scaling exponents are ~0.05-0.5


def _linear(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(a, c, sse)`` of the least-squares ``y = a * x + c`` with ``c >= 0`` (else ``c = 0``)."""
    A = np.stack([x, np.ones_like(x)], axis=1)
    (a, c), *_ = np.linalg.lstsq(A, y, rcond=None)
    if c < 0:
        a, c = float(x @ y / (x @ x)), 0.0
    sse = float(((a * x + c - y) ** 2).sum())
    return float(a), float(c), sse


def fit_power_law(compute, loss) -> dict:
    """``{"a", "b", "c", "rmse", "points"}`` of ``loss ~ a * compute^-b + c``. Needs at least 3
    points with distinct compute; raises ValueError when the losses do not fall with compute."""
    C, L = np.asarray(compute, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    keep = np.isfinite(C) & np.isfinite(L) & (C > 0)
    C, L = C[keep], L[keep]
    if len(np.unique(C)) < 3:
        raise ValueError(f"a power law L = a * C^-b + c needs losses at 3 or more compute budgets, got {len(C)}")
    scale = math.exp(float(np.log(C).mean()))
    x0 = C / scale

    def sse(b: float) -> float:
        a, _, err = _linear(x0 ** -b, L)
        return err if a > 0 else math.inf  # a <= 0: loss rising with compute, not this law

    grid = np.geomspace(*B_RANGE, 400)
    errors = np.array([sse(b) for b in grid])
    if not np.isfinite(errors).any():
        raise ValueError("the losses do not fall with compute, so no power law L = a * C^-b + c fits them")
    i = int(np.argmin(errors))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden-section search of b between the grid neighbours
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if sse(m1) <= sse(m2):
            hi = m2
        else:
            lo = m1
    b = (lo + hi) / 2
    a0, c, err = _linear(x0 ** -b, L)
    return {"a": float(a0 * scale ** b), "b": float(b), "c": c, "rmse": math.sqrt(err / len(L)), "points": int(len(L))}


def power_law(compute, a: float, b: float, c: float) -> np.ndarray:
    """``a * C^-b + c``, computed in logs so that large ``C`` and ``a`` do not overflow."""
    C = np.asarray(compute, dtype=np.float64)
    return np.exp(math.log(a) - b * np.log(C)) + c
