"""Training-step throughput side by side: ours (eager and ``torch.compile``), HF transformers, litgpt.

Run (from the repository root)::

    python bench/bench_train.py                        # shape a (Shakespeare), CPU, fp32 + bf16 autocast
    python bench/bench_train.py --shape b              # GPT-2 small, CPU: batch 1 x 1024, 1 step a round
    python bench/bench_train.py --shape b --device cuda  # bf16 on a GPU, with MFU over 989 TFLOP/s
    python bench/bench_train.py --quick                # tiny smoke run, seconds

One step = forward, cross-entropy (each side's own: HF and litgpt upcast the logits to fp32 and
call ``F.cross_entropy``, as HF's causal-LM loss does; ours is the Trainer's
``cross_entropy_sum``, the same fp32 log-softmax a block of rows at a time, with no full-size
fp32 array), backward,
``torch.optim.AdamW`` (the same hyper-parameters everywhere, fused where the device has the
kernel), in fp32 and under
``torch.autocast(dtype=torch.bfloat16)`` (fp32 master weights); on CUDA bf16 only. Every side
trains on the same random token batch. The sides:

- ``ours``: ``Transformer`` in eager mode; ``ours_compile``: the same model under ``torch.compile``
  (as ``TrainConfig(compile=True)`` runs it; compile time is reported separately);
- ``hf``: ``LlamaForCausalLM`` (shape a) or ``GPT2LMHeadModel`` (shape b) with SDPA attention,
  holding our weights, its fp32 logits checked equal to ours (atol 1e-4) before timing;
- ``litgpt``: ``litgpt.GPT`` with the equivalent config, in a subprocess running
  ``.venv-litgpt`` (litgpt pins an older huggingface_hub than transformers 5 needs; see
  bench/litgpt_worker.py for the setup). Skipped with a message when that venv is absent. Its
  weights are its own random init (same shapes and parameter count, printed). For shape b it
  uses RoPE where GPT-2 has learned positions (litgpt has no learned position table) and an
  untied head (the same head matmul, one more weight matrix to update).

Rounds alternate between the sides (the order reverses every round) and tokens/s is the median
over rounds; the machine's load average is recorded with every figure. MFU = training FLOPs
per token (6 * N + 12 * n_layers * dim * seq, the Trainer's formula) x tokens/s over the peak:
on CPU the best ``torch.mm`` measured here in that dtype, on CUDA 989e12 (H100/H200 dense bf16).
Results go to ``bench/results/train_<shape>[_cuda]_latest.json``.

``--malloc keep`` (CPU, Linux/glibc) makes every side keep freed memory for reuse instead of
returning it to the system, with the Trainer's ``reuse_host_memory`` setting (``tune_malloc``),
for all sides at once, litgpt's process included.
By default glibc serves each large tensor with fresh pages from the kernel, whose page faults
cost a bf16 training step about a quarter of its time on this 2-core machine; the figures
with ``keep`` show what a training process gains by setting it (the ratios between sides are
not the point of that mode).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from bench_core import build_hf, hf_logits, matmul_peak

from transformer_toolkit.model import Transformer, TransformerConfig
from transformer_toolkit.trainer import hostmem
from transformer_toolkit.trainer.hostmem import keep_freed_memory
from transformer_toolkit.trainer.loss import cross_entropy_sum
from transformer_toolkit.trainer.mfu import flops_per_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LITGPT_PYTHON = ROOT / ".venv-litgpt" / "bin" / "python"
H100_BF16_PEAK = 989e12

SHAPES = {  # (a) the README's Shakespeare model, (b) GPT-2 small, and a tiny smoke shape
    "a": dict(vocab_size=8000, dim=384, n_layers=6, n_heads=6, n_kv_heads=3, hidden_dim=1536, max_seq=512,
              attn="gqa", ffn="swiglu", norm="rmsnorm", pos_enc="rope", tie_weights=False, bias=False),
    "b": dict(vocab_size=50304, dim=768, n_layers=12, n_heads=12, hidden_dim=3072, max_seq=1024, attn="mha",
              ffn="ffn", norm="layernorm", eps=1e-5, pos_enc="learned", tie_weights=True, bias=True),
    "quick": dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq=64,
                  attn="gqa", ffn="swiglu", norm="rmsnorm", pos_enc="rope", tie_weights=False, bias=False),
}
# (shape, device) -> batch, seq, timed steps per round, rounds
RUN_DEFAULTS = {("a", "cpu"): (16, 128, 3, 5), ("b", "cpu"): (1, 1024, 1, 3), ("quick", "cpu"): (2, 32, 2, 2),
                ("a", "cuda"): (64, 128, 20, 5), ("b", "cuda"): (8, 1024, 10, 5), ("quick", "cuda"): (2, 32, 2, 2)}


# models ---------------------------------------------------------------------------------------
def build_ours(shape: dict) -> Transformer:
    return Transformer(TransformerConfig(**shape, rope_theta=10000.0, dropout=0.0))


def build_gpt2(ours: Transformer):
    """HF ``GPT2LMHeadModel`` holding our GPT-2-style weights (Conv1D stores weights as (in, out))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = ours.cfg
    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.max_seq, n_embd=c.dim, n_layer=c.n_layers,
                     n_head=c.n_heads, n_inner=c.hidden_dim, activation_function="gelu_new",
                     layer_norm_epsilon=c.eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     tie_word_embeddings=True)
    hf = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
    sd = {k: v.detach() for k, v in ours.state_dict().items()}
    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos.weight"],
           "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"],
           "lm_head.weight": sd["embed.weight"]}
    for i in range(c.n_layers):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        for ours_n, hf_n in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            out[q + hf_n + ".weight"], out[q + hf_n + ".bias"] = sd[p + ours_n + ".weight"], sd[p + ours_n + ".bias"]
        qkv = [p + f"attn.{n}_proj" for n in "qkv"]
        out[q + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv]).t()
        out[q + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv])
        for ours_n, hf_n in (("attn.o_proj", "attn.c_proj"), ("ffn.up_proj", "mlp.c_fc"),
                             ("ffn.down_proj", "mlp.c_proj")):
            out[q + hf_n + ".weight"] = sd[p + ours_n + ".weight"].t()
            out[q + hf_n + ".bias"] = sd[p + ours_n + ".bias"]
    hf.load_state_dict({k: v.contiguous().clone() for k, v in out.items()}, strict=False)
    missing = {k for k in hf.state_dict() if k not in out and not k.endswith(".attn.bias")}
    assert not missing, f"GPT-2 weights not copied: {sorted(missing)[:5]}"
    return hf


