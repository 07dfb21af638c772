"""``ttk sft``, ``ttk generate`` and ``ttk chat``: fine-tune and use a run."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..store import load, runs
from . import config as C
from . import runfolder as R
from .builtin import synthetic_split
from .source import chat_template, load_source


def add_lora(model, run: dict):
    """Adapters per the run's ``lora:`` section (none without one) on the run's init, recorded as
    their base (``apply_lora``: a local path made absolute, a Hub repo id as it is)."""
    if run["lora"] is None:
        return model
    if not run["init"]:
        raise ValueError("lora: adapters need a base model to adapt; give --init RUN or --model PATH "
                         "(or --lora.r 0 to train every weight)")
    from ..lora import apply_lora

    return apply_lora(model, run["lora"], base=run["init"])


def cmd_sft(args, overrides: dict) -> int:
    """Fine-tune on conversations (built-in synthetic tasks or a JSON file); with the synthetic
    tasks, the exact match on held-out prompts is scored at every eval and reported at the end."""
    import torch

    from ..model import Transformer
    from ..sft import SFTTrainer, from_sft_json, from_sft_strings

    with R.open_run(args, overrides, "sft", "sft") as (run, _, out):
        resume = R.resume_target(args, runs.checkpoint_dir(out))
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
        if run["init"]:  # a run, a checkpoint or a pretrained model (under LoRA, the base of its adapters)
            init = load(run["init"])
            model, tok = init.model.train(), init.tokenizer
            runs.save_tokenizer(tok, out)
        else:
            tok = sft_tokenizer(run, out, train, resuming=resume is not None)

        data_cfg = C.build(type(data_cfg), "data", {**data_cfg.model_dump(exclude={"tokenizer"}), "tokenizer": tok})
        train_dl, val_dl = from_sft_strings(train, tok, data_cfg) if train is not None else \
            from_sft_json(corpus, tok, data_cfg)
        train_cfg = R.train_config(run, out)
        if held_out:
            train_cfg = _scored_on(train_cfg, held_out, out, data_cfg.template)
        torch.manual_seed(train_cfg.seed)  # the initial weights (and adapters) are part of what a seed reproduces
        if model is None:
            model = Transformer(C.model_config(run, tok.vocab_size))
        add_lora(model, run)
        t0 = time.time()
        trainer = SFTTrainer(model, train_dl, val_dl, tok.vocab_size, train_cfg, tokenizer=tok,
                             data_config=R.data_settings(run))
        summary = trainer.train(resume_from=resume, on_start=R.config_writer(run, out, model.cfg, train_cfg))
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


def sft_tokenizer(run: dict, out: Path, train: list[dict] | None, resuming: bool):
    """The SFT run's tokenizer: out/tokenizer.json when it was made from what is asked now
    (runfolder.reusable), else data.tokenizer, else BPE trained on the conversations (up to 1000
    of them, any schema, rendered with the run's template)."""
    from ..sft.loaders import read_json_samples
    from ..sft.render import to_messages
    from ..tokenizer import RustBPETokenizer, load_tokenizer

    ex, data_cfg = run["extras"], run["data"]
    given = ex["tokenizer"]
    if given:
        wanted = {"tokenizer": os.path.abspath(given), "digest": R.input_digest(given)}
    else:
        source = {k: ex[k] for k in ("n_samples", "tasks", "multi_turn")} if train is not None else \
            R.files_record([ex["corpus"]])
        wanted = {"corpus": ex["corpus"], **source, "vocab_size": int(ex["vocab_size"]),
                  "template": data_cfg.template.to_dict()}
    if R.reusable(out, runs.TOKENIZER, wanted, resuming):
        return load_tokenizer(out / runs.TOKENIZER)
    if given:
        tok = load_tokenizer(given)
    else:
        samples = (train if train is not None else read_json_samples(ex["corpus"]))[:1000]
        texts = [data_cfg.template.format_messages(to_messages(s, i, data_cfg.schema))[0]
                 for i, s in enumerate(samples)]
        tok = RustBPETokenizer().train(texts, vocab_size=int(ex["vocab_size"]))
    runs.save_tokenizer(tok, out)
    runs.record_made_from(out, runs.TOKENIZER, wanted)
    return tok


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


SKIPPED = object()  # a line of input that was not text


def read_line(stdin):
    """The next line of ``stdin`` as text; None at the end; ``SKIPPED`` (with a message on
    stderr) for a line that is not UTF-8 text, so stray binary bytes cost that line, not the
    chat. Read as bytes where the stream has them: a text stream would raise at the bad byte."""
    raw = stdin.buffer.readline() if hasattr(stdin, "buffer") else stdin.readline()
    if not raw:
        return None
    try:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line.encode("utf-8")  # a text stream with errors="surrogateescape" hands bad bytes on as surrogates
    except UnicodeError as e:
        print(f"chat: skipped a line that is not UTF-8 text ({e.reason} at position {e.start}); "
              "type or pipe UTF-8 text", file=sys.stderr, flush=True)
        return SKIPPED
    return line


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
        line = read_line(sys.stdin)
        if line is None:
            break
        if line is SKIPPED:
            if not tty:
                print(flush=True)  # piped: still one output line per input line
            continue
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
