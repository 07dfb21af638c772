"""``ttk sft``, ``ttk generate`` and ``ttk chat``: fine-tune and use a run."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..store import load, runs
from . import config as C
from .builtin import synthetic_split
from .source import chat_template, load_source
from .train import resume_target, run_folder, train_config


def cmd_sft(args, overrides: dict) -> int:
    """Fine-tune on conversations (built-in synthetic tasks or a JSON file); with the synthetic
    tasks, the exact match on held-out prompts is scored at every eval and reported at the end."""
    from ..model import Transformer
    from ..sft import SFTTrainer, from_sft_json, from_sft_strings
    from ..tokenizer import RustBPETokenizer, load_tokenizer

    raw = C.merge(C.read_yaml(args.config or "sft"), overrides)
    if args.name:
        raw["name"] = args.name
    if args.init and args.model:
        raise ValueError("give --init or --model, not both (they mean the same)")
    if args.init or args.model:
        raw["init"] = args.init or args.model
    run = C.resolve(raw, "sft")
    out = run_folder(args, run)
    resume = resume_target(args, runs.checkpoint_dir(out))
    ex, data_cfg = run["extras"], run["data"]
    corpus = ex["corpus"]
    if corpus == "builtin:synthetic":
        train, held_out = synthetic_split(int(ex["n_samples"]), int(ex["n_eval"]), ex["tasks"],
                                          multi_turn=float(ex["multi_turn"]))
    elif isinstance(corpus, str) and os.path.isfile(corpus):
        train, held_out = None, []
    else:
        raise FileNotFoundError(f"data.corpus {corpus!r}: not builtin:synthetic nor an existing JSON/JSONL file")

    model = None
    if run["init"]:  # a run, a checkpoint or a pretrained model; the recipe's template is what is trained
        init = load(run["init"])
        model, tok = init.model.train(), init.tokenizer
    elif (out / runs.TOKENIZER).is_file() or ex["tokenizer"]:
        tok = load_tokenizer(out / runs.TOKENIZER if (out / runs.TOKENIZER).is_file() else ex["tokenizer"])
    else:
        template = data_cfg.template
        texts = [template.format_messages(s["messages"])[0] for s in (train or [])[:1000]]
        if not texts:
            from ..sft.loaders import read_json_samples
            texts = [template.format_messages(s["messages"])[0] for s in read_json_samples(corpus)[:1000]]
        tok = RustBPETokenizer().train(texts, vocab_size=int(ex["vocab_size"]))
    runs.save_tokenizer(tok, out)

    data_cfg = C.build(type(data_cfg), "data", {**data_cfg.model_dump(exclude={"tokenizer"}), "tokenizer": tok})
    train_dl, val_dl = from_sft_strings(train, tok, data_cfg) if train is not None else \
        from_sft_json(corpus, tok, data_cfg)
    if model is None:
        model = Transformer(C.model_config(run, tok.vocab_size))
    train_cfg = train_config(run, out)
    if held_out:
        train_cfg = _scored_on(train_cfg, held_out, out, data_cfg.template)
    runs.write_config(C.resolved_dict(run, model.cfg, train_cfg), out)
    t0 = time.time()
    summary = SFTTrainer(model, train_dl, val_dl, tok.vocab_size, train_cfg, tokenizer=tok).train(resume_from=resume)
    best = summary.get("best_val_loss")
    print(f"sft: step {summary['step']}, best val loss {best if best is None else round(best, 4)}, "
          f"{time.time() - t0:.0f}s -> {out}")
    if held_out:
        scores = summary.get("tasks") or {}
        if "synthetic/exact_match" not in scores:  # nothing was trained, or eval_tasks left synthetic out
            from ..evaluation import evaluate_tasks
            from ..evaluation import scores as flat

            scores = flat(evaluate_tasks(model, tok, [_held_out_task(out, data_cfg.template)]))
        print(f"exact match: {scores['synthetic/exact_match']:.0%} on {len(held_out)} held-out prompts; "
              f"{scores['synthetic/exact_match_follow_up']:.0%} as the second question of a chat")
    return 0


def _held_out_task(out: Path, template) -> dict:
    return {"name": "synthetic", "data": str(out / "data" / "heldout.jsonl"), "template": template.to_dict()}


def _scored_on(train_cfg, held_out: list[dict], out: Path, template):
    """``train_cfg`` with its ``synthetic`` eval task scoring the held-out prompts (saved as
    out/data/heldout.jsonl, none of them seen in training) in the run's chat template, so the
    score is reported at every eval (the sft recipe lists the task)."""
    import json

    from ..atomic import atomic_write_text
    from ..evaluation import parse_spec

    atomic_write_text(out / "data" / "heldout.jsonl", "".join(json.dumps(s) + "\n" for s in held_out))
    tasks = [_held_out_task(out, template) | parse_spec(t)[1] if parse_spec(t)[0] == "synthetic" else t
             for t in train_cfg.eval_tasks]
    return C.build(type(train_cfg), "train", {**train_cfg.to_dict(), "eval_tasks": tasks})


def cmd_generate(args) -> int:
    """Sample a completion of ``--prompt`` from a run's model."""
    import torch

    from ..inference import complete

    loaded = load_source(args)
    model, tok = loaded.model, loaded.tokenizer

    g = torch.Generator().manual_seed(args.seed)
    print(complete(model, tok, args.prompt, max_new=args.max_new, temperature=args.temperature, top_k=args.top_k,
                   stop_ids=[tok.eos_id] if tok.eos_id is not None else None, generator=g, compile=args.compile))
    return 0


def print_reply(session, line: str) -> None:
    """Stream the reply to ``line``. Ctrl-C stops the reply, not the chat: what was shown stays
    in the history and the next question follows it."""
    pieces = session.ask_stream(line)
    try:
        for piece in pieces:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        pieces.close()
        print(" [stopped]", end="")
    print()


def cmd_chat(args) -> int:
    """A REPL over ChatSession: /reset, /system TEXT, /exit. Piped stdin: one message per line,
    only the replies are printed."""
    from ..sft import ChatSession

    loaded = load_source(args)
    session = ChatSession(loaded.model, loaded.tokenizer, template=chat_template(loaded, args.template),
                          system=args.system, max_new=args.max_new, temperature=args.temperature, top_k=args.top_k,
                          compile=args.compile)
    tty = sys.stdin.isatty()
    if tty:
        print("chat: /reset forgets the conversation, /system TEXT sets the system prompt, /exit quits; "
              "Ctrl-C stops a reply")
    while True:
        if tty:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session.reset()
            continue
        if line.startswith("/system"):
            session.system = line[len("/system"):].strip() or None
            session.reset()
            continue
        if not tty:  # piped: exactly one line per reply, so a script can pair questions and answers
            print(session.ask(line).replace("\n", " "), flush=True)
            continue
        print_reply(session, line)
    return 0
