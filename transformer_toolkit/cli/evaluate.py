"""``ttk eval``: bits per byte on files and task scores, for one model or several side by side.

The work is ``transformer_toolkit.evaluation``'s; this module turns options into calls, prints
the numbers and says where the results files went (on stderr, so stdout is only numbers).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path


def _tasks(raw: list[str]) -> list[str]:
    return [t for item in raw for t in item.split(",") if t.strip()]


def _load(kind: str, path: str):
    """``(model, tokenizer, template)`` of ``--run`` / ``--model`` ``path``, through cli.source, so
    each flag refuses the other's kind as every command does."""
    from argparse import Namespace

    from ..evaluation.source import template_of
    from .source import load_source

    loaded = load_source(Namespace(run=path) if kind == "run" else Namespace(model=path))
    return loaded.model.eval(), loaded.tokenizer, template_of(loaded)


def _evaluate_one(args, kind: str, path: str) -> tuple[dict | None, dict]:
    """``(bits-per-byte figures or None, results dict)`` of one model."""
    from ..evaluation import bits_per_byte, bpb_results, evaluate_tasks
    from ..evaluation.source import heldout_ids

    model, tok, template = _load(kind, path)
    figures, results = None, {"results": {}}
    if args.data:
        figures = bits_per_byte(model, tok, files=args.data, max_len=args.seq_len, max_tokens=args.max_tokens)
        results = bpb_results(figures, path)
    tasks = _tasks(args.tasks)
    if tasks:
        scored = evaluate_tasks(model, tok, tasks, template=template, heldout=heldout_ids(path),
                                include_path=args.include_path, limit=args.limit, num_fewshot=args.num_fewshot,
                                batch_size=args.batch_size, apply_chat_template=args.apply_chat_template,
                                log_samples=args.log_samples)
        scored["results"] = {**results["results"], **scored["results"]}
        results = {**results, **scored}
    results.setdefault("config", {})["model"] = path
    return figures, results


def _save(results: dict, kind: str, path: str, out: str | None, several: bool) -> None:
    from ..evaluation import write_results
    from ..evaluation.source import run_folder

    folder = Path(out) / Path(path).name if out and several else Path(out) if out else None
    if folder is None and kind == "run":
        folder = run_folder(path) / "eval"
    if folder is None:
        print(f"eval: {path}: no run folder to keep the results in; add --out DIR to write them", file=sys.stderr)
        return
    json_path, md_path = write_results(results, folder)
    print(f"eval: results of {path} -> {json_path}, {md_path}", file=sys.stderr)


def _bpb_table(figures: dict[str, dict], key: str) -> str:
    from ..evaluation.results import fmt_number

    labels = list(figures)
    domains = list(next(iter(figures.values())))
    lines = ["| data | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for d in domains:
        lines.append(f"| {d} | " + " | ".join(fmt_number(figures[lab][d][key]) for lab in labels) + " |")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    """Score each --run / --model on --data files and --tasks; print one line for one model and
    one file (as before), else tables with one column per model."""
    if not args.sources:
        raise ValueError("give the model to evaluate: --run RUN (repeat to compare) or --model PATH")
    if not args.data and not _tasks(args.tasks):
        raise ValueError("nothing to evaluate: give --data FILE... (bits per byte) and/or --tasks NAME... "
                         "(built-in: synthetic, bpb; or lm-eval tasks)")
    for f in args.data:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--data {f!r} does not exist")
    if args.seq_len is not None and args.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1 (tokens per window), got {args.seq_len}")
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    several = len(args.sources) > 1
    figures, results = {}, {}
    for kind, path in args.sources:
        figures[path], results[path] = _evaluate_one(args, kind, path)
        _save(results[path], kind, path, args.out, several)
        gc.collect()  # one model in memory at a time
    if args.data and not several and len(args.data) == 1:
        f = next(iter(figures.values()))["all"]
        print(f"eval: {f['tokens']:,} tokens, {f['bytes']:,} bytes, loss {f['loss']:.4f}, "
              f"bits per byte {f['bits_per_byte']:.4f}, perplexity {f['perplexity']:.2f}")
    elif args.data:
        print("bits per byte (lower is better; comparable across tokenizers)")
        print(_bpb_table(figures, "bits_per_byte"))
        print("\nperplexity per token (each model's own tokenizer)")
        print(_bpb_table(figures, "perplexity"))
    if _tasks(args.tasks):
        from ..evaluation.results import markdown_table, side_by_side

        tasks_only = {p: {"results": {k: v for k, v in r["results"].items() if k not in (figures[p] or {})}}
                      for p, r in results.items()}
        if args.data:
            print()
        print(side_by_side(tasks_only) if several else markdown_table(next(iter(tasks_only.values()))))
    return 0
