"""Fair architecture comparisons (``ttk compare``): which variant is better here?

Every variant trains on the same tokenised data, in the same order, from the same seeds, under
one budget (tokens, FLOPs counted as the Trainer's MFU counts them, or wall time), each as an
ordinary run folder; the report gives each variant's size, speed, memory, cache and losses with
their spread over seeds, plots the validation curves and, over three sizes or more, fits a
scaling law L(C) = a * C^-b + c.

- plan.py: variants (a list, a grid, sizes), the budget and its steps, the field check;
- run.py: one variant at one seed, trained (or resumed, or reused) and measured (measure.py);
- schedule.py: the jobs one after another, in worker processes, or across torchrun ranks;
- summary.py, fit.py: means, spreads, the words about them, the scaling fits;
- report.py, plots.py, html.py: report.md, report.html, results.json and the PNG plots.
"""

from __future__ import annotations

from .fit import fit_power_law, power_law
from .plan import Budget, CompareConfig, Variant, budget_steps, check_fields, expand, parse_budget
from .report import write_report
from .run import Job, Shared, run_job

__all__ = ["Budget", "CompareConfig", "Job", "Shared", "Variant", "budget_steps", "check_fields", "expand",
           "fit_power_law", "parse_budget", "power_law", "run_job", "write_report"]