def build_hf_peer(ours: Transformer):
    return build_gpt2(ours) if ours.cfg.pos_enc == "learned" else build_hf(ours)


def litgpt_config(c: TransformerConfig) -> dict:
    """litgpt ``Config`` fields for the same architecture (see the module docstring for shape b)."""
    llama = c.ffn == "swiglu"
    return dict(name="ttk-bench", block_size=c.max_seq, vocab_size=c.vocab_size, padded_vocab_size=c.vocab_size,
                n_layer=c.n_layers, n_embd=c.dim, n_head=c.n_heads, n_query_groups=c.n_kv_heads,
                head_size=c.head_dim, rotary_percentage=1.0, rope_base=int(c.rope_theta), parallel_residual=False,
                bias=c.bias, norm_class_name="RMSNorm" if c.norm == "rmsnorm" else "LayerNorm", norm_eps=c.eps,
                mlp_class_name="LLaMAMLP" if llama else "GptNeoxMLP", intermediate_size=c.hidden_dim,
                gelu_approximate="tanh")


def ours_logits(model, x):
    return model(x)[0]


def check_same_function(ours, hf, x) -> float:
    ours.eval()
    hf.eval()
    with torch.no_grad():
        diff = (ours_logits(ours, x).float() - hf_logits(hf, x).float()).abs().max().item()
    ours.train()
    hf.train()
    assert diff < 1e-4, f"ours and HF logits differ by {diff:.3g} (> 1e-4): the weight copy or a layer disagrees"
    return diff


