"""GRPO rollout tokens/s: our group sampling vs G sequential ``generate`` calls vs TRL's generation.

Run (from the repository root)::

    python bench/bench_grpo.py            # ~5 min on 2 cores
    python bench/bench_grpo.py --quick    # a tiny model: a smoke run of well under a minute

One rollout batch is what a GRPO step samples: ``--prompts`` prompts (the chat-rendered
built-in tasks, of different lengths) x ``--group`` completions of up to ``--new`` tokens,
sampled at temperature 1 and stopped at the end-of-turn token. The model is a Llama-shaped one
(GQA, SwiGLU, RMSNorm, rope; random weights) with a BPE tokenizer trained on the prompts, the
same weights on every side:

- ``ours``: ``inference.sample_groups``: every prompt prefilled once, its cache copied to its
  G rows, all P x G rows decoded together (what ``GRPOTrainer`` runs);
- ``sequential``: for each prompt, G calls of ``model.generate`` (batch 1, G prefills);
- ``repeated``: for each prompt, one ``generate`` call on the prompt repeated G times;
- ``trl``: TRL's ``GRPOTrainer._generate_single_turn`` without vLLM (transformers' ``generate``
  on the P x G left-padded prompts) on our model exported with ``save_pretrained``.

tokens/s counts the completion tokens each side really sampled (up to and with the stop token)
over the wall time of one rollout; the median of alternating rounds is reported.
Writes bench/results/grpo_latest.json (grpo_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import report_header  # noqa: E402

from transformer_toolkit.grpo.synthetic import synthetic_prompts  # noqa: E402
from transformer_toolkit.inference import SamplingParams, generate  # noqa: E402
from transformer_toolkit.inference.groups import sample_groups  # noqa: E402
from transformer_toolkit.model import Transformer, TransformerConfig  # noqa: E402
from transformer_toolkit.sft.chat import chat_stop_ids, encode_chat  # noqa: E402
from transformer_toolkit.tokenizer import RustBPETokenizer  # noqa: E402
from transformer_toolkit.tokenizer.templates import ChatTemplate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=3, hidden_dim=1536, max_seq=256)
QUICK_SHAPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq=128)


def setup(shape: dict, n_prompts: int):
    """``(model, tokenizer, prompt id lists, stop ids)``."""
    template = ChatTemplate("chatml")
    rows = synthetic_prompts(max(200, n_prompts), seed=0, tasks=("add3", "reverse_long"))
    texts = [template.format_messages(r["prompt"] + [{"role": "assistant", "content": r["answer"]}])[0]
             for r in rows]
    tok = RustBPETokenizer().train(texts, vocab_size=400)
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=tok.vocab_size, **shape, attn="gqa", ffn="swiglu", norm="rmsnorm",
                            pos_enc="rope", bias=False, tie_weights=False, dropout=0.0)
    model = Transformer(cfg).eval()
    prompts = [encode_chat(template, tok, r["prompt"]) for r in rows[:n_prompts]]
    return model, tok, prompts, chat_stop_ids(template, tok)


def count(completions: torch.Tensor, stops: list[int]) -> int:
    """Completion tokens up to and with the first stop token, summed over rows."""
    n = 0
    for row in completions.tolist():
        hit = next((i for i, t in enumerate(row) if t in stops), None)
        n += len(row) if hit is None else hit + 1
    return n


def ours(model, prompts, G, new, stops):
    out = sample_groups(model, [torch.tensor(p) for p in prompts], G, new, SamplingParams(1.0), stops)
    return int(out.lengths.sum())


def sequential(model, prompts, G, new, stops):
    n = 0
    for p in prompts:
        for _ in range(G):
            out = generate(model, torch.tensor(p), max_new=new, temperature=1.0, stop_ids=stops)
            n += count(out[len(p):][None], stops)
    return n


def repeated(model, prompts, G, new, stops):
    n = 0
    for p in prompts:
        out = generate(model, torch.tensor(p).expand(G, -1), max_new=new, temperature=1.0, stop_ids=stops)
        n += count(out[:, len(p):], stops)
    return n


def trl_side(model, tok, prompts, G, new, folder: str):
    """A TRL GRPOTrainer on our export; returns its rollout function."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model.save_pretrained(folder, tokenizer=tok, template="chatml")
    args = GRPOConfig(output_dir=os.path.join(folder, "trl"), num_generations=G, max_completion_length=new,
                      per_device_train_batch_size=G * len(prompts), temperature=1.0, top_p=1.0, top_k=0,
                      use_cpu=True, report_to=[], bf16=False, logging_steps=1000, save_strategy="no")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=hf, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                              train_dataset=Dataset.from_list([{"prompt": "x"}] * 8), processing_class=hf_tok)
    repeated_ids = [p for p in prompts for _ in range(G)]
    eos = set(trainer.generation_config.eos_token_id if isinstance(trainer.generation_config.eos_token_id, list)
              else [trainer.generation_config.eos_token_id])

    def run(*_):
        completion_ids, _ = trainer._generate_single_turn(repeated_ids, None, {}, G)
        return sum(len(c) for c in completion_ids)  # TRL cuts each completion after its EOS
    return run, sorted(t for t in eos if t is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=None, help="max completion tokens (default 64; 16 with --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny model: a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = QUICK_SHAPE if args.quick else SHAPE
    new, rounds = args.new or (16 if args.quick else 64), args.rounds or (1 if args.quick else 3)
    model, tok, prompts, stops = setup(shape, args.prompts)
    G = args.group
    sides = {"ours": ours, "sequential": sequential, "repeated": repeated}
    report = report_header("bench_grpo.py", {"shape": shape, "prompts": args.prompts, "group": G, "new": new,
                                             "rounds": rounds, "prompt_lengths": [len(p) for p in prompts]})
    with tempfile.TemporaryDirectory() as folder:
        if not args.no_trl:
            run, trl_stops = trl_side(model, tok, prompts, G, new, folder)
            sides["trl"] = run
            report["settings"]["trl_stop_ids"] = trl_stops
        print(f"rollout: {args.prompts} prompts x {G} completions of <= {new} tokens; shape {shape}; "
              f"{torch.get_num_threads()} threads; median of {rounds} rounds")
        rates = {k: [] for k in sides}
        names = list(sides)
        for r in range(rounds + 1):  # round 0 warms up
            for name in names if r % 2 == 0 else names[::-1]:
                torch.manual_seed(r)
                t = time.perf_counter()
                with torch.no_grad():
                    n = sides[name](model, prompts, G, new, stops)
                dt = time.perf_counter() - t
                if r:
                    rates[name].append({"tokens": n, "seconds": dt, "tok_s": n / dt})
    med = {k: statistics.median(x["tok_s"] for x in v) for k, v in rates.items()}
    print(f"{'side':<12}{'tok/s':>10}{'vs ours':>10}")
    for k in names:
        print(f"{k:<12}{med[k]:>10.0f}{med[k] / med['ours']:>10.2f}")
    report["results"] = {k: {"rounds": rates[k], "median_tok_s": med[k], "ours_speedup": med["ours"] / med[k]}
                         for k in names}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("grpo_quick.json" if args.quick else "grpo_latest.json")
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
