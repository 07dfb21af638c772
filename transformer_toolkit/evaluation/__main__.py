"""``python -m transformer_toolkit.evaluation ARGS``: lm-eval's own command line, with the ``ttk``
model registered, e.g.

    python -m transformer_toolkit.evaluation --model ttk --model_args run=runs/sft \\
        --tasks hellaswag --include_path my_tasks/ --output_path results/

Why not plain ``lm_eval --model ttk``: lm-eval 0.4.13 finds models only in its own registry, which
its command line fills before any outside code runs (no entry-point plugins; the only hooks a
package could use are a ``.pth`` file or ``sitecustomize``, which run code in every Python
process). This entry point is that command line, one import later. In Python,
``import transformer_toolkit.evaluation.harness`` registers ``ttk`` for ``lm_eval.simple_evaluate``.
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
