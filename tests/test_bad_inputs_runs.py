"""Bad inputs and faults around runs, configs and checkpoints (issue 19, item 3): each gets one
clear line naming the problem (exit status 2 from ``ttk``) or the correct behaviour, and nothing
already saved is lost. Case numbers are the issue's."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transformer_toolkit import DataConfig, TrainConfig, TransformerConfig, atomic, save_binary
from transformer_toolkit.cli import main
from transformer_toolkit.cli.config import merge, resolve
from transformer_toolkit.cli.runfolder import as_base
from transformer_toolkit.model.config import VARIANT_RANGES
from transformer_toolkit.sft import SFTDataConfig
from transformer_toolkit.sft.render import render, truncate
from transformer_toolkit.store import atomic_save, latest_ckpt, load, runs
from transformer_toolkit.tokenizer import RustBPETokenizer
from transformer_toolkit.tokenizer.templates import ChatTemplate

NAN, INF = float("nan"), float("inf")


def ttk(capsys, *argv) -> tuple[int, str, str]:
    """``ttk ARGV`` in process: (status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# 8: every numeric config field is finite and in range -----------------------------------------
BAD_NUMBERS = [
    *[(TransformerConfig, f, v) for f in ("eps", "init_std", "rope_theta") for v in (NAN, INF, 0.0, -1.0)],
    *[(TransformerConfig, f, v) for f in ("hidden_dim", "head_dim") for v in (0, -4)],
    (TransformerConfig, "dropout", NAN), (TransformerConfig, "dropout", 1.0),
    *[(TrainConfig, f, v) for f in ("weight_decay", "grad_clip", "min_lr") for v in (NAN, -INF, -0.1)],
    *[(TrainConfig, f, v) for f in ("eps", "lr") for v in (NAN, INF, 0.0)],
    (TrainConfig, "beta2", NAN), (TrainConfig, "beta1", 1.0),
    (DataConfig, "split", NAN), (DataConfig, "split", 1.0), (DataConfig, "stride", 0),
    (SFTDataConfig, "split", NAN), (SFTDataConfig, "pad_id", -1), (SFTDataConfig, "seq_len", 1),
]
MOE_NUMBERS = [("moe_aux_weight", NAN), ("moe_aux_weight", -0.5), ("moe_hidden_dim", 0), ("moe_hidden_dim", -8)]


@pytest.mark.parametrize("cls,field,value", BAD_NUMBERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_number_out_of_range_is_refused_with_its_name(cls, field, value):
    base = {"vocab_size": 97, "dim": 32, "n_heads": 4} if cls is TransformerConfig else {}
    with pytest.raises(ValueError, match=field):
        cls(**base, **{field: value})


@pytest.mark.parametrize("field,value", MOE_NUMBERS)
def test_moe_numbers_are_checked_when_the_variant_reads_them(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**{"vocab_size": 97, "dim": 32, "n_heads": 4, "ffn": "moe", "n_experts": 4, "top_k": 1,
                             field: value})


# checked by their own rules (they depend on other fields): must be even / a step count or a bool
CHECKED_ELSEWHERE = {"rope_head_dim", "hf_push_every_n"}


@pytest.mark.parametrize("cls", [TransformerConfig, TrainConfig, DataConfig, SFTDataConfig], ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_range(cls):
    """A new int/float field cannot be added without saying its range."""
    def numeric(annotation) -> bool:
        args = typing.get_args(annotation) or (annotation,)
        return any(a in (int, float) for a in args)

    ranged = set(cls.RANGES) | (set(VARIANT_RANGES) if cls is TransformerConfig else set())
    fields = {name for name, f in cls.model_fields.items() if numeric(f.annotation)}
    assert fields and fields - ranged - CHECKED_ELSEWHERE == set()


# runs: tiny models on a tiny corpus ----------------------------------------------------------
TEXT = "\n".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400))
QUIET = ["--train.progress", "none", "--train.plot", "false", "--train.interruptible", "false"]
TINY = ["--model.dim", "32", "--model.n_layers", "1", "--model.n_heads", "2", "--model.hidden_dim", "64",
        "--data.seq_len", "32", "--data.batch_size", "4", "--data.vocab_size", "300", "--train.grad_accum_steps", "1",
        "--train.eval_every", "2", "--train.eval_iters", "1", "--train.save_every", "2", "--train.warmup_steps", "1",
        "--train.precision", "fp32"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def train(capsys, out, *extra, corpus=None, expect: int = 0) -> tuple[str, str]:
    """``ttk train --out OUT`` with tiny settings (on ``corpus`` when given) and ``extra``."""
    rc, stdout, err = ttk(capsys, "train", "--out", out, *QUIET, *([] if corpus is None else ["--data.corpus", corpus]),
                          *extra, "--samples")
    assert rc == expect, err
    return stdout, err


def ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_nan_on_the_command_line_is_one_line(capsys, tmp_path, corpus):
    rc, _, err = ttk(capsys, "train", "--out", tmp_path / "run", "--data.corpus", corpus, *TINY, *QUIET,
                     "--train.max_steps", "1", "--train.weight_decay", "nan", "--samples")
    assert rc == 2 and "weight_decay" in err and "finite" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# 3: two writers of one checkpoint path, two runs in one folder ------------------------------
def test_concurrent_saves_of_one_path_never_mix(tmp_path, monkeypatch):
    """Writer A is paused half-way through its file while writer B saves the same path: each
    write has its own temp file, so the result is one writer's complete checkpoint."""
    import threading

    real_save = torch.save
    half_written, b_done = threading.Event(), threading.Event()

    def slow_save(obj, f):
        if obj["who"] == "a":
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            half_written.set()
            b_done.wait(10)
            f.write(data[len(data) // 2:])
        else:
            real_save(obj, f)

    monkeypatch.setattr(torch, "save", slow_save)
    path = tmp_path / "step_1.pt"
    a = threading.Thread(target=atomic_save, args=({"who": "a", "w": torch.zeros(50_000)}, path))
    a.start()
    half_written.wait(10)
    atomic_save({"who": "b", "w": torch.ones(50_000)}, path)
    b_done.set()
    a.join()
    got = ckpt(path)
    assert torch.equal(got["w"], torch.zeros(50_000) if got["who"] == "a" else torch.ones(50_000))
    assert [p.name for p in tmp_path.iterdir()] == ["step_1.pt"]  # no temp file left behind


def test_a_second_run_in_a_locked_folder_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    with runs.locked(out):  # another process training there (flock: a second descriptor conflicts)
        rc, _, err = ttk(capsys, "train", "--out", out, "--data.corpus", corpus, *TINY, *QUIET, "--samples")
    assert rc == 2 and "in use by another process" in err and str(os.getpid()) in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written, nothing taken


def test_a_killed_run_leaves_no_lock_that_blocks(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    # the holder loads atomic.py alone (it imports nothing of the package): a fast start
    holder = subprocess.Popen([sys.executable, "-c", "import importlib.util as u, time\n"
                               f"spec = u.spec_from_file_location('atomic', {atomic.__file__!r})\n"
                               "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
                               f"with m.exclusive_lock({str(out / runs.LOCK)!r}, 'run'):\n"
                               "    print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = ttk(capsys, "train", "--out", out, *TINY, *QUIET, "--samples")
        assert rc == 2 and f"pid {holder.pid}" in err
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    assert (out / runs.LOCK).is_file()
    train(capsys, out, *TINY, "--train.max_steps", "1", corpus=corpus)
    assert (out / "checkpoints" / "step_1.pt").is_file()


# 10: a seed reproduces a run, initial weights included -------------------------------------
def test_the_same_seed_gives_the_same_weights(tmp_path, corpus, capsys):
    for name in ("a", "b"):
        torch.rand(7)  # whatever ran before must not matter
        train(capsys, tmp_path / name, *TINY, "--train.seed", "7", "--train.max_steps", "1", corpus=corpus)
    a, b = (ckpt(tmp_path / n / "checkpoints" / "step_1.pt")["model"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# 4: resuming from an earlier checkpoint starts a new trajectory ----------------------------
def test_resume_from_an_earlier_checkpoint_prunes_by_the_new_trajectory(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    d = out / "checkpoints"
    train(capsys, out, *TINY, "--train.max_steps", "6", corpus=corpus)  # step_2, step_4, step_6
    old = {n: ckpt(d / f"step_{n}.pt")["model"] for n in (4, 6)}
    train(capsys, out, "--resume", d / "step_2.pt", "--train.max_steps", "4", "--train.keep_last_n", "1",
          "--train.lr", "0.01")
    assert [p.name for p in d.glob("step_*.pt")] == ["step_4.pt"]  # this run's newest is kept
    assert ckpt(d / "step_4.pt")["train_config"]["lr"] == 0.01
    aside = d / "abandoned" / "after_step_2"
    for n, weights in old.items():  # the abandoned trajectory is kept, out of the way
        moved = ckpt(aside / f"step_{n}.pt")["model"]
        assert all(torch.equal(moved[k], weights[k]) for k in weights)
    assert latest_ckpt(d) == d / "step_4.pt"  # what --resume auto continues


# 5: a rerun starts from the run's own config.yaml, written only once training starts --------
def test_a_rerun_keeps_the_runs_settings_and_a_failed_start_changes_nothing(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    train(capsys, out, *TINY, "--train.max_steps", "2", corpus=corpus)
    saved = (out / "config.yaml").read_bytes()
    # the checkpoints cannot take another architecture: the start fails, config.yaml stays
    _, err = train(capsys, out, "--model.n_layers", "2", "--train.max_steps", "4", expect=2)
    assert "does not fit this model" in err and (out / "config.yaml").read_bytes() == saved
    # no --model/--data repeated: the run's own settings, plus the overrides (case 7: the changed
    # data settings are listed with the train ones)
    stdout, _ = train(capsys, out, "--train.max_steps", "4", "--data.batch_size", "2", "--data.seed", "3",
                      "--train.progress", "lines")
    assert "resumed from" in stdout and "step 4" in stdout
    changed = stdout.split("resuming with changed settings: ")[1].splitlines()[0]
    assert "max_steps 2 -> 4" in changed and "data.batch_size 4 -> 2" in changed and "data.seed 0 -> 3" in changed
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["model"]["dim"], cfg["data"]["corpus"], cfg["train"]["max_steps"]) == (32, str(corpus), 4)


def test_a_rerun_before_the_first_checkpoint_derives_the_sizes_again(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    train(capsys, out, *TINY, "--train.max_steps", "1", corpus=corpus)
    base = as_base(runs.read_config(out))  # config.yaml has every derived field filled in
    assert "head_dim" not in base["model"] and "hidden_dim" in base["model"]  # hidden_dim was given (64)
    assert resolve(merge(base, {"model.dim": 64}))["model"].head_dim == 32


# 7: files of a run folder made from other inputs are made again, or refused ----------------
def test_a_changed_corpus_is_refused_under_checkpoints_and_tokenized_again(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    train(capsys, out, *TINY, "--train.max_steps", "2", corpus=corpus)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("return", "yield"), encoding="utf-8")
    # the tokenizer the checkpoints were trained with was made from the old corpus
    _, err = train(capsys, out, "--train.max_steps", "4", corpus=other, expect=2)
    assert "tokenizer.json was made from other inputs" in err and "--data.tokenizer" in err
    # keeping that tokenizer explicitly: data/tokens.bin is made again from the new corpus
    stdout, _ = train(capsys, out, "--train.max_steps", "4", "--data.tokenizer", out / "tokenizer.json",
                      "--train.progress", "lines", corpus=other)
    assert "making it again" in stdout and f"data.corpus {str(corpus)!r} -> {str(other)!r}" in stdout
    assert runs.made_from(out, "data/tokens.bin")["corpus"] == str(other)


def test_a_tokenizer_left_by_a_failed_start_is_not_reused(tmp_path, corpus, capsys):
    out, empty = tmp_path / "run", tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    # a tokenizer is made from the empty corpus (bytes and specials only), then the start fails
    _, err = train(capsys, out, *TINY, corpus=empty, expect=2)
    assert "the corpus is empty" in err and (out / "tokenizer.json").is_file() and not (out / "config.yaml").exists()
    train(capsys, out, *TINY, "--train.max_steps", "1", corpus=corpus)  # the same vocab_size asked, another corpus
    assert ckpt(out / "checkpoints" / "step_1.pt")["model_config"]["vocab_size"] == 300


# a run folder shared by the tests that only read it (copied when a test changes it) -----------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pretraining run (step_2, step_4, best.pt) and its corpus."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    rc = main([str(a) for a in ("train", "--out", root / "run", *QUIET, "--data.corpus", root / "corpus.txt", *TINY,
                                "--train.max_steps", "4", "--samples")])
    assert rc == 0
    return root / "run"


@pytest.fixture
def run_copy(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def one_line(err: str) -> str:
    """The error line of a refused command (and no traceback)."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("ttk ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# 9 and the config tracebacks: YAML refused with the file, the line and the key named ----------
BAD_YAML = [
    ("name: x\nmodel:\n  dim: 32\ntrain:\n  lr: 0.001\nmodel:\n  dim: 64\n", "line 6: duplicate key 'model'"),
    ("name: x\nmodel:\n  dim: 32\n  n_layers: 1\n  dim: 64\n", "line 5: duplicate key 'dim'"),
    ("name: x\ndata:\n  tasks: {a: 1, a: 2}\n", "duplicate key 'a'"),
    ("name: x\nmodel: [dim: 32\n", "not valid YAML (line 3"),
    ("name: x\nmodel: 5\n", "section 'model' must be a mapping"),
    ("- model\n- train\n", "a run config must be a mapping"),
]


@pytest.mark.parametrize("text,error", BAD_YAML, ids=range(len(BAD_YAML)))
def test_a_bad_run_config_is_one_line(tmp_path, corpus, capsys, text, error):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    rc, _, err = ttk(capsys, "train", "--config", path, "--out", tmp_path / "run", "--data.corpus", corpus, *TINY,
                     *QUIET, "--train.max_steps", "1", "--samples")
    assert rc == 2 and error in one_line(err) and str(path) in err
    assert not (tmp_path / "run").exists()


def test_an_override_of_a_section_that_is_not_a_mapping_is_refused():
    with pytest.raises(ValueError, match="section 'model' of the config is 5"):
        merge({"model": 5}, {"model.dim": 16})
    assert merge({"model": None}, {"model.dim": 16}) == {"model": {"dim": 16}}  # an empty section is fine


@pytest.mark.parametrize("text,error", [("model: [1,\n", "not valid YAML"), ("data: oops\n", "section 'data'"),
                                        ("model:\n  dim: 1\nmodel: {}\n", "duplicate key 'model'")])
def test_a_damaged_config_yaml_in_a_run_folder_is_one_line(run_copy, capsys, text, error):
    (run_copy / "config.yaml").write_text(text, encoding="utf-8")
    for argv in (["generate", "--run", run_copy, "--prompt", "def", "--max-new", "2"],
                 ["train", "--out", run_copy, *QUIET, "--samples"]):
        rc, _, err = ttk(capsys, *argv)
        assert rc == 2 and error in one_line(err) and "config.yaml" in err


# damaged checkpoints ---------------------------------------------------------------------------
def test_a_truncated_checkpoint_is_one_line(run_copy, capsys):
    step = run_copy / "checkpoints" / "step_2.pt"
    step.write_bytes(step.read_bytes()[:3000])
    for argv in (["generate", "--run", step, "--prompt", "def"],
                 ["eval", "--run", step, "--data", run_copy / "config.yaml"],
                 ["train", "--out", run_copy, "--resume", step, *QUIET, "--train.max_steps", "6", "--samples"]):
        rc, _, err = ttk(capsys, *argv)
        assert rc == 2 and "not a readable checkpoint (truncated or damaged" in one_line(err)


def test_a_damaged_best_pt_falls_back_to_the_newest_step(run_copy, capsys):
    (run_copy / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(UserWarning, match="best.pt is not a readable checkpoint.*using .*step_4.pt"):
        loaded = load(run_copy)
    assert loaded.checkpoint.name == "step_4.pt"
    rc, out, err = ttk(capsys, "generate", "--run", run_copy, "--prompt", "def", "--max-new", "2")
    assert rc == 0 and out.startswith("def"), err


# ttk eval on ids the model cannot take ----------------------------------------------------------
@pytest.mark.parametrize("ids,error", [([5, 6, 7, 300, 8], "token id 300, outside this tokenizer's vocabulary (300)"),
                                       ([5, -1, 7, 8], "token id -1, outside")])
def test_eval_on_ids_outside_the_vocabulary(trained, tmp_path, capsys, ids, error):
    path = tmp_path / "ids.npy"
    np.save(path, np.array(ids, dtype=np.int64))
    rc, _, err = ttk(capsys, "eval", "--run", trained, "--data", path)
    assert rc == 2 and error in one_line(err)


def test_eval_with_a_bad_seq_len(trained, capsys):
    rc, _, err = ttk(capsys, "eval", "--run", trained, "--data", trained.parent / "corpus.txt", "--seq-len", "-5")
    assert rc == 2 and "--seq-len must be >= 1" in one_line(err)


def test_a_token_file_whose_header_lies_about_max_id(trained, tmp_path, capsys):
    path = tmp_path / "lies.bin"
    save_binary(np.arange(2000) % 280, path, vocab_size=300)
    with open(path, "r+b") as f:  # the header's max_id (offset 28) says 10; the ids go up to 279
        f.seek(28)
        f.write((10).to_bytes(4, "little"))
    rc, _, err = ttk(capsys, "train", "--out", tmp_path / "run", "--data.corpus", path, "--data.tokenizer",
                     trained / "tokenizer.json", *TINY, *QUIET, "--train.max_steps", "2", "--samples")
    assert rc == 2 and "header says the largest is 10" in one_line(err)


# 6 and the wrong kinds of --out: refused before any work -------------------------------------
def test_outputs_never_replace_inputs(trained, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    tok = trained / "tokenizer.json"
    for argv in (["prepare", corpus, "--tokenizer", tok, "--out", corpus],
                 ["tokenizer", corpus, "--out", corpus, "--vocab-size", "300"],
                 ["prepare", corpus, "--tokenizer", tok, "--out", tok],
                 ["export", "--run", trained, "--format", "hf", "--out", trained]):
        rc, _, err = ttk(capsys, *argv)
        assert rc == 2 and "is also an input of this command" in one_line(err)
    assert corpus.read_text(encoding="utf-8") == TEXT


def test_an_existing_file_of_another_kind_needs_force(trained, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    for argv, what in ((["export", "--run", trained, "--format", "gguf"], "not a GGUF file"),
                       (["prepare", trained.parent / "corpus.txt", "--tokenizer", trained, "--split", "0.9"],
                        "not a token file"),
                       (["tokenizer", trained.parent / "corpus.txt", "--vocab-size", "300"], "not a tokenizer.json")):
        notes.write_text("my notes", encoding="utf-8")
        rc, _, err = ttk(capsys, *argv, "--out", notes)
        assert rc == 2 and what in one_line(err) and "--force" in err
        assert notes.read_text(encoding="utf-8") == "my notes"
        rc, _, err = ttk(capsys, *argv, "--out", notes, "--force")
        assert rc == 0 and notes.read_bytes() != b"my notes", err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "todo.txt").write_text("x", encoding="utf-8")  # a folder of the user's, not a model
    rc, _, err = ttk(capsys, "export", "--run", trained, "--format", "hf", "--out", tmp_path / "mine")
    assert rc == 2 and "not a model folder" in one_line(err)


def test_a_file_where_a_folder_goes_and_the_reverse(trained, tmp_path, capsys):
    a_file, a_folder = tmp_path / "file", tmp_path / "folder"
    a_file.write_text("x", encoding="utf-8")
    a_folder.mkdir()
    corpus = trained.parent / "corpus.txt"
    cases = [(["train", "--out", a_file, *TINY, *QUIET, "--samples"], "is a file, and a run needs a folder"),
             (["export", "--run", trained, "--format", "hf", "--out", a_file], "is a file, and a model folder"),
             (["export", "--run", trained, "--format", "gguf", "--out", a_folder], "is a folder, and a GGUF"),
             (["prepare", corpus, "--tokenizer", trained, "--out", a_folder], "is a folder, and a token file"),
             (["prepare", corpus, "--tokenizer", trained, "--out", a_file / "x.bin"], "is a file, not a folder")]
    for argv, error in cases:
        rc, _, err = ttk(capsys, *argv)
        assert rc == 2 and error in one_line(err)
    assert a_file.read_text(encoding="utf-8") == "x" and not any(a_folder.iterdir())


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write to: mode 0555, or for root (who ignores modes) sysfs."""
    if os.geteuid() == 0:
        yield Path("/sys/kernel")
        return
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    yield folder
    folder.chmod(0o755)


def test_a_read_only_output_folder_is_one_line(trained, read_only, capsys):
    corpus = trained.parent / "corpus.txt"
    for argv in (["train", "--out", read_only / "run", "--data.corpus", corpus, *TINY, *QUIET, "--samples"],
                 ["tokenizer", corpus, "--vocab-size", "300", "--out", read_only / "tok.json"],
                 ["prepare", corpus, "--tokenizer", trained, "--out", read_only / "tokens.bin"],
                 ["export", "--run", trained, "--format", "gguf", "--out", read_only / "m.gguf"],
                 ["export", "--run", trained, "--format", "hf", "--out", read_only / "hf"]):
        rc, _, err = ttk(capsys, *argv)
        assert rc == 2 and ("denied" in one_line(err) or "not permitted" in err), err


# a second Ctrl+C while a checkpoint is written --------------------------------------------------
def test_a_second_ctrl_c_during_a_save_exits_130_with_the_checkpoint_complete(tmp_path, corpus, capsys, monkeypatch):
    """The first SIGINT arrives while step_2.pt is written (the run then saves pause.pt), the
    second half-way through pause.pt: the abort waits for the file to be complete."""
    real_save = torch.save

    def save_with_signals(obj, f):
        if obj.get("kind") == "step":
            os.kill(os.getpid(), signal.SIGINT)  # the first: finish the step, then pause
        if obj.get("kind") != "pause":
            return real_save(obj, f)
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGINT)  # the second, mid-write (the handler runs right here)
        f.write(data[len(data) // 2:])

    monkeypatch.setattr(torch, "save", save_with_signals)
    out = tmp_path / "run"
    rc, _, err = ttk(capsys, "train", "--out", out, "--data.corpus", corpus, *TINY, *QUIET,
                     "--train.interruptible", "true", "--train.max_steps", "6", "--samples")
    assert rc == 130 and "Traceback" not in err
    monkeypatch.undo()
    pause = ckpt(out / "checkpoints" / "pause.pt")
    assert pause["step"] == 2 and pause["kind"] == "pause"
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []


# SFT data of every schema, without a tokenizer; a rerun keeps the run's data ------------------
SFT_TINY = ["--model.dim", "32", "--model.n_layers", "1", "--model.n_heads", "2", "--model.hidden_dim", "64",
            "--model.max_seq", "64", "--data.seq_len", "64", "--data.batch_size", "4", "--data.vocab_size", "300",
            *QUIET[:-2], "--train.interruptible", "false", "--train.precision", "fp32", "--train.eval_every", "2",
            "--train.eval_iters", "1", "--train.save_every", "2", "--train.warmup_steps", "1",
            "--train.grad_accum_steps", "1"]
SCHEMAS = {
    "prompt_response": lambda q, a: {"prompt": q, "response": a},
    "alpaca": lambda q, a: {"instruction": q, "input": "", "output": a},
    "sharegpt": lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
}


def sft_file(path, schema: str) -> Path:
    rows = [SCHEMAS[schema](f"what is {i} plus {i + 1}", f"it is {2 * i + 1}") for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("schema", ["alpaca", "sharegpt"])
def test_sft_on_any_schema_without_a_tokenizer(tmp_path, capsys, schema):
    data = sft_file(tmp_path / "data.jsonl", schema)
    rc, out, err = ttk(capsys, "sft", "--out", tmp_path / "run", "--data.corpus", data, *SFT_TINY,
                       "--train.max_steps", "1")
    assert rc == 0 and "sft: step 1" in out, err


@pytest.mark.parametrize("rows,error", [("1\n2\n3\n", "sample 0 has an unrecognised schema (keys: int)"),
                                        ('{"question": "a", "answer": "b"}\n', "unrecognised schema (keys: ['answer'")])
def test_sft_on_data_of_no_known_schema(tmp_path, capsys, rows, error):
    (tmp_path / "data.jsonl").write_text(rows, encoding="utf-8")
    rc, _, err = ttk(capsys, "sft", "--out", tmp_path / "run", "--data.corpus", tmp_path / "data.jsonl", *SFT_TINY)
    assert rc == 2 and error in one_line(err)


def test_an_sft_rerun_keeps_its_data_and_template(tmp_path, capsys):
    data = sft_file(tmp_path / "data.jsonl", "prompt_response")
    out = tmp_path / "run"
    rc, _, err = ttk(capsys, "sft", "--out", out, "--data.corpus", data, "--data.template", "llama3", *SFT_TINY,
                     "--train.max_steps", "2")
    assert rc == 0, err
    tokenizer = (out / "tokenizer.json").read_bytes()
    rc, stdout, err = ttk(capsys, "sft", "--out", out, "--train.max_steps", "4")  # no --data.* repeated
    assert rc == 0 and "sft: step 4" in stdout and "exact match" not in stdout, err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["corpus"] == str(data) and cfg["data"]["template"]["preset"] == "llama3"
    assert (out / "tokenizer.json").read_bytes() == tokenizer
    assert ckpt(out / "checkpoints" / "step_4.pt")["data_config"]["template"]["preset"] == "llama3"


# 15: a huge SFT message is cut before it is rendered ------------------------------------------
@pytest.fixture(scope="module")
def bpe():
    return RustBPETokenizer().train([TEXT, "what is it plus the answer"] * 5, vocab_size=300)


class Watched:
    """The tokenizer, refusing to encode far more text than a row holds."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode_with_offsets(self, text: str):
        assert len(text) < 100_000, f"asked to encode {len(text):,} characters for a row of 64 tokens"
        return self.tok.encode_with_offsets(text)


def test_a_4mb_message_is_cut_before_rendering(bpe):
    huge = "the answer is " + "forty two and more " * 220_000  # 4.2 MB
    msgs = [{"role": "user", "content": "what is it"}, {"role": "assistant", "content": huge}]
    template, tok = ChatTemplate("chatml"), Watched(bpe)
    tracemalloc.start()
    try:
        token = truncate(msgs, tok, template, 64, "token")
        turn = truncate(msgs, tok, template, 64, "turn")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8e6, f"peak {peak / 1e6:.0f} MB"  # rendering it whole held ~1 GB of offsets
    assert len(token) == 64 and token.mask.any() and turn is None  # the one exchange cannot fit whole


@pytest.mark.parametrize("strategy", ["token", "turn"])
def test_cutting_early_keeps_the_same_ids(bpe, strategy):
    long = " ".join(f"word{i % 50} plus {i}" for i in range(3000))  # far past the row, cut early
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is it"},
            {"role": "assistant", "content": "it is"}, {"role": "user", "content": long},
            {"role": "assistant", "content": "the answer"}]
    template = ChatTemplate("chatml")
    got = truncate(msgs, bpe, template, 120, strategy)
    if strategy == "token":  # the first ids of the whole conversation, as rendering it all gives
        full = render(msgs, bpe, template)
        assert np.array_equal(got.ids, full.ids[:120]) and np.array_equal(got.mask, full.mask[:120])
    else:  # the first exchange, whole (the second cannot fit)
        want = render(msgs[:3], bpe, template)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.mask, want.mask)