def tune_malloc() -> dict:
    """The Trainer's ``reuse_host_memory`` allocator setting (``trainer/hostmem.py``), for this
    process, so the large activation and gradient buffers of one step are reused by the next
    instead of being page-faulted in again. Returns the environment that does the same for a
    child process (glibc reads it at start-up)."""
    if not keep_freed_memory():
        raise RuntimeError("this C library does not take glibc's mallopt settings; run without --malloc keep")
    return {"MALLOC_MMAP_THRESHOLD_": str(hostmem.MMAP_THRESHOLD),
            "MALLOC_TRIM_THRESHOLD_": str(hostmem.TRIM_THRESHOLD)}


# sides ----------------------------------------------------------------------------------------
class LocalSide:
    """A model trained in this process."""

    def __init__(self, name: str, model, logits_fn, device: torch.device, compiled: bool = False, loss_fn=None):
        self.name, self.model, self.logits_fn, self.device = name, model, logits_fn, device
        self.loss_fn = loss_fn or hf_style_loss
        self.module = model._orig_mod if compiled else model  # the parameters' owner
        self.init = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.opt, self.bf16 = None, False

    def prepare(self, bf16: bool, fused: bool) -> None:
        """Back to the initial weights (each precision starts from the same function), fresh AdamW."""
        self.module.load_state_dict(self.init)
        self.module.train()
        self.bf16 = bf16
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                     eps=1e-8, fused=fused or None)

    def run(self, x, y, steps: int) -> float:
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.loss_fn(self.logits_fn(self.model, x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t

    def release(self) -> None:
        self.opt = None


def hf_style_loss(logits, y):
    """Mean cross-entropy on the logits upcast to fp32 (what HF's causal-LM loss does)."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))


def ours_loss(logits, y):
    """The Trainer's loss (``trainer.loss.cross_entropy_sum``), as a mean."""
    return cross_entropy_sum(logits, y) / y.numel()


class LitgptSide:
    """litgpt in its own venv, driven over a pipe (bench/litgpt_worker.py)."""

    name = "litgpt"

    def __init__(self, python: Path, cfg: TransformerConfig, device: torch.device, threads: int, data: Path,
                 env: dict):
        self.cfg, self.device, self.threads, self.data = cfg, device, threads, data
        self.proc = subprocess.Popen([str(python), str(ROOT / "bench" / "litgpt_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **env})
        self.info: dict = {}

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the litgpt worker exited; run bench/litgpt_worker.py by hand to see why")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"litgpt worker: {out['error']}")
        return out

    def prepare(self, bf16: bool, fused: bool) -> None:
        self.info = self._ask({"cmd": "build", "config": litgpt_config(self.cfg), "data": str(self.data),
                               "device": str(self.device), "threads": self.threads, "bf16": bf16, "seed": 0,
                               "fused": fused})

    def run(self, x, y, steps: int) -> float:
        return self._ask({"cmd": "run", "steps": steps})["seconds"]

    def release(self) -> None:
        pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def fused_adamw_works(device: torch.device) -> bool:
    try:
        p = torch.nn.Parameter(torch.randn(8, device=device))
        p.grad = torch.randn(8, device=device)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, ValueError, TypeError):
        return False


# measurement ----------------------------------------------------------------------------------
def bench_precision(sides: list, x, y, bf16: bool, steps: int, rounds: int, warmup: int,
                    fused: bool) -> dict:
    """Warm every side up, then time ``rounds`` alternating rounds of ``steps`` steps each."""
    tokens = steps * x.numel()
    res: dict = {"load_start": os.getloadavg()}
    live = []
    for side in sides:
        try:
            t = time.perf_counter()
            side.prepare(bf16, fused)
            side.run(x, y, warmup)
            res[side.name] = {"warmup_s": time.perf_counter() - t}
            live.append(side)
        except Exception as e:  # noqa: BLE001 - a side that cannot run (e.g. compile) is reported, not fatal
            res[side.name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"  {side.name}: skipped ({res[side.name]['error']})", flush=True)
    tps = {s.name: [] for s in live}
    loads = []
    for r in range(rounds):
        for side in live if r % 2 == 0 else live[::-1]:
            tps[side.name].append(tokens / side.run(x, y, steps))
        loads.append(os.getloadavg()[0])
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in tps.items())
              + f" tok/s (load {loads[-1]:.2f})", flush=True)
    for side in live:
        side.release()
        res[side.name].update(median=statistics.median(tps[side.name]), rounds=tps[side.name])
    res["load_per_round"] = loads
    res["load_end"] = os.getloadavg()
    return res


def summarise(res: dict, fpt: float, peak: float) -> None:
    hf = res.get("hf", {}).get("median")
    for r in res.values():
        if isinstance(r, dict) and "median" in r:
            r["mfu"] = r["median"] * fpt / peak
            if hf:
                r["vs_hf"] = r["median"] / hf


def fmt_table(results: dict) -> str:
    rows = [("precision", "side", "tok/s", "x HF", "MFU", "load (1 min)")]
    for prec, res in results.items():
        load = f"{statistics.median(res['load_per_round']):.2f}" if res["load_per_round"] else "-"
        for name, r in res.items():
            if not isinstance(r, dict) or not ("median" in r or "error" in r):
                continue
            if "error" in r:
                rows.append((prec, name, "failed", "-", "-", r["error"][:40]))
                continue
            rows.append((prec, name, f"{r['median']:.0f}", f"{r['vs_hf']:.3f}" if "vs_hf" in r else "-",
                         f"{100 * r['mfu']:.1f}%", load))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main() -> None:  # noqa: PLR0915 - a linear script: parse, build, check, measure, report
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["a", "b"], default="a", help="a: Shakespeare (default), b: GPT-2 small")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--batch", type=int, help="sequences per step (default: per shape and device)")
    ap.add_argument("--seq", type=int, help="tokens per sequence")
    ap.add_argument("--steps", type=int, help="timed steps per side per round")
    ap.add_argument("--rounds", type=int, help="alternating rounds")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side and precision (compile runs here)")
    ap.add_argument("--precisions", default=None, help="comma list of fp32,bf16 (default: both on CPU, bf16 on CUDA)")
    ap.add_argument("--sides", default="ours,ours_compile,hf,litgpt", help="comma list of sides to run")
    ap.add_argument("--litgpt-python", default=str(LITGPT_PYTHON), help="python of the litgpt venv")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (CPU)")
    ap.add_argument("--malloc", choices=["default", "keep"], default="default",
                    help="keep: glibc keeps freed memory for reuse, in every side (see the module docstring)")
    ap.add_argument("--quick", action="store_true", help="tiny model, a few seconds (writes train_quick_latest.json)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    shape_name = "quick" if args.quick else args.shape
    shape = SHAPES[shape_name]
    batch, seq, steps, rounds = (v if v is not None else d for v, d in zip(
        (args.batch, args.seq, args.steps, args.rounds), RUN_DEFAULTS[(shape_name, device.type)], strict=True))
    if seq > shape["max_seq"]:
        ap.error(f"--seq {seq} is longer than the shape's max_seq {shape['max_seq']}")
    precisions = (args.precisions or ("bf16" if device.type == "cuda" else "fp32,bf16")).split(",")
    wanted = args.sides.split(",")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    child_env = tune_malloc() if args.malloc == "keep" else {}

    ours = build_ours(shape).to(device)
    x = torch.randint(0, shape["vocab_size"], (batch, seq), device=device)
    y = torch.randint(0, shape["vocab_size"], (batch, seq), device=device)
    sides, diff, litgpt = [], None, None
    if "ours" in wanted:
        sides.append(LocalSide("ours", ours, ours_logits, device, loss_fn=ours_loss))
    if "ours_compile" in wanted:
        twin = build_ours(shape).to(device)
        twin.load_state_dict(ours.state_dict())
        sides.append(LocalSide("ours_compile", torch.compile(twin), ours_logits, device, compiled=True,
                               loss_fn=ours_loss))
    if "hf" in wanted:
        hf = build_hf_peer(ours).to(device)
        diff = check_same_function(ours, hf, x[:2])
        sides.append(LocalSide("hf", hf, hf_logits, device))
    data = Path(tempfile.mkdtemp(prefix="bench_train_")) / "x_y.pt"
    torch.save({"x": x.cpu(), "y": y.cpu()}, data)
    if "litgpt" in wanted:
        python = Path(args.litgpt_python)
        if python.exists():
            litgpt = LitgptSide(python, ours.cfg, device, args.threads, data, child_env)
            sides.append(litgpt)
        else:
            print(f"litgpt: skipped, no venv at {python} (python -m venv .venv-litgpt && "
                  ".venv-litgpt/bin/pip install torch==2.13.0 litgpt)")

    fused = fused_adamw_works(device)
    fpt = flops_per_token(ours, seq)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                                   platform.machine())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {dev_name}, "
          f"threads {torch.get_num_threads()}, malloc {args.malloc}; shape {shape_name}: {shape}")
    print(f"batch {batch} x seq {seq}; {steps} steps x {rounds} rounds; AdamW fused={fused}; "
          f"{ours.num_parameters():,} params; {fpt / 1e6:.1f} MFLOP/token (6N + 12*L*dim*seq)")
    if diff is not None:
        print(f"sanity: max |logits ours - HF| (fp32) = {diff:.2e}")

    if device.type == "cuda":
        peaks = {p: H100_BF16_PEAK for p in precisions}
    else:
        sizes = [256, 512] if args.quick else [2048, 3072, 4096]

        def measure_peaks() -> dict:
            return {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16, sizes, 3)["flops"]
                    for p in precisions}
        peaks = measure_peaks()
    results = {}
    t0 = time.perf_counter()
    try:
        for prec in precisions:
            print(f"{prec} ...", flush=True)
            results[prec] = bench_precision(sides, x, y, prec == "bf16", steps, rounds, args.warmup, fused)
    finally:
        if litgpt is not None:
            litgpt.close()
    elapsed = time.perf_counter() - t0
    if device.type != "cuda":  # the peak again after the rounds: a busy moment before them must not inflate MFU
        peaks = {p: max(v, peaks[p]) for p, v in measure_peaks().items()}
    for prec in precisions:
        summarise(results[prec], fpt, peaks[prec])

    print()
    print(fmt_table(results))
    print(f"MFU peak: {'989 TFLOP/s (H100/H200 dense bf16)' if device.type == 'cuda' else 'best torch.mm here: ' + ', '.join(f'{p} {v / 1e9:.0f} GFLOP/s' for p, v in peaks.items())}")  # noqa: E501
    if litgpt is not None and litgpt.info:
        print(f"litgpt: {litgpt.info['params']:,} params ({litgpt.info['matmul_params']:,} in Linear layers) vs "
              f"ours {ours.num_parameters():,}")
    print(f"x HF > 1: faster than HF transformers. timed section {elapsed:.0f} s")

    name = "train_quick" if args.quick else f"train_{shape_name}" + ("_cuda" if device.type == "cuda" else "")
    name += "_malloc_keep" if args.malloc == "keep" else ""
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "env": {"torch": torch.__version__, "transformers": transformers.__version__, "device": dev_name,
                "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "malloc": args.malloc},
        "settings": {"shape": shape, "batch": batch, "seq": seq, "steps": steps, "rounds": rounds,
                     "warmup": args.warmup, "adamw_fused": fused},
        "sanity_max_abs_logit_diff_fp32": diff, "params": ours.num_parameters(), "flops_per_token": fpt,
        "peak_flops": peaks, "litgpt": litgpt.info if litgpt is not None else None,
        "results": results, "elapsed_s": elapsed,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}_latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote bench/results/{name}_latest.json")


if __name__ == "__main__":
    main()
