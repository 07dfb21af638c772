"""Run folders end to end at tiny sizes: tokenizer -> prepare -> train -> resume -> generate -> eval,
the built-in corpora, SFT and chat over piped stdin."""

from __future__ import annotations

import json

import torch
import yaml
from cli_helpers import QUIET, TINY_MODEL, run_main, run_module

from transformer_toolkit import Transformer
from transformer_toolkit.cli.builtin import stdlib_files
from transformer_toolkit.store import load

TEXT = "\n".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400))
TRAIN = [*QUIET, *TINY_MODEL, "--data.seq_len", "32", "--data.batch_size", "4", "--train.grad_accum_steps", "1",
         "--train.eval_every", "2", "--train.eval_iters", "2", "--train.save_every", "2", "--train.warmup_steps", "1",
         "--samples"]


def test_round_trip_and_resume(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    rc, out, _ = run_main(capsys, "tokenizer", corpus, "--vocab-size", "320", "--out", tmp_path / "tok.json")
    assert rc == 0 and (tmp_path / "tok.json").is_file()
    rc, out, _ = run_main(capsys, "prepare", corpus, "--tokenizer", tmp_path / "tok.json",
                          "--out", tmp_path / "tokens.bin", "--split", "0.9")
    assert rc == 0 and (tmp_path / "tokens.train.npy").is_file() and (tmp_path / "tokens.val.npy").is_file()

    run = tmp_path / "run"
    args = ["train", "--out", run, "--data.corpus", tmp_path / "tokens.bin", "--data.tokenizer", tmp_path / "tok.json",
            *TRAIN]
    rc, out, err = run_main(capsys, *args, "--train.max_steps", "4")
    assert rc == 0, err
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "checkpoints/best.pt", "checkpoints/step_4.pt"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["dim"] == 32 and cfg["model"]["vocab_size"] == 320 and cfg["train"]["max_steps"] == 4
    assert cfg["train"]["ckpt_dir"] == str(run / "checkpoints") and "head_dim" in cfg["model"]  # fully resolved

    # the same command with a larger max_steps continues from step 4 instead of starting over
    # (a fresh start would rewrite step_2.pt)
    step2 = (run / "checkpoints" / "step_2.pt").stat().st_mtime_ns
    rc, out, err = run_main(capsys, *args, "--train.max_steps", "6")
    assert rc == 0, err
    assert "step 6" in out and (run / "checkpoints" / "step_6.pt").is_file()
    assert (run / "checkpoints" / "step_2.pt").stat().st_mtime_ns == step2
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 6 in steps and [s for s in steps if s is not None] == sorted(s for s in steps if s is not None)
    rc, _, err = run_main(capsys, *args, "--train.max_steps", "6", "--resume", "none")
    assert rc == 2 and "--resume auto" in err

    # from_checkpoint on the folder and on best.pt rebuilds the same model
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ref = Transformer(best["model_config"])
    ref.load_state_dict(best["model"])
    x = torch.randint(0, 320, (2, 16))
    for src in (run, run / "checkpoints" / "best.pt"):
        model = Transformer.from_checkpoint(src)
        assert torch.equal(model(x)[0], ref.eval()(x)[0])
    loaded = load(run)
    assert loaded.tokenizer.vocab_size == 320 and loaded.run_config["name"] == "quickstart"

    rc, out, err = run_main(capsys, "generate", "--run", run, "--prompt", "def f1", "--max-new", "5")
    assert rc == 0 and out.startswith("def f1"), err
    rc, out_c, err = run_main(capsys, "generate", "--run", run, "--prompt", "def f1", "--max-new", "5", "--compile")
    assert rc == 0 and out_c == out, err  # same seed, same sample: the compiled step is the same function
    rc, out, err = run_main(capsys, "eval", "--run", run, "--data", corpus)
    assert rc == 0 and "perplexity" in out, err
    ppl_text = float(out.split("perplexity")[1])
    rc, out, _ = run_main(capsys, "eval", "--run", run, "--data", tmp_path / "tokens.val.npy")
    assert rc == 0 and 1 < ppl_text < 320 and 1 < float(out.split("perplexity")[1]) < 320


def test_builtin_stdlib_corpus_is_deterministic_and_capped():
    a, b = stdlib_files(0.3), stdlib_files(0.3)
    assert a == b and a
    assert all(p.endswith(".py") and "site-packages" not in p and "/test/" not in p for p in a)
    import os
    assert sum(os.path.getsize(p) for p in a) <= 0.3e6


def test_train_builtin_default(tmp_path, capsys):
    rc, out, err = run_main(capsys, "train", "--out", tmp_path / "qs", *TRAIN, "def ", "--max-new", "4",
                            "--train.max_steps", "2", "--data.max_mb", "0.1", "--data.vocab_size", "300")
    assert rc == 0, err
    assert "--- 'def '" in out and (tmp_path / "qs" / "checkpoints" / "best.pt").is_file()
    assert yaml.safe_load((tmp_path / "qs" / "config.yaml").read_text())["data"]["corpus"] == "builtin:python-stdlib"


def test_sft_builtin_then_chat(tmp_path, capsys):
    run = tmp_path / "sft"
    rc, out, err = run_main(capsys, "sft", "--out", run, *QUIET, "--train.max_steps", "3", "--train.eval_every", "3",
                            "--data.n_samples", "200", "--data.n_eval", "4", "--train.eval_iters", "1")
    assert rc == 0, err
    assert "exact match:" in out and "on 4 held-out prompts" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["template"]["preset"] == "chatml"

    stdin = "reverse: cat dog\n/system be brief\n/reset\nadd: 1 + 2\n/exit\nnever asked\n"
    r = run_module("chat", "--run", run, "--max-new", "3", stdin=stdin)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2  # two replies, nothing else on stdout when piped
    compiled = run_module("chat", "--run", run, "--max-new", "3", "--compile", stdin=stdin)
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == r.stdout  # greedy replies: the compiled step is the same function


def test_ctrl_c_stops_the_reply_not_the_chat(capsys):
    from transformer_toolkit.cli.use import print_reply

    class Session:
        closed = False

        def ask_stream(self, line):
            def pieces():
                try:
                    yield "one"
                    yield " two"
                    raise KeyboardInterrupt  # Ctrl-C while the model computes the next token
                finally:
                    Session.closed = True
            return pieces()

    print_reply(Session(), "hi")  # returns: the REPL goes on to the next question
    assert capsys.readouterr().out == "one two [stopped]\n" and Session.closed
