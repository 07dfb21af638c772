"""The ``ttk`` command: one function per subcommand (train.py, use.py, interop.py; the model of
``--run`` / ``--model`` is loaded by source.py through ``store.load``).

Any mistake in the input (unknown field, bad value, missing file) prints one line naming it and
exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import sys

from pydantic import ValidationError

RESUME_HELP = ("auto (default): continue from the newest checkpoint in OUT/checkpoints, or start fresh when "
               "there is none; none: start fresh and refuse a folder that already holds checkpoints; "
               "PATH: continue from that checkpoint")
SAMPLE_PROMPTS = ["def ", "import ", "class "]


def _run_args(p: argparse.ArgumentParser, default_recipe: str) -> None:
    p.add_argument("--config", help=f"run config YAML, or a recipe name from recipes/ (default: {default_recipe})")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
    p.add_argument("--name", help="run name (default: the config's name)")
    p.add_argument("--resume", default="auto", help=RESUME_HELP)


def _source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder or .pt checkpoint")
    src.add_argument("--model", help="pretrained model: a transformers folder (Llama/Mistral/Qwen2/SmolLM/GPT-2/"
                                     "Mixtral), a folder from ttk pull, a .gguf file, or a Hub repo id "
                                     "(owner/name, pulled once into ~/.cache/transformer_toolkit/hub)")


def _gen_args(p: argparse.ArgumentParser, temperature: float) -> None:
    _source_args(p)
    p.add_argument("--max-new", type=int, default=100)
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--compile", action="store_true",
                   help="decode with a torch.compile'd step: faster per token after a one-time compile "
                        "(seconds to tens of seconds), worth it for long replies")


class _Sources(argparse.Action):
    """--run and --model append ("run"|"model", PATH) to one list, in command-line order."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.sources = [*(getattr(namespace, "sources", None) or []), (self.dest, value)]


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(sources=[])
    p.add_argument("--run", action=_Sources, help="run folder or .pt checkpoint; repeat to compare runs side by side")
    p.add_argument("--model", action=_Sources, help="pretrained model (transformers folder or .gguf); repeatable")
    p.add_argument("--data", nargs="+", default=[], help="text files, or token files (.bin/.npy): bits per byte and "
                                                          "perplexity, each file its own domain")
    p.add_argument("--tasks", nargs="+", default=[], help="task names (comma or space separated): built-in "
                                                           "synthetic, bpb (the run's held-out split), or any "
                                                           "lm-eval task (needs .[eval])")
    p.add_argument("--include-path", action="append", help="folder of lm-eval task YAMLs (your tasks over local files)")
    p.add_argument("--limit", type=int, help="at most this many examples per lm-eval task")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples for lm-eval tasks (default: each task's)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward for lm-eval tasks")
    p.add_argument("--apply-chat-template", action="store_true", help="render lm-eval prompts with the chat template")
    p.add_argument("--log-samples", action="store_true", help="keep every lm-eval sample in the results JSON")
    p.add_argument("--out", help="folder for the results files (default: each run's eval/ folder)")
    p.add_argument("--seq-len", type=int, help="window length for --data (default: the model's max_seq)")
    p.add_argument("--max-tokens", type=int, default=200_000, help="tokens read from each --data file")


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="run config YAML with an optional compare: section, or a recipe name "
                                    "(default: compare-attention; also compare-ffn)")
    p.add_argument("--vary", action="append", metavar="KEY=V1,V2", help="a grid axis, e.g. --vary model.attn=gqa,mla "
                                                                        "(repeat for a grid; model.dim with 3+ values "
                                                                        "is a scaling axis)")
    p.add_argument("--budget", help="per variant: tokens=N, flops=N (active parameters), time=S (10m, 1h) or steps=N "
                                    "(default: the config's, else train.max_steps)")
    p.add_argument("--seeds", type=int, help="runs of each variant, seeds train.seed, +1, ... (default 1)")
    p.add_argument("--tasks", nargs="+", help="evaluation tasks scored on each final model (e.g. bpb, synthetic)")
    p.add_argument("--out", help="report folder, holding the data and every variant's run (default: runs/<name>)")
    p.add_argument("--parallel", nargs="?", const="auto", metavar="N",
                   help="several variants at once: one per CUDA device, or N worker processes; under torchrun each "
                        "rank takes its share")
    p.add_argument("--in-process", action="store_true",
                   help="run the variants in this process instead of one fresh process each (faster start; peak "
                        "memory on a CPU then includes what earlier variants left)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    ap = argparse.ArgumentParser(
        prog="ttk", description="transformer-toolkit: train, fine-tune and use small LLMs.",
        epilog="Run configs take dotted overrides after the options, e.g. "
               "ttk train --config llama-small --model.dim 256 --train.max_steps 30 --out runs/exp1")
    ap.add_argument("--version", action="version", version=f"transformer-toolkit {__version__}")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("tokenizer", help="train a BPE tokenizer on text files -> tokenizer.json")
    p.add_argument("files", nargs="+", help="text files, or builtin:python-stdlib")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--out", default="tokenizer.json")
    p.add_argument("--max-mb", type=float, default=12.0, help="size cap of builtin:python-stdlib")
    p.add_argument("--force", action="store_true", help="replace an existing OUT that is not a tokenizer.json")

    p = sub.add_parser("prepare", help="tokenise text files into a token file (.bin) and train/val .npy")
    p.add_argument("files", nargs="+", help="text files, or builtin:python-stdlib")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json or a run folder")
    p.add_argument("--out", default="tokens.bin")
    p.add_argument("--split", type=float, help="also write OUT.train.npy / OUT.val.npy with this train fraction")
    p.add_argument("--max-mb", type=float, default=12.0)
    p.add_argument("--force", action="store_true", help="replace an existing OUT that is not a token file")

    p = sub.add_parser("train", help="pretrain a model (no arguments: builtin:python-stdlib, ~4 min on CPU)")
    _run_args(p, "quickstart")
    p.add_argument("--samples", nargs="*", default=SAMPLE_PROMPTS, help="prompts to sample at the end")
    p.add_argument("--max-new", type=int, default=60)

    p = sub.add_parser("compare", help="train architecture variants on the same data under one budget and report "
                                       "which is better (no arguments: recipe compare-attention)")
    _compare_args(p)

    p = sub.add_parser("sft", help="fine-tune on conversations (no arguments: builtin:synthetic reverse/add)")
    _run_args(p, "sft")
    p.add_argument("--init", help="start from this run folder, checkpoint, transformers folder or .gguf file "
                                  "instead of from scratch")
    p.add_argument("--model", help="same as --init for a pretrained model (transformers folder, .gguf or Hub id)")

    p = sub.add_parser("dpo", help="preference-tune a model with DPO (no arguments: runs/sft with LoRA on built-in "
                                   "pairs)")
    _run_args(p, "dpo")
    p.add_argument("--init", help="the model to tune: a run folder or checkpoint (default: the config's, runs/sft)")
    p.add_argument("--model", help="same as --init for a pretrained model (transformers folder or .gguf)")

    p = sub.add_parser("grpo", help="reinforcement learning with verifiable rewards (no arguments: runs/sft-hard on "
                                    "built-in prompts with exact-match rewards)")
    _run_args(p, "grpo")
    p.add_argument("--init", help="the model to tune: a run folder or checkpoint (default: the config's, "
                                  "runs/sft-hard)")
    p.add_argument("--model", help="same as --init for a pretrained model (transformers folder or .gguf)")

    p = sub.add_parser("generate", help="sample a completion from a run's model or a pretrained one (--model)")
    _gen_args(p, 0.8)
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("chat", help="chat with a run's or a pretrained model (/reset, /system TEXT, /exit); "
                                    "reads piped stdin too")
    _gen_args(p, 0.0)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--template", help="chat template (default: the run's or the model's own, else chatml)")

    p = sub.add_parser("eval", help="bits per byte and perplexity on files, and task scores (built-in or lm-eval), "
                                    "of one model or several side by side")
    _eval_args(p)

    p = sub.add_parser("export", help="write a model as a transformers folder (hf) or a GGUF file for llama.cpp, "
                                      "or a LoRA run's adapters (peft, lora-gguf)")
    _source_args(p)
    p.add_argument("--format", required=True, choices=("hf", "gguf", "peft", "lora-gguf"))
    p.add_argument("--out", required=True, help="output folder (hf, peft) or .gguf file")
    p.add_argument("--dtype", choices=("f32", "f16", "bf16", "q8_0"),
                   help="weights: hf f32 (default), f16, bf16; gguf f16 (default), f32, q8_0; lora-gguf f32 "
                        "(default), f16")
    p.add_argument("--template", help="chat template to store (default: the SFT run's, or the model's own)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT that is not a GGUF file (gguf) or write into a folder that holds "
                        "files but no model (hf)")

    p = sub.add_parser("push", help="upload a model to the Hugging Face Hub (safetensors + metrics + model card)")
    _source_args(p)
    p.add_argument("--repo", required=True, help="user/name")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p.add_argument("--template", help="chat template to store (default: the SFT run's, or the model's own)")

    p = sub.add_parser("pull", help="download a model repo from the Hub (never pickles) for use with --model")
    p.add_argument("repo", help="user/name")
    p.add_argument("--out", required=True, help="folder to download into")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")

    from .serve import add_parser as add_serve_parser
    add_serve_parser(sub)
    return ap


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    if isinstance(e, ValidationError) and len(lines) > 1:  # line 0 is "N validation errors for X"
        return lines[1] + (f": {lines[2]}" if len(lines) > 2 else "")
    return lines[0] if lines else type(e).__name__


