"""``python -m transformer_toolkit.evaluation ARGS``: lm-eval's own command line, with the ``ttk``
model registered, e.g.

    python -m transformer_toolkit.evaluation --model ttk --model_args run=runs/sft \\
        --tasks hellaswag --include_path my_tasks/ --output_path results/

``lm_eval --model ttk`` works as well once the package is installed: lm-eval 0.4.13 discovers no
plugins, so the install adds ``transformer_toolkit_lm_eval.pth``, which registers ``ttk`` when
lm-eval loads its models (see ``transformer_toolkit_lm_eval.py``). This entry point does the same
without that file: for ``python -S``, a copy of the sources on ``PYTHONPATH`` that was never
installed, or ``TTK_LM_EVAL_HOOK=0``. In Python, ``import transformer_toolkit.evaluation.harness``
registers ``ttk`` for ``lm_eval.simple_evaluate``.
"""

from __future__ import annotations


def main() -> None:
    from . import harness  # noqa: F401  (registers "ttk")

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:  # pragma: no cover
        raise SystemExit('lm-evaluation-harness is not installed: pip install -e ".[eval]"') from e
    cli_evaluate()


if __name__ == "__main__":
    main()
