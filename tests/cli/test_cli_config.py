"""The ttk entry points, recipes and error handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_main, run_module

from transformer_toolkit import TrainConfig, Transformer, TransformerConfig
from transformer_toolkit.cli import config as C

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_version_and_help():
    r = run_module("--version")
    assert r.returncode == 0 and "transformer-toolkit" in r.stdout
    r = run_module("--help")
    assert r.returncode == 0
    for cmd in ("tokenizer", "prepare", "train", "sft", "generate", "chat", "eval"):
        assert cmd in r.stdout


def test_every_recipe_ships():
    names = {p.stem for p in RECIPES}
    assert {"quickstart", "gpt2-small", "llama-small", "moe-small", "mla-small", "sft"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_builds(path):
    kind = {"sft": "sft", "sft-hard": "sft", "dpo": "dpo", "grpo": "grpo"}.get(path.stem, "train")
    run = C.resolve(C.read_yaml(path), kind)
    assert isinstance(run["train"], TrainConfig)
    assert (run["dpo"] is not None) == (kind == "dpo")
    assert (run["grpo"] is not None) == (kind == "grpo")
    # build the real architecture at a tiny width: every variant string in the recipe must be valid
    tiny = {**run["model_raw"], "dim": 32, "n_layers": 1, "hidden_dim": 64, "vocab_size": 300}
    if "moe_hidden_dim" in tiny:
        tiny["moe_hidden_dim"] = 32
    heads = tiny.get("n_heads", 8)
    tiny["n_heads"] = 2 if heads % 2 == 0 else 1
    if tiny.get("n_kv_heads"):
        tiny["n_kv_heads"] = 1
    cfg = TransformerConfig(**tiny)
    for k in ("attn", "ffn", "norm", "pos_enc"):
        assert getattr(cfg, k) == run["model"].to_dict()[k]
    import torch
    logits, _ = Transformer(cfg)(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, 300)


def test_gpt2_recipe_is_gpt2_style():
    m = C.resolve(C.read_yaml("gpt2-small"))["model"]
    assert (m.norm, m.pos_enc, m.ffn, m.attn, m.tie_weights) == ("layernorm", "learned", "ffn", "mha", True)
    m = C.resolve(C.read_yaml("llama-small"))["model"]
    assert (m.norm, m.pos_enc, m.ffn, m.attn) == ("rmsnorm", "rope", "swiglu", "gqa")


def test_overrides_parse_yaml_values():
    o = C.parse_overrides(["--train.max_steps", "30", "--train.lr=3e-4", "--model.tie_weights", "false"])
    assert o == {"train.max_steps": 30, "train.lr": 3e-4, "model.tie_weights": False}
    run = C.resolve(C.merge(C.read_yaml("quickstart"), o))
    assert run["train"].max_steps == 30 and run["train"].lr == 3e-4


@pytest.mark.parametrize("argv, expected", [
    (["train", "--model.dimm", "64"], "did you mean 'dim'"),
    (["train", "--train.max_step", "3"], "did you mean 'max_steps'"),
    (["train", "--data.seq_lenn", "3"], "did you mean 'seq_len'"),
    (["train", "--modle.dim", "3"], "did you mean 'model'"),
    (["train", "--model.attn", "gqq"], "Did you mean 'gqa'"),
    (["train", "--train.lr", "-1"], "lr must be > 0"),
])
def test_mistakes_print_one_line_and_exit_2(capsys, argv, expected):
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_files_exit_2(capsys, tmp_path):
    rc, _, err = run_main(capsys, "train", "--config", tmp_path / "nope.yaml")
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_main(capsys, "generate", "--run", tmp_path / "nothing", "--prompt", "x")
    assert rc == 2 and "nothing" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_main(capsys, "train", "--out", tmp_path / "r", "--data.corpus", tmp_path / "missing.txt")
    assert rc == 2 and "missing.txt" in err


def test_subprocess_error_has_no_traceback_unless_debug(tmp_path):
    r = run_module("train", "--model.dimm", "64", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "did you mean 'dim'" in r.stderr
    r = run_module("--debug", "train", "--model.dimm", "64", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr
