"""The Hub functions with an injected client (no network): exactly what is uploaded, what a pull
writes and refuses, and that the token never leaks."""

from __future__ import annotations

import functools
import importlib
import io
import json
import logging
import os
import stat

import pytest
import torch

pytest.importorskip("huggingface_hub")
safetensors_torch = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")

from hub_fake import FakeHub  # noqa: E402
from model_helpers import tiny_config  # noqa: E402

from transformer_toolkit import Transformer, load_tokenizer  # noqa: E402
from transformer_toolkit.convert import to_hf_config  # noqa: E402
from transformer_toolkit.convert.hf_weights import to_hf  # noqa: E402
from transformer_toolkit.hf_hub import login, pull_from_hub, push_to_hub  # noqa: E402
from transformer_toolkit.sft import ChatTemplate  # noqa: E402
from transformer_toolkit.tokenizer import RustBPETokenizer  # noqa: E402

REPO = "me/tiny"
METRICS = {"val_loss": 1.83, "perplexity": 6.23}


@pytest.fixture(scope="module")
def tok():
    return RustBPETokenizer().train(["hello world, the quick brown fox jumps. " * 20, "café 123\t"] * 5,
                                    vocab_size=300)


def _model(tok, seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(tiny_config(vocab_size=tok.vocab_size, **overrides)).eval()


def _x(tok):
    return torch.tensor([tok.encode("hello world, the quick brown fox")])


def test_push_uploads_exactly_the_transformers_folder(tok, tmp_path):
    model, hub = _model(tok, attn="gqa"), FakeHub()
    push_to_hub(REPO, model, cfg=model.cfg, tokenizer=tok, metrics=METRICS, step=3000, private=True,
                template="chatml", api=hub)
    files = hub.repos[REPO]
    assert sorted(files) == ["README.md", "chat_template.jinja", "config.json", "generation_config.json",
                             "metrics.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert hub.private[REPO] is True and ("create_repo", REPO, True, True) in hub.calls

    _, want_cfg = to_hf_config(model.cfg, {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id})
    got_cfg = json.loads(files["config.json"])
    assert {k: got_cfg[k] for k in want_cfg} == json.loads(json.dumps(want_cfg))
    weights = safetensors_torch.load(files["model.safetensors"])
    want = to_hf(model.state_dict(), "llama", model.cfg.n_layers, model.cfg.tie_weights)
    assert weights.keys() == want.keys() and all(torch.equal(weights[k], want[k]) for k in want)
    assert json.loads(files["metrics.json"]) == {"step": 3000, "metrics": METRICS}
    card = files["README.md"].decode()
    assert "library_name: transformers" in card and "3000" in card
    assert "| val_loss | 1.8300 |" in card and "| perplexity | 6.2300 |" in card
    assert files["chat_template.jinja"].decode() == ChatTemplate("chatml").to_jinja()

    folder = hub.materialise(REPO, tmp_path / "repo")  # what AutoModel.from_pretrained(REPO) would read
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(_x(tok))[0]
        assert (hf(_x(tok)).logits - ours).abs().max().item() <= 1e-4
        assert torch.equal(Transformer.from_pretrained(folder)(_x(tok))[0], ours)


def test_push_and_pull_a_native_folder_for_configs_transformers_lacks(tok, tmp_path):
    model, hub = _model(tok, attn="mla", ffn="moe_ec", n_experts=4), FakeHub()  # expert choice: no HF class
    push_to_hub(REPO, model, tokenizer=tok, metrics=METRICS, step=7, api=hub)
    files = hub.repos[REPO]
    cfg = json.loads(files["config.json"])
    assert cfg["model_type"] == "transformer-toolkit" and cfg["transformer_config"] == model.cfg.to_dict()
    assert set(safetensors_torch.load(files["model.safetensors"])) == set(model.state_dict_for_save())
    card = files["README.md"].decode()
    assert "no transformers counterpart" in card and "ffn='moe_ec'" in card
    assert "library_name: transformer-toolkit" in card
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in files)

    path = pull_from_hub(REPO, save_dir=tmp_path / "pulled", api=hub)
    back = Transformer.from_pretrained(path)
    assert back.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(back(_x(tok))[0], model(_x(tok))[0])
    assert load_tokenizer(path).encode("hello <|im_end|>") == tok.encode("hello <|im_end|>")


def test_pull_round_trip_loads_model_tokenizer_and_template(tok, tmp_path):
    model, hub = _model(tok, ffn="moe", n_experts=4, top_k=2, attn="gqa"), FakeHub()
    push_to_hub(REPO, model, tokenizer=tok, template="llama3", api=hub)
    path = pull_from_hub(REPO, save_dir=tmp_path / "pulled", api=hub)
    assert path == str(tmp_path / "pulled")
    assert sorted(os.listdir(path)) == sorted(hub.repos[REPO])  # no .cache, no temp folder left behind
    assert [p.name for p in tmp_path.iterdir()] == ["pulled"]
    with torch.no_grad():
        assert torch.equal(Transformer.from_pretrained(path)(_x(tok))[0], model(_x(tok))[0])
    loaded = load_tokenizer(path)
    assert loaded.encode("fox <|eot_id|>") == tok.encode("fox <|eot_id|>")
    assert loaded.chat_template == ChatTemplate("llama3").to_jinja()


def test_a_second_push_replaces_the_model_files(tok):
    hub = FakeHub({REPO: {"notes.txt": b"keep me", "model.pt": b"old pickle, not ours to delete"}})
    push_to_hub(REPO, _model(tok), tokenizer=tok, template="chatml", api=hub)
    assert "chat_template.jinja" in hub.repos[REPO]
    push_to_hub(REPO, _model(tok, seed=1), api=hub)  # no tokenizer this time
    assert sorted(hub.repos[REPO]) == ["README.md", "config.json", "generation_config.json", "metrics.json",
                                       "model.pt", "model.safetensors", "notes.txt"]


def test_a_byte_level_tokenizer_is_pushed_in_its_own_format(tmp_path):
    from transformer_toolkit.tokenizer import ByteLevelTokenizer

    byte_tok, hub = ByteLevelTokenizer(), FakeHub()
    push_to_hub(REPO, Transformer(tiny_config(vocab_size=byte_tok.vocab_size)), tokenizer=byte_tok, api=hub)
    assert "tokenizer.json" in hub.repos[REPO] and "tokenizer_config.json" not in hub.repos[REPO]
    loaded = load_tokenizer(pull_from_hub(REPO, save_dir=tmp_path / "p", api=hub))
    assert type(loaded).__name__ == "ByteLevelTokenizer" and loaded.encode("héllo") == byte_tok.encode("héllo")


def test_push_rejects_a_cfg_that_is_not_the_models(tok):
    model = _model(tok)
    with pytest.raises(ValueError, match="cfg differs from model.cfg"):
        push_to_hub(REPO, model, cfg=tiny_config(vocab_size=tok.vocab_size, dim=64), api=FakeHub())


def _repo_with(tok, tmp_path, **extra: bytes) -> FakeHub:
    hub = FakeHub()
    push_to_hub(REPO, _model(tok), tokenizer=tok, api=hub)
    hub.repos[REPO].update(extra)
    return hub


@pytest.mark.parametrize("bad", ["../evil.json", "/etc/evil.json", "a/../../evil.json", "a\\..\\evil.json",
                                 "C:/evil.json", "a//b.json", "./config.json"])
def test_pull_refuses_names_that_escape_the_folder(tok, tmp_path, bad):
    hub = _repo_with(tok, tmp_path, **{bad: b"x"})
    with pytest.raises(ValueError, match="escape"):
        pull_from_hub(REPO, save_dir=tmp_path / "pulled", api=hub)
    assert hub.downloads == [] and list(tmp_path.iterdir()) == []


def test_pull_skips_pickles_and_refuses_pickle_only_repos(tok, tmp_path):
    hub = _repo_with(tok, tmp_path, **{"pytorch_model.bin": b"pickle", "sub/model.pt": b"pickle"})
    with pytest.warns(RuntimeWarning, match="skipping pickled files"):
        path = pull_from_hub(REPO, save_dir=tmp_path / "pulled", api=hub)
    assert not any(n.endswith((".bin", ".pt")) for n in hub.downloads)
    assert "pytorch_model.bin" not in os.listdir(path) and Transformer.from_pretrained(path) is not None

    only = FakeHub({REPO: {"config.json": b"{}", "pytorch_model.bin": b"pickle"}})
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="no safetensors"):
        pull_from_hub(REPO, save_dir=tmp_path / "only", api=only)
    assert only.downloads == [] and not (tmp_path / "only").exists()


