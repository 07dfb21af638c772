"""A multi-turn chat, ours vs HF transformers' generate: what reusing the KV cache between turns saves.

Run (from the repository root)::

    python bench/bench_chat.py               # SmolLM2-135M's shape, fp32 and bf16: ~8 min on 2 cores
    python bench/bench_chat.py --quick       # a tiny model: a smoke run of a few seconds
    python bench/bench_chat.py --dtypes bf16 --turns 12

A chat renders the whole conversation again every turn, so the prompt of turn k holds the
system prompt, every earlier question and reply, and the new question. The benchmark plays
``--turns`` turns on token ids (no tokenizer): a ``--system``-token system prompt, then per turn
a ``--question``-token question and a ``--reply``-token greedy reply (no stop token, so every
side generates the same number of tokens). Both models hold the same random weights
(``LlamaForCausalLM``, SDPA, SmolLM2-135M's shape by default). Sides:

- ``ours``: ``model.stream(prompt, ..., prompt_cache=pc)`` with one ``PromptCache`` for the
  conversation, as ``ChatSession`` does: each turn prefills only the tokens after the cached prefix;
- ``ours_fresh``: the same without the prompt cache (the whole prompt is prefilled every turn);
- ``hf``: ``hf.generate(prompt, ...)`` every turn (the whole prompt prefilled, as transformers'
  chat pipeline does);
- ``hf_reuse``: ``hf.generate(prompt, cache=cache, ...)`` with the ``DynamicCache`` the
  previous turn returned (transformers' documented way to continue from a cached prefix; the
  argument is ``past_key_values`` in older releases).

Per side and round: the time of the whole conversation, and the time to the first new token of
the last turn (TTFT: the prefill, where reuse shows). Rounds alternate the sides, flipping the
order each round; medians are reported, with ratios against ``hf``. Replies are compared with
``ours_fresh`` (in fp32 all four should agree; in bf16 rounding differs between implementations,
so the matching fraction is reported). Writes bench/results/chat_latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import transformers
from bench_decode import QUICK_SHAPE, SMOLLM2_SHAPE, model_pairs, report_header
from transformers.generation.streamers import BaseStreamer

from transformer_toolkit.generation import PromptCache
from transformer_toolkit.model import Transformer

RESULTS = Path(__file__).resolve().parent / "results"


class FirstTokenClock(BaseStreamer):
    """Notes when HF's generate hands over its first new token (its first ``put`` is the prompt)."""

    def __init__(self):
        self.puts, self.first = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self):
        pass


def ours_turn(model, prompt: torch.Tensor, new: int, state: dict | None) -> tuple[torch.Tensor, float]:
    """One reply; returns the reply ``(1, new)`` and the seconds to its first token."""
    start, first, toks = time.perf_counter(), None, []
    for tok in model.stream(prompt, max_new=new, temperature=0, prompt_cache=state and state["pc"]):
        first = first or time.perf_counter()
        toks.append(tok)
    return torch.stack(toks, dim=1), first - start


def hf_turn(model, prompt: torch.Tensor, new: int, state: dict | None) -> tuple[torch.Tensor, float]:
    clock, extra = FirstTokenClock(), {}
    if state is not None and state.get("cache") is not None:
        extra[CACHE_ARG] = state["cache"]
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None,
                             streamer=clock, return_dict_in_generate=True, **extra)
    if state is not None:
        state["cache"] = getattr(out, CACHE_ARG)
    return out.sequences[:, prompt.shape[1]:], clock.first - start


# recent transformers releases name generate's past_key_values argument (and output field) cache
CACHE_ARG = "cache" if "cache" in getattr(transformers.generation.utils.GenerateDecoderOnlyOutput,
                                          "__dataclass_fields__", {}) else "past_key_values"
SIDES = {"ours": (ours_turn, True), "ours_fresh": (ours_turn, False), "hf": (hf_turn, False),
         "hf_reuse": (hf_turn, True)}


