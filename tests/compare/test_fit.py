"""The scaling fit L(C) = a * C^-b + c recovers known parameters; the summary's words and the
scaling entries are built from the figures as stated."""

from __future__ import annotations

import numpy as np
import pytest

from transformer_toolkit.compare import fit_power_law, power_law
from transformer_toolkit.compare.summary import scaling, spread_words, stats


@pytest.mark.parametrize(("a", "b", "c"), [(40.0, 0.12, 1.3), (2.5e3, 0.3, 0.0), (8.0, 0.05, 2.2)])
def test_power_law_fit_recovers_known_parameters(a, b, c):
    C = np.geomspace(1e11, 1e15, 7)
    fit = fit_power_law(C, power_law(C, a, b, c))
    assert fit["b"] == pytest.approx(b, rel=1e-4)
    assert fit["c"] == pytest.approx(c, abs=1e-4)
    assert fit["a"] == pytest.approx(a, rel=1e-3)
    assert fit["rmse"] < 1e-6 and fit["points"] == 7


def test_power_law_fit_with_noise_and_with_three_points():
    C = np.geomspace(1e12, 1e16, 8)
    noisy = power_law(C, 40.0, 0.12, 1.3) * (1 + 0.001 * np.random.default_rng(0).standard_normal(8))
    fit = fit_power_law(C, noisy)
    assert fit["b"] == pytest.approx(0.12, rel=0.1) and fit["c"] == pytest.approx(1.3, abs=0.1)
    exact = fit_power_law(C[[0, 3, 7]], power_law(C[[0, 3, 7]], 40.0, 0.12, 1.3))  # 3 points, 3 parameters
    assert exact["b"] == pytest.approx(0.12, rel=1e-3)


def test_no_fit_for_rising_losses_or_too_few_points():
    with pytest.raises(ValueError, match="do not fall with compute"):
        fit_power_law([1e12, 1e13, 1e14], [2.0, 2.5, 3.0])
    with pytest.raises(ValueError, match="3 or more compute budgets"):
        fit_power_law([1e12, 1e13], [3.0, 2.5])


def _row(name, losses, family=None, size=None, flops=1.0):
    return {"variant": name, "family": family or name, "size": size or {}, "val_loss": stats(losses),
            "flops": stats([flops]), "params": stats([1000]), "curve": []}


def test_spread_words_follow_the_stated_rule():
    rows = [_row("a", [2.00, 2.02, 2.01]), _row("b", [2.30, 2.31, 2.29]), _row("c", [2.01, 2.04, 2.00])]
    words = spread_words(rows, "val_loss", "loss")
    assert words[0].startswith("Best loss: a (2.0100 ± 0.0100)")
    assert "b (2.3000 ± 0.0100): +0.2900 vs a, exceeds the seed spread" in words[1]
    assert "c (2.0167 ± 0.0208): +0.0067 vs a, within the seed spread" in words[2]
    one_seed = spread_words([_row("a", [2.0]), _row("b", [2.5])], "val_loss", "loss")
    assert "1 seed per variant" in one_seed[1] and "unknown" in one_seed[1]


def test_scaling_fits_each_family_over_its_sizes():
    C = [1e12, 1e13, 1e14, 1e15]
    rows = [_row(f"x, dim={d}", [float(power_law(c, 40.0, 0.12, 1.3))], family="x", size={"model.dim": d}, flops=c)
            for d, c in zip((16, 32, 64, 128), C, strict=True)]
    rows.append(_row("y, dim=16", [3.0], family="y", size={"model.dim": 16}))
    out = scaling(rows)
    assert out["x"]["fit"]["b"] == pytest.approx(0.12, rel=1e-3) and out["x"]["basis"] == "final losses"
    assert "fit" not in out["y"] and len(out["y"]["points"]) == 1


def test_equal_compute_sizes_fit_the_lower_envelope_of_their_curves():
    """Under a FLOPs budget every size ends at the same compute, so the fit runs through the
    compute-efficient frontier: at each compute, the lowest loss any size had reached."""
    def curve(offset, flops):
        return [{"flops": c, "mean": float(power_law(c, 40.0, 0.12, 1.3)) + offset} for c in flops]

    grid = [1e12, 1e13, 1e14, 1e15]
    rows = []
    for d, offset in ((16, 0.3), (32, 0.0), (64, 0.2)):  # dim 32 is the best at every compute
        row = _row(f"x, dim={d}", [curve(offset, grid)[-1]["mean"]], family="x", size={"model.dim": d}, flops=1e15)
        row["curve"] = curve(offset, grid)
        rows.append(row)
    out = scaling(rows)["x"]
    assert out["basis"] == "lower envelope of the validation curves"
    assert [p["flops"] for p in out["fit_points"]] == grid  # dim 32's curve: the lowest at each compute
    assert out["fit"]["b"] == pytest.approx(0.12, rel=1e-3) and out["fit"]["c"] == pytest.approx(1.3, abs=1e-3)
