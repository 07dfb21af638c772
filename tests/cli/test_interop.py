"""``ttk export / push / pull`` and ``--model PATH`` at tiny sizes (the Hub is a fake client)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from cli_helpers import QUIET, run_main

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")

from hub_fake import FakeHub  # noqa: E402

from transformer_toolkit import Transformer, load_tokenizer  # noqa: E402
from transformer_toolkit.sft import ChatTemplate  # noqa: E402
from transformer_toolkit.store import load  # noqa: E402

SFT = [*QUIET, "--train.max_steps", "3", "--train.eval_every", "3", "--data.n_samples", "200",
       "--data.n_eval", "4", "--train.eval_iters", "1", "--train.save_every", "3"]
ASK = "reverse: cat dog\nadd: 1 + 2\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny SFT run folder (chatml template)."""
    import contextlib

    out = tmp_path_factory.mktemp("interop") / "sft"
    with contextlib.redirect_stdout(io.StringIO()):
        from transformer_toolkit.cli import main

        assert main(["sft", "--out", str(out), *SFT]) == 0
    return out


def _chat(capsys, monkeypatch, *src) -> tuple[int, list[str], str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(ASK))
    rc, out, err = run_main(capsys, "chat", *src, "--max-new", "6")
    return rc, out.splitlines(), err