def conversation(model, turn, reuse: bool, system, questions, new: int) -> dict:
    """Play every turn; returns the total seconds, each turn's TTFT and the replies."""
    state = {"pc": PromptCache()} if reuse else None
    prompt, replies, ttft = system, [], []
    start = time.perf_counter()
    for q in questions:
        prompt = torch.cat([prompt, q], dim=1)
        reply, first = turn(model, prompt, new, state)
        replies.append(reply)
        ttft.append(first)
        prompt = torch.cat([prompt, reply], dim=1)
    return {"total_s": time.perf_counter() - start, "ttft_s": ttft, "replies": torch.cat(replies, dim=1),
            "last_prompt": prompt.shape[1] - new}


def bench_dtype(ours: Transformer, hf, args, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    vocab = ours.cfg.vocab_size
    system = torch.randint(0, vocab, (1, args.system), generator=g)
    questions = [torch.randint(0, vocab, (1, args.question), generator=g) for _ in range(args.turns)]
    models = {"ours": ours, "ours_fresh": ours, "hf": hf, "hf_reuse": hf}
    runs = {name: [] for name in SIDES}
    names = list(SIDES)
    for r in range(rounds + 1):  # round 0 warms up (allocations, first-call costs) and is not kept
        for name in names if r % 2 == 0 else names[::-1]:
            turn, reuse = SIDES[name]
            res = conversation(models[name], turn, reuse, system, questions, args.reply)
            if r:
                runs[name].append(res)
    ref = runs["ours_fresh"][0]["replies"]
    out = {}
    for name in names:
        total = statistics.median(x["total_s"] for x in runs[name])
        ttft = statistics.median(x["ttft_s"][-1] for x in runs[name])
        out[name] = {"total_s": total, "last_ttft_s": ttft, "rounds_total_s": [x["total_s"] for x in runs[name]],
                     "ttft_per_turn_s": [statistics.median(x["ttft_s"][k] for x in runs[name])
                                         for k in range(args.turns)],
                     "replies_equal_to_ours_fresh": float((runs[name][0]["replies"] == ref).float().mean())}
    for name in names:
        out[name]["total_vs_hf"] = out["hf"]["total_s"] / out[name]["total_s"]
        out[name]["ttft_vs_hf"] = out["hf"]["last_ttft_s"] / out[name]["last_ttft_s"]
    out["last_prompt_tokens"] = runs["ours"][0]["last_prompt"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--system", type=int, default=32, help="system prompt tokens")
    ap.add_argument("--question", type=int, default=48, help="tokens per question")
    ap.add_argument("--reply", type=int, default=32, help="tokens per reply")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="tiny model: a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = dict(QUICK_SHAPE if args.quick else SMOLLM2_SHAPE, max_seq=2048)
    rounds = args.rounds or (1 if args.quick else 3)
    pairs = model_pairs(shape)
    start = time.perf_counter()
    report = report_header("bench_chat.py", {"shape": shape, "turns": args.turns, "system": args.system,
                                             "question": args.question, "reply": args.reply, "rounds": rounds})
    print(f"chat of {args.turns} turns ({args.system}-token system prompt, {args.question}-token questions, "
          f"{args.reply}-token replies); shape {shape}; {torch.get_num_threads()} threads; median of {rounds} rounds")
    print(f"{'case':<12}{'side':<12}{'total s':>9}{'vs hf':>7}{'last TTFT ms':>14}{'vs hf':>7}{'same replies':>14}")
    for dtype in args.dtypes:
        ours, hf = pairs(dtype)
        res = bench_dtype(ours, hf, args, rounds)
        report["results"][dtype] = res
        for name in SIDES:
            m = res[name]
            print(f"{dtype:<12}{name:<12}{m['total_s']:>9.2f}{m['total_vs_hf']:>7.2f}{m['last_ttft_s'] * 1e3:>14.0f}"
                  f"{m['ttft_vs_hf']:>7.2f}{m['replies_equal_to_ours_fresh']:>14.3f}", flush=True)
        print(f"{'':<12}last turn's prompt: {res['last_prompt_tokens']} tokens")
    report["elapsed_s"] = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    name = "chat_quick.json" if args.quick else "chat_latest.json"
    (RESULTS / name).write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / name} ({report['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