def test_a_failed_pull_leaves_no_half_folder(tok, tmp_path):
    hub = _repo_with(tok, tmp_path)
    hub.fail_download = "tokenizer.json"
    with pytest.raises(ConnectionError):
        pull_from_hub(REPO, save_dir=tmp_path / "pulled", api=hub)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def token_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    path = tmp_path / "hf" / "token"
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return path


SECRET = "hf_SECRETtoken0123456789abcdef"


def _leaks(capsys, caplog) -> bool:
    out = capsys.readouterr()
    return SECRET in out.out or SECRET in out.err or SECRET in caplog.text


def test_login_stores_the_token_and_never_shows_it(token_file, capsys, caplog):
    import huggingface_hub

    caplog.set_level(logging.DEBUG)
    env = dict(os.environ)
    hub = FakeHub()
    assert login(token=SECRET, api=hub) == "tester" and ("whoami",) in hub.calls
    assert token_file.read_text() == SECRET and huggingface_hub.get_token() == SECRET
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert dict(os.environ) == env and not _leaks(capsys, caplog)


def test_login_offline_stores_with_a_warning(token_file, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.warns(RuntimeWarning, match="could not reach the Hub") as rec:
        assert login(token=SECRET, api=FakeHub(whoami_error=ConnectionError("no network"))) is None
    assert token_file.read_text() == SECRET
    assert not any(SECRET in str(w.message) for w in rec) and not _leaks(capsys, caplog)
    hub = FakeHub()
    login(token=SECRET + "2", validate=False, api=hub)
    assert hub.calls == [] and token_file.read_text() == SECRET + "2"


def test_login_with_a_rejected_token_stores_nothing(token_file, capsys, caplog):
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError

    caplog.set_level(logging.DEBUG)
    err = HfHubHTTPError("401 Unauthorized", response=SimpleNamespace(status_code=401, headers={}, request=None))
    with pytest.raises(ValueError, match="rejected this token") as e:
        login(token=SECRET, api=FakeHub(whoami_error=err))
    assert SECRET not in str(e.value) and not token_file.exists() and not _leaks(capsys, caplog)


def test_login_without_a_token_and_no_terminal_is_a_clear_error(token_file, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(ValueError, match="login\\(token=...\\)"):
        login()


def test_importing_the_module_sets_no_environment(monkeypatch):
    import transformer_toolkit.hf_hub as hf_hub

    before = dict(os.environ)
    importlib.reload(hf_hub)
    assert dict(os.environ) == before


def test_trainer_pushes_the_expected_folder(tok, tmp_path):
    from transformer_toolkit.data import DataConfig, from_binary, save_binary
    from transformer_toolkit.trainer import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    save_binary(torch.randint(0, tok.vocab_size, (4000,), generator=g), tmp_path / "data.bin")
    train_dl, val_dl = from_binary(tmp_path / "data.bin", DataConfig(seq_len=16, batch_size=4))
    hub = FakeHub()
    model = _model(tok).train()
    cfg = TrainConfig(max_steps=4, eval_every=2, eval_iters=1, save_every=100, warmup_steps=1, lr=1e-3,
                      ckpt_dir=str(tmp_path / "ckpt"), plot=False, progress="none", interruptible=False,
                      mixed_precision=False, hf_repo=REPO, hf_private=False, hf_push_best=False, hf_push_end=True)
    Trainer(model, train_dl, val_dl, tok.vocab_size, cfg, tokenizer=tok,
            uploader=functools.partial(push_to_hub, api=hub)).train()
    files = hub.repos[REPO]
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json", "README.md"} <= set(files)
    assert hub.private[REPO] is False
    pushed = json.loads(files["metrics.json"])
    assert pushed["step"] == 4 and set(pushed["metrics"]) >= {"val_loss", "perplexity"}
    folder = hub.materialise(REPO, tmp_path / "repo")
    with torch.no_grad():
        assert torch.equal(Transformer.from_pretrained(folder)(_x(tok))[0], model.eval()(_x(tok))[0])