def test_export_hf_then_use_the_folder_with_model(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "hf"
    rc, stdout, err = run_main(capsys, "export", "--run", run, "--format", "hf", "--out", out)
    assert rc == 0 and "export: hf (f32)" in stdout, err
    loaded = load(run)
    model, tok = loaded.model, loaded.tokenizer
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.tensor([tok.encode("reverse: cat dog")])
    with torch.no_grad():
        assert (hf(x).logits - model(x)[0]).abs().max().item() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    msgs = [{"role": "user", "content": "add: 1 + 2"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ChatTemplate("chatml").format_messages(msgs, add_generation_prompt=True)[0]

    # --model gives the same answers as --run: same weights, same tokenizer, template recognised as chatml
    rc, by_run, _ = _chat(capsys, monkeypatch, "--run", run)
    rc2, by_model, err = _chat(capsys, monkeypatch, "--model", out)
    assert rc == rc2 == 0 and len(by_run) == 2 and by_model == by_run
    assert "warning" not in err
    gen = ["--prompt", "reverse: a b", "--max-new", "5", "--temperature", "0"]
    assert run_main(capsys, "generate", "--run", run, *gen)[1] == run_main(capsys, "generate", "--model", out, *gen)[1]
    text = tmp_path / "text.txt"
    text.write_text("reverse: cat dog\nadd: 1 + 2\n" * 20)
    rc, by_run, _ = run_main(capsys, "eval", "--run", run, "--data", text)
    rc2, by_model, _ = run_main(capsys, "eval", "--model", out, "--data", text)
    assert rc == rc2 == 0 and by_run == by_model and "perplexity" in by_run


def test_export_dtypes(run, tmp_path, capsys):
    from safetensors import safe_open

    rc, _, err = run_main(capsys, "export", "--run", run, "--format", "hf", "--out", tmp_path / "h", "--dtype", "f16")
    assert rc == 0, err
    assert json.loads((tmp_path / "h" / "config.json").read_text())["dtype"] == "float16"
    with safe_open(tmp_path / "h" / "model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    rc, _, err = run_main(capsys, "export", "--run", run, "--format", "hf", "--out", tmp_path / "q", "--dtype", "q8_0")
    assert rc == 2 and "not for --format hf" in err and not (tmp_path / "q").exists()


def test_model_from_transformers_with_a_foreign_template(run, tmp_path, capsys, monkeypatch):
    """A folder written by transformers itself; its template matches no preset -> chatml + one warning line."""
    tok = load(run).tokenizer
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                   max_position_embeddings=64, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    hf_tok = tok.to_transformers()
    hf_tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    hf_tok.save_pretrained(tmp_path / "m")
    capsys.readouterr()  # transformers' own progress bars
    rc, replies, err = _chat(capsys, monkeypatch, "--model", tmp_path / "m")
    assert rc == 0 and len(replies) == 2
    assert len(err.strip().splitlines()) == 1 and "using chatml" in err
    rc, _, err = _chat(capsys, monkeypatch, "--model", tmp_path / "m", "--template", "llama3")
    assert rc == 0 and "warning" not in err


def test_sft_from_a_pretrained_folder(run, tmp_path, capsys, monkeypatch):
    rc, _, err = run_main(capsys, "export", "--run", run, "--format", "hf", "--out", tmp_path / "hf")
    assert rc == 0, err
    # a HFTokenizer this time (a folder whose tokenizer_config names another EOS), to cover foreign tokenizers
    cfg_path = tmp_path / "hf" / "tokenizer_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "eos_token": "<|im_end|>"}))
    rc, out, err = run_main(capsys, "sft", "--model", tmp_path / "hf", "--out", tmp_path / "ft", *SFT)
    assert rc == 0 and "exact match" in out, err
    loaded = load(tmp_path / "ft")
    model, tok = loaded.model, loaded.tokenizer
    assert type(tok).__name__ == "HFTokenizer" and tok.eos_id == tok.token_to_id("<|im_end|>")
    assert model.cfg == Transformer.from_pretrained(tmp_path / "hf").cfg
    rc, replies, err = _chat(capsys, monkeypatch, "--run", tmp_path / "ft")
    assert rc == 0 and len(replies) == 2, err
    rc, _, err = run_main(capsys, "sft", "--model", tmp_path / "hf", "--init", run, "--out", tmp_path / "x")
    assert rc == 2 and "not both" in err


def test_push_and_pull(run, tmp_path, capsys, monkeypatch):
    import transformer_toolkit.hf_hub as hub_mod

    hub = FakeHub()
    monkeypatch.setattr(hub_mod, "_default_api", lambda token: hub)
    rc, out, err = run_main(capsys, "push", "--run", run, "--repo", "me/sft")
    assert rc == 0 and "private" in out, err
    files = hub.repos["me/sft"]
    assert hub.private["me/sft"] is True and "chat_template.jinja" in files
    pushed = json.loads(files["metrics.json"])
    assert pushed["step"] == 3 and {"val_loss", "best_val_loss", "perplexity"} <= set(pushed["metrics"])

    rc, out, err = run_main(capsys, "pull", "me/sft", "--out", tmp_path / "pulled")
    assert rc == 0 and "--model" in out, err
    loaded = load(run)
    model, tok = loaded.model, loaded.tokenizer
    back = Transformer.from_pretrained(tmp_path / "pulled")
    x = torch.tensor([tok.encode("add: 1 + 2")])
    with torch.no_grad():
        assert torch.equal(back(x)[0], model(x)[0])
    assert load_tokenizer(tmp_path / "pulled").encode("add: 1 + 2") == tok.encode("add: 1 + 2")

    rc, _, _ = run_main(capsys, "push", "--run", run, "--repo", "me/pub", "--public")
    assert rc == 0 and hub.private["me/pub"] is False

    broken = FakeHub()
    broken.create_repo = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no route to host"))
    monkeypatch.setattr(hub_mod, "_default_api", lambda token: broken)
    rc, _, err = run_main(capsys, "push", "--run", run, "--repo", "me/x")
    assert rc == 2 and err.count("\n") == 1 and "push to me/x failed: ConnectionError" in err


def test_source_arguments(run, tmp_path, capsys):
    with pytest.raises(SystemExit):  # argparse: --run and --model are exclusive
        run_main(capsys, "generate", "--run", run, "--model", run, "--prompt", "x")
    capsys.readouterr()
    run_main(capsys, "export", "--run", run, "--format", "hf", "--out", tmp_path / "hf")
    rc, _, err = run_main(capsys, "generate", "--run", tmp_path / "hf", "--prompt", "x")
    assert rc == 2 and f"use --model {tmp_path / 'hf'}" in err
    rc, _, err = run_main(capsys, "chat", "--model", tmp_path / "nothing")
    assert rc == 2 and "not a .gguf file" in err


def test_gguf_export_and_chat(run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformer_toolkit.convert.gguf", reason="convert/gguf.py is not written yet")
    rc, out, err = run_main(capsys, "export", "--run", run, "--format", "gguf", "--out", tmp_path / "m.gguf",
                            "--dtype", "f32")
    assert rc == 0 and (tmp_path / "m.gguf").is_file(), err
    rc, by_run, _ = _chat(capsys, monkeypatch, "--run", run)
    rc2, by_gguf, err = _chat(capsys, monkeypatch, "--model", tmp_path / "m.gguf")
    assert rc == rc2 == 0 and by_gguf == by_run and "warning" not in err
