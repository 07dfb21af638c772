"""``ttk serve`` as a user starts it: a subprocess on a free loopback port, two models."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from serve_helpers import client, tiny_model, tokenizer

from transformer_toolkit.cli import main

pytest.importorskip("openai")
pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _At:
    def __init__(self, url):
        self.url = url


def test_ttk_serve_two_models_answer_like_generate(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "tiny", tokenizer=tokenizer(), template="chatml")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "transformer_toolkit", "serve", "--model", tmp_path / "tiny",
                             "--model", tmp_path / "tiny", "--port", str(port), "--slots", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "ttk serve did not start"
            time.sleep(0.2)
        c = client(_At(url))
        assert [m.id for m in c.models.list().data] == ["tiny", "tiny-2"]
        got = c.completions.create(model="tiny-2", prompt="what is python", max_tokens=8, temperature=0)
        ids = tokenizer().encode("what is python")
        out = model.generate(torch.tensor(ids), 8, temperature=0, stop_ids=[tokenizer().eos_id])[len(ids):].tolist()
        out = out[:out.index(tokenizer().eos_id)] if tokenizer().eos_id in out else out
        assert got.choices[0].text == tokenizer().decode(out, skip_special_tokens=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "127.0.0.1" in proc.stderr.read()  # binds the loopback address unless told otherwise


def test_ttk_serve_argument_errors(capsys, tmp_path):
    assert main(["serve"]) == 2
    assert "--run DIR or --model PATH" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "nothing.gguf")]) == 2
    assert "not a .gguf file" in capsys.readouterr().err
