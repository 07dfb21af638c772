"""litgpt's side of bench_train.py, run in its own virtual environment (``.venv-litgpt``).

litgpt pins an older ``huggingface_hub`` than transformers 5 needs, so it cannot share the
benchmark's environment. bench_train.py starts this script with that venv's python and talks to
it over stdin/stdout, one JSON object per line, so litgpt's rounds alternate with ours in the
same run:

- ``{"cmd": "build", "config": {...litgpt Config fields}, "data": "x_y.pt", "device": "cpu",
  "threads": 2, "bf16": false, "seed": 0}`` -> ``{"params": N, "matmul_params": M}``
- ``{"cmd": "run", "steps": 3}`` -> ``{"seconds": s}`` (wall time of that many training steps)
- ``{"cmd": "quit"}``

A step is the one every side of the benchmark runs: forward, cross-entropy on the fp32 logits,
backward, ``torch.optim.AdamW`` (same hyper-parameters, fused), under bf16 autocast or not.
Only one request is served at a time; while the benchmark times another side this process waits
on stdin and uses no CPU.

Set it up once (CPU torch, then litgpt)::

    python -m venv .venv-litgpt
    .venv-litgpt/bin/pip install torch==2.13.0 litgpt
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F


def build(req: dict) -> dict:
    from litgpt import GPT, Config

    state.clear()  # free the previous model before building the next
    torch.set_num_threads(req["threads"])
    torch.manual_seed(req["seed"])
    device = torch.device(req["device"])
    cfg = Config(**req["config"])
    model = GPT(cfg).to(device)
    model.max_seq_length = cfg.block_size
    model.train()
    data = torch.load(req["data"])
    state.update(model=model, device=device, bf16=req["bf16"], x=data["x"].to(device), y=data["y"].to(device),
                 opt=torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8,
                                       fused=req.get("fused", True) or None))
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"params": sum(p.numel() for p in model.parameters()), "matmul_params": matmul,
            "litgpt_config": {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))}}


def step() -> None:
    model, x, y, opt = state["model"], state["x"], state["y"], state["opt"]
    with torch.autocast(state["device"].type, dtype=torch.bfloat16, enabled=state["bf16"]):
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run(req: dict) -> dict:
    sync = torch.cuda.synchronize if state["device"].type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(req["steps"]):
        step()
    sync()
    return {"seconds": time.perf_counter() - t}


state: dict = {}


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        try:
            out = build(req) if req["cmd"] == "build" else run(req)
        except Exception as e:  # noqa: BLE001 - report any failure to the benchmark instead of dying silently
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
