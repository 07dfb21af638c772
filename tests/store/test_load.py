"""``store.load``: one entry point for a model from anywhere (a run folder, a checkpoint, a
transformers or native folder, a GGUF file, a Hub repo id), and the run-folder helpers."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from hub_fake import FakeHub
from model_helpers import tiny_config

from transformer_toolkit import ChatTemplate, Transformer
from transformer_toolkit.convert import save_native
from transformer_toolkit.store import load, runs, source_kind
from transformer_toolkit.store.checkpoint import save_checkpoint
from transformer_toolkit.tokenizer import RustBPETokenizer

TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def tok():
    return RustBPETokenizer().train([TEXT * 20, "café 123 <|im_start|>"] * 5, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return Transformer(tiny_config(vocab_size=tok.vocab_size, attn="gqa")).eval()


def make_run(folder, model, tok, template=None):
    """What ttk train / ttk sft leave: config.yaml, the tokenizer and checkpoints/best.pt."""
    save_checkpoint(runs.checkpoint_dir(folder) / "best.pt", kind="best", model=model.state_dict(),
                    model_config=model.cfg.to_dict(), step=5, best_val_loss=1.5, val_loss=1.6)
    runs.save_tokenizer(tok, folder)
    runs.write_config({"name": "r", "data": {"template": template.to_dict() if template else None}}, folder)
    return folder


def sources(tmp_path, model, tok) -> dict:
    run = make_run(tmp_path / "run", model, tok)
    out = {"run": run, "checkpoint": runs.checkpoint_dir(run) / "best.pt"}
    out["transformers"] = tmp_path / "hf"
    model.save_pretrained(out["transformers"], tokenizer=tok, template="chatml")
    out["native"] = tmp_path / "native"
    save_native(model, out["native"], tokenizer=tok)
    if importlib.util.find_spec("gguf") is not None:
        out["gguf"] = tmp_path / "m.gguf"
        model.save_gguf(out["gguf"], tokenizer=tok, dtype="f32")
    return out


def test_every_kind_of_source_loads_the_same_model_and_tokenizer(tmp_path, model, tok):
    x = torch.tensor([tok.encode(TEXT)])
    ref = model(x)[0]
    for kind, path in sources(tmp_path, model, tok).items():
        assert source_kind(path) == kind
        loaded = load(path)
        assert loaded.kind == kind and not loaded.model.training
        assert torch.allclose(loaded.model(x)[0], ref, atol=1e-5), kind
        assert loaded.tokenizer.encode(TEXT) == tok.encode(TEXT), kind
        assert load(path, tokenizer=False).tokenizer is None
    assert load(tmp_path / "hf", dtype=torch.bfloat16).model.embed.weight.dtype == torch.bfloat16
    assert source_kind(tmp_path / "missing") is None


def test_templates_a_run_and_a_pretrained_model_carry(tmp_path, model, tok):
    sft = load(make_run(tmp_path / "sft", model, tok, ChatTemplate("gemma")))
    assert sft.template == ChatTemplate("gemma") and sft.chat_template() == (ChatTemplate("gemma"), True)
    pretraining = load(make_run(tmp_path / "pre", model, tok))
    assert pretraining.template is None and pretraining.chat_template() == ("chatml", True)
    model.save_pretrained(tmp_path / "hf", tokenizer=tok, template="llama3")
    hf = load(tmp_path / "hf")
    assert hf.template is None  # an export keeps the pretrained tokenizer's own Jinja template
    assert hf.chat_template() == (ChatTemplate("llama3"), True)  # chatting uses the preset it renders like
    metrics, step = runs.metrics(sft.checkpoint)
    assert step == 5 and metrics == {"val_loss": 1.6, "best_val_loss": 1.5, "perplexity": math.exp(1.5)}
    assert runs.read_config(tmp_path / "sft")["name"] == "r" and runs.read_config(tmp_path / "hf") == {}


def test_a_hub_repo_is_pulled_once_then_loaded_from_its_folder(tmp_path, model, tok):
    from transformer_toolkit.hf_hub import push_to_hub

    hub = FakeHub()
    push_to_hub("me/tiny", model, tokenizer=tok, api=hub)
    x = torch.tensor([tok.encode(TEXT)])
    loaded = load("me/tiny", save_dir=tmp_path / "cache", api=hub)
    assert loaded.kind == "transformers" and loaded.path == tmp_path / "cache"
    assert torch.allclose(loaded.model(x)[0], model(x)[0], atol=1e-5)
    pulled = len(hub.downloads)
    assert pulled > 0
    load("me/tiny", save_dir=tmp_path / "cache", api=hub)
    assert len(hub.downloads) == pulled  # the second load reads the folder, it does not download again
    pytest.importorskip("gguf")
    model.save_gguf(tmp_path / "m.gguf", tokenizer=tok, dtype="f32")
    hub.repos["me/gguf"] = {"model.gguf": (tmp_path / "m.gguf").read_bytes()}
    loaded = load("me/gguf", save_dir=tmp_path / "g", api=hub)  # a repo of one GGUF file loads that file
    assert loaded.kind == "gguf" and torch.allclose(loaded.model(x)[0], model(x)[0], atol=1e-5)


def test_bad_sources_say_what_to_do(tmp_path, model, tok):
    with pytest.raises(FileNotFoundError, match="pull_from_hub"):
        load(tmp_path / "missing")  # an absolute path is never a Hub id
    run = make_run(tmp_path / "run", model, tok)
    with pytest.raises(ValueError, match="config overrides .*max_seq.* apply to pretrained models"):
        load(run, max_seq=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load(tmp_path / "empty")
    (runs.checkpoint_dir(run) / "best.pt").unlink()
    save_checkpoint(runs.checkpoint_dir(run) / "step_3.pt", kind="step", model=model.state_dict(),
                    model_config=model.cfg.to_dict(), step=3)
    assert load(run).checkpoint.name == "step_3.pt"  # no best.pt: the newest resumable checkpoint
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "transformer-toolkit", "format_version": 99}')
    with pytest.raises(ValueError, match="version 99 is not supported"):
        load(tmp_path / "hf")