def _os_error(e: OSError) -> str:
    fix = {errno.EACCES: "choose a folder you can write to", errno.EPERM: "choose a folder you can write to",
           errno.EROFS: "choose a folder you can write to", errno.ENOSPC: "free some disk space"}.get(e.errno)
    text = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else _first_line(e)
    return f"{text}; {fix}" if fix else text


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ttk`` and ``python -m transformer_toolkit``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if args.command is None:
        args, extra = ap.parse_known_args(["train", *argv])
    try:
        from . import compare, dpo, evaluate, grpo, interop, serve, train, use
        from .config import parse_overrides

        overrides = parse_overrides(extra)
        if overrides and args.command not in ("train", "sft", "dpo", "grpo", "compare"):
            raise ValueError(f"ttk {args.command} takes no config overrides (got --{next(iter(overrides))})")
        handlers = {"tokenizer": lambda: train.cmd_tokenizer(args), "prepare": lambda: train.cmd_prepare(args),
                    "train": lambda: train.cmd_train(args, overrides), "sft": lambda: use.cmd_sft(args, overrides),
                    "dpo": lambda: dpo.cmd_dpo(args, overrides), "grpo": lambda: grpo.cmd_grpo(args, overrides),
                    "compare": lambda: compare.cmd_compare(args, overrides),
                    "generate": lambda: use.cmd_generate(args), "chat": lambda: use.cmd_chat(args),
                    "eval": lambda: evaluate.cmd_eval(args), "export": lambda: interop.cmd_export(args),
                    "push": lambda: interop.cmd_push(args), "pull": lambda: interop.cmd_pull(args),
                    "serve": lambda: serve.cmd_serve(args)}
        return handlers[args.command]()
    except (ValueError, FileNotFoundError, ValidationError, ImportError) as e:
        if args.debug:
            raise
        print(f"ttk {args.command}: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk: one line too (writes are atomic: nothing was lost)
        if args.debug:
            raise
        print(f"ttk {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
