"""Where a nanoGPT-recipe training step goes: our model vs the plain GPT peer, step by step.

Run (from the repository root)::

    python bench/bench_step_breakdown.py            # ~1 min on 2 cores
    python bench/bench_step_breakdown.py --rounds 10

Complements ``bench_nanogpt.py`` (whole runs, whose wall times drift with the machine's load):
here the variants alternate every 10 steps on the same batch, so their ratio is trustworthy.
One step = forward, cross-entropy, backward, clip, fused AdamW, at the recipe's shape (batch 12,
seq 64, dim 128, 4 layers, 4 heads). Variants:

- ``peer``: ``gpt_reference.GPT`` with nanoGPT's 65-character vocabulary;
- ``ours-v256``: our GPT-style ``Transformer`` with ``ByteLevelTokenizer``'s 256 ids (what the
  nanoGPT bench trains);
- ``ours-v65``: the same model with the peer's 65-id vocabulary, to separate the vocabulary's
  cost from the model's.

Writes bench/results/step_breakdown_latest.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from gpt_reference import GPT

from transformer_toolkit import Transformer, TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"
GPT_STYLE = dict(dim=128, n_layers=4, n_heads=4, max_seq=64, norm="layernorm", ffn="ffn", gelu="exact",
                 pos_enc="learned", tie_weights=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"peer": GPT(65), "ours-v256": Transformer(TransformerConfig(vocab_size=256, **GPT_STYLE)),
              "ours-v65": Transformer(TransformerConfig(vocab_size=65, **GPT_STYLE))}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for k, m in models.items()}
    x, y = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))

    def step(name: str) -> None:
        model = models[name]
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    for name in models:  # warm up
        for _ in range(5):
            step(name)
    ms = {k: [] for k in models}
    for r in range(args.rounds):
        for name in (list(models) if r % 2 else list(models)[::-1]):
            t = time.perf_counter()
            for _ in range(10):
                step(name)
            ms[name].append((time.perf_counter() - t) * 100)
    med = {k: statistics.median(v) for k, v in ms.items()}
    for k, v in med.items():
        print(f"{k:10s} {v:6.2f} ms/step   {med['peer'] / v:5.2f}x the peer's speed")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_breakdown_latest.json").write_text(json.dumps(
        {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds, "ms_per_step": med}, indent=2))


if __name__ == "__main__":
    main()
