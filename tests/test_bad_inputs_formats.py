"""Files from elsewhere, used as a careless or hostile user would (issue 19, item 3): Hub pulls,
model folders with their own code, tampered weights, GGUF headers and tokenizers, prompts and
stdin that are not text, sampling settings. Each case gets a clear one-line error or the right
behaviour, and nothing the user already had is lost.

Everything is tiny and built here: a 1-layer model, a 300-token tokenizer, files tampered in
``tmp_path``. The memory bombs run in a child process under an address-space limit, so a
regression fails there instead of taking the machine's memory.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("huggingface_hub")
gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from hub_fake import FakeHub  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from transformer_toolkit import Transformer, TransformerConfig  # noqa: E402
from transformer_toolkit.cli import main  # noqa: E402
from transformer_toolkit.hf_hub import pull_from_hub, push_to_hub  # noqa: E402
from transformer_toolkit.store import load  # noqa: E402
from transformer_toolkit.store.checkpoint import save_checkpoint  # noqa: E402
from transformer_toolkit.tokenizer import RustBPETokenizer  # noqa: E402
from transformer_toolkit.tokenizer.hf import HFTokenizer  # noqa: E402

REPO = "me/tiny"
CORPUS = [f"hello world, the quick brown fox jumps over the lazy dog {i}" for i in range(200)]


@pytest.fixture(scope="module")
def tok():
    return RustBPETokenizer().train(CORPUS, vocab_size=300)


def tiny_model(vocab: int, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, dim=32, n_layers=1, n_heads=4, max_seq=64, hidden_dim=64) | kw
    return Transformer(TransformerConfig(**cfg)).eval()


@pytest.fixture(scope="module")
def hf_dir(tok, tmp_path_factory):
    """A transformers (llama) folder of a tiny model with our tokenizer; copy it before tampering."""
    path = tmp_path_factory.mktemp("hf") / "model"
    tiny_model(tok.vocab_size).save_pretrained(path, tokenizer=tok, template="chatml")
    return path


def copy_of(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def ttk(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# 1. pull_from_hub never deletes or overwrites what it did not create -------------------------
def _hub_with(tok, **extra: bytes) -> FakeHub:
    hub = FakeHub()
    push_to_hub(REPO, tiny_model(tok.vocab_size), tokenizer=tok, api=hub)
    hub.repos[REPO].update(extra)
    return hub


def test_pull_into_an_existing_folder_merges_subfolders_and_keeps_the_users_files(tok, tmp_path):
    hub = _hub_with(tok, **{"data/card.txt": b"from the repo"})
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    (out / "data" / "tokens.bin").write_bytes(b"\x01\x02 a day of tokenising")
    (out / "notes.txt").write_text("mine")
    path = pull_from_hub(REPO, save_dir=out, api=hub)
    assert (out / "data" / "tokens.bin").read_bytes() == b"\x01\x02 a day of tokenising"  # was rmtree'd
    assert (out / "data" / "card.txt").read_bytes() == b"from the repo"
    assert (out / "notes.txt").read_text() == "mine"
    assert Transformer.from_pretrained(path).cfg.vocab_size == tok.vocab_size
    pull_from_hub(REPO, save_dir=out, api=hub)  # the same files again: nothing to overwrite, nothing lost
    assert (out / "data" / "tokens.bin").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


PULL_CLASHES = {  # what the user has, what the repo adds, what the refusal names
    "the run's tokenizer": ({"tokenizer.json": b"the run's own tokenizer"}, {}, "tokenizer.json"),
    "a file in a shared folder": ({"data/notes.txt": b"mine"}, {"data/notes.txt": b"the repo's"}, "data/notes.txt"),
    "a file for a folder": ({"data/notes.txt": b"mine"}, {"data": b"a file"}, "data/"),
}


@pytest.mark.parametrize("case", PULL_CLASHES)
def test_pull_refuses_to_overwrite_a_users_file_and_changes_nothing(tok, tmp_path, case):
    mine, theirs, named = PULL_CLASHES[case]
    hub = _hub_with(tok, **theirs)
    out = tmp_path / "run"
    for name, data in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    with pytest.raises(ValueError, match=f"already holds {named},? .*nothing was written"):  # an OutputConflict
        pull_from_hub(REPO, save_dir=out, api=hub)
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left


# 2. a model folder's own code is never run --------------------------------------------------
EVIL = "open({marker!r}, 'w').write('ran')\nfrom transformers import PreTrainedTokenizerFast\n" \
       "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"


def _with_code(folder: Path, marker: Path, tokenizer_class: str = "EvilTokenizer") -> None:
    (folder / "tokenization_evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}, tokenizer_class=tokenizer_class,
               bos_token="[CLS]")  # not our special tokens: the folder loads through transformers
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_pull_skips_python_files_and_says_why(tok, tmp_path):
    hub = _hub_with(tok, **{"tokenization_evil.py": b"import os", "sub/modeling_x.py": b"import os"})
    with pytest.warns(RuntimeWarning, match=r"skipping Python files .*never runs a model repo's own code"):
        path = pull_from_hub(REPO, save_dir=tmp_path / "p", api=hub)
    assert not any(n.endswith(".py") for n in hub.downloads)
    assert not list(Path(path).rglob("*.py"))


def test_a_tokenizer_defined_by_the_folders_code_is_refused_without_running_it(hf_dir, tmp_path, monkeypatch, capsys):
    folder, marker = copy_of(hf_dir, tmp_path), tmp_path / "PWNED"
    _with_code(folder, marker)
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "y")  # a user who says yes
    with pytest.raises(ValueError, match="defined by its own Python code .* never runs"):
        HFTokenizer(folder)
    rc, _, err = ttk(capsys, "chat", "--model", folder, "--max-new", "2")
    assert rc == 2 and "never runs" in err and "Traceback" not in err
    assert not marker.exists() and asked == []  # never asked, never ran


def test_auto_map_naming_a_builtin_class_loads_without_the_code(hf_dir, tmp_path):
    folder, marker = copy_of(hf_dir, tmp_path), tmp_path / "PWNED"
    _with_code(folder, marker, tokenizer_class="PreTrainedTokenizerFast")
    with pytest.warns(RuntimeWarning, match="ignoring auto_map"):
        loaded = HFTokenizer(folder)
    assert loaded.encode("hello world") and not marker.exists()


# 11. weights that are not floats; a tokenizer that is not the model's ----------------------
def test_integer_weights_are_refused_naming_the_tensor(hf_dir, tmp_path):
    folder = copy_of(hf_dir, tmp_path)
    sd = load_file(folder / "model.safetensors")
    sd["model.layers.0.mlp.up_proj.weight"] = (sd["model.layers.0.mlp.up_proj.weight"] * 100).to(torch.int32)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"not floating point: blocks\.0\.ffn\.up_proj\.weight \(int32\)"):
        Transformer.from_pretrained(folder)


def _run_folder(tmp_path: Path, model: Transformer, tokenizer) -> Path:
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "best.pt", kind="best", model=model.state_dict(), step=1,
                    model_config=model.cfg.to_dict())
    tokenizer.save(str(run / "tokenizer.json"))
    return run


def test_a_runs_tokenizer_swapped_for_a_larger_vocabulary_is_refused(tok, tmp_path, capsys):
    run = _run_folder(tmp_path, tiny_model(tok.vocab_size), tok)
    assert load(run).tokenizer.vocab_size == tok.vocab_size
    other = RustBPETokenizer().train(CORPUS + ["zebra yak xylophone quux"] * 50, vocab_size=420)
    other.save(str(run / "tokenizer.json"))
    with pytest.raises(ValueError, match=rf"tokenizer has {other.vocab_size} tokens but the model has 300 embedding"):
        load(run)
    rc, _, err = ttk(capsys, "generate", "--run", run, "--prompt", "zebra yak")
    assert rc == 2 and "not the tokenizer the model was trained with" in err


# 12. memory bombs: refused from the header, before anything is built -----------------------
class _Lie:
    """A config whose named attributes lie (for writing a tampered GGUF header)."""

    def __init__(self, cfg, **lies):
        self._cfg, self._lies = cfg, lies

    def __getattr__(self, name):
        return self._lies[name] if name in self._lies else getattr(self._cfg, name)


def write_gguf(path: Path, model: Transformer, extra: dict | None = None, **lies) -> Path:
    """``model`` as a llama GGUF whose header says ``lies`` (``max_seq``, ``n_layers``...) and
    holds the ``extra`` uint32 keys."""
    from transformer_toolkit.convert.gguf import _write_hparams
    from transformer_toolkit.convert.gguf_tensors import gguf_name, to_gguf_layout

    cfg = model.cfg
    w = gguf.GGUFWriter(str(path), "llama")
    _write_hparams(w, _Lie(cfg, **lies))
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)
    for key, t in model.state_dict().items():
        if key == "head.weight" and cfg.tie_weights:
            continue
        w.add_tensor(gguf_name(key), to_gguf_layout(key, t, cfg.n_heads, cfg.n_kv_heads).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _no_model_built(monkeypatch):
    def refuse(cfg):
        raise AssertionError(f"a model of {cfg.n_layers} layers, max_seq {cfg.max_seq} built from a damaged header")
    for module in ("gguf", "hf_io"):
        monkeypatch.setattr(f"transformer_toolkit.convert.{module}.empty_transformer", refuse)


@pytest.mark.parametrize("lie, match", [
    (dict(max_seq=2**31), r"context of 2,147,483,648 positions"),
    (dict(n_layers=100_000), r"gives 100,000 layers but the weights hold 1"),
    (dict(hidden_dim=10**9), r"shapes do not match .*ffn_gate.weight \(64, 32\) \(expected \(1000000000, 32\)\)"),
])
def test_a_gguf_header_asking_for_gigabytes_is_refused_before_building(tok, tmp_path, monkeypatch, lie, match):
    path = write_gguf(tmp_path / "bomb.gguf", tiny_model(tok.vocab_size), **lie)
    _no_model_built(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        load(path, tokenizer=False)
    assert time.perf_counter() - t0 < 30  # (the metadata check itself takes milliseconds)


@pytest.mark.parametrize("field, value, match", [
    ("max_position_embeddings", 2**31, "context of 2,147,483,648 positions"),
    ("num_hidden_layers", 100_000, "gives 100,000 layers but the weights hold 1"),
    ("intermediate_size", 10**9, r"up_proj.weight \(64, 32\) \(expected \(1000000000, 32\)\)"),
])
def test_a_config_json_asking_for_gigabytes_is_refused_before_building(hf_dir, tmp_path, monkeypatch, field, value,
                                                                       match):
    folder = copy_of(hf_dir, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | {field: value}))
    _no_model_built(monkeypatch)
    with pytest.raises(ValueError, match=match):
        load(folder, tokenizer=False)


def test_position_tables_grown_on_demand_hold_the_same_values(monkeypatch):
    """A long context costs memory only for the positions used: RoPE and sinusoidal tables
    start at INITIAL_ROWS rows and grow when a forward or a cache reaches further. Grown
    tables equal tables built whole, and cached greedy decoding equals the full forward."""
    import transformer_toolkit.model.position as position

    for pos_enc in ("rope", "sinusoidal"):
        whole = tiny_model(97, pos_enc=pos_enc)
        monkeypatch.setattr(position, "INITIAL_ROWS", 8)
        grown = tiny_model(97, pos_enc=pos_enc)
        monkeypatch.undo()
        table = (lambda m: m.rope.cos) if pos_enc == "rope" else (lambda m: m.pos.pe)
        assert table(grown).shape[0] == 8 and table(whole).shape[0] == 64
        x = torch.randint(0, 97, (2, 40))
        with torch.no_grad():
            assert torch.equal(grown(x)[0], whole(x)[0])  # grew to 40 rows here
        assert torch.equal(table(grown), table(whole)[: table(grown).shape[0]])
        prompt = torch.randint(0, 97, (1, 5))
        monkeypatch.setattr(position, "INITIAL_ROWS", 8)
        fresh = tiny_model(97, pos_enc=pos_enc)
        monkeypatch.undo()
        out = fresh.generate(prompt, max_new=40, temperature=0)  # crosses 8, 16, 32 positions while decoding
        with torch.no_grad():
            assert torch.equal(whole(out[:, :-1])[0][0, 4:].argmax(-1), out[0, 5:])


MEMORY_BOMBS = textwrap.dedent("""
    import json, sys, torch, warnings
    from transformer_toolkit import Transformer, TransformerConfig
    from transformer_toolkit.store import load
    from transformer_toolkit.tokenizer import RustBPETokenizer
    torch.set_num_threads(1)
    rows = {}
    for source in sys.argv[1:]:  # a config.json and a GGUF header that give a context of 2^30
        loaded = load(source, tokenizer=False)
        assert loaded.model.cfg.max_seq == 2**30
        loaded.model.generate(torch.tensor([[5, 6, 7]]), max_new=4, temperature=0)
        rows[source] = loaded.model.rope.cos.shape[0]
    for pos_enc in ("rope", "sinusoidal"):  # ttk train --model.max_seq 10000000 ...
        model = Transformer(TransformerConfig(vocab_size=97, dim=32, n_layers=1, n_heads=4, hidden_dim=64,
                                              max_seq=10_000_000, pos_enc=pos_enc))
        loss = model(torch.randint(0, 97, (2, 16)))[0].logsumexp(-1).mean()
        loss.backward()
        rows[pos_enc] = (model.rope.cos if pos_enc == "rope" else model.pos.pe).shape[0]
    with warnings.catch_warnings(record=True) as seen:  # ttk tokenizer --vocab-size 1000000000
        warnings.simplefilter("always")
        tok = RustBPETokenizer().train(["hello world, hello there"] * 100, vocab_size=10**9)
    rows["vocab"] = tok.vocab_size
    rows["warning"] = str(seen[0].message)
    print(json.dumps(rows))
""")
ADDRESS_SPACE = 4 << 30  # the child's whole virtual memory: any of the old behaviours asks for 5 to 140 GB


def test_memory_bombs_run_in_a_few_hundred_megabytes(tok, hf_dir, tmp_path):
    import resource

    folder = copy_of(hf_dir, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | {"max_position_embeddings": 2**30}))
    bomb = write_gguf(tmp_path / "long.gguf", tiny_model(tok.vocab_size), max_seq=2**30)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", MEMORY_BOMBS, str(folder), str(bomb)], capture_output=True,
                           text=True, timeout=300, env=env,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE)))
    assert child.returncode == 0, child.stderr[-2000:]
    rows = json.loads(child.stdout.strip().splitlines()[-1])
    assert max(rows[k] for k in (str(folder), str(bomb), "rope", "sinusoidal")) <= 4096
    assert rows["vocab"] < 1000 and "2,400 bytes of text can fill at most 1,477 tokens" in rows["warning"]


# 13, 14. tokenizer training: an impossible vocabulary, one endless word ----------------------
@pytest.fixture
def trainer_sizes(monkeypatch):
    """The vocab_size each BpeTrainer is made with. One above 2^22 fails the test before Rust
    reserves ~44 bytes per token of it (10^9 aborts the whole process)."""
    import tokenizers

    asked, real = [], tokenizers.trainers.BpeTrainer

    def spy(**kw):
        asked.append(kw["vocab_size"])
        if kw["vocab_size"] > 1 << 22:
            raise AssertionError(f"the Rust trainer was asked for vocab_size={kw['vocab_size']:,}")
        return real(**kw)

    monkeypatch.setattr(tokenizers.trainers, "BpeTrainer", spy)
    return asked


def test_a_vocab_size_the_corpus_cannot_fill_is_capped_before_rust_reserves_it(trainer_sizes):
    texts = ["hello world, hello there"] * 100  # 2,400 bytes
    with pytest.warns(RuntimeWarning, match=r"2,400 bytes of text can fill at most 1,477 tokens; training with "
                                            r"vocab_size=1,477"):
        tok = RustBPETokenizer().train(texts, vocab_size=10**9)
    assert trainer_sizes == [1477] and tok.vocab_size <= 1477
    with pytest.warns(RuntimeWarning, match=r"above 4,194,304 tokens are refused"):  # an iterator of unknown size
        RustBPETokenizer().train(iter(texts), vocab_size=10**7)
    assert trainer_sizes[-1] == 4_194_304
    with pytest.warns(RuntimeWarning, match="can fill at most 1,477"):
        RustBPETokenizer().train(iter(texts), vocab_size=10**9, corpus_bytes=2400)
    assert trainer_sizes[-1] == 1477
    RustBPETokenizer().train(texts, vocab_size=500)
    assert trainer_sizes[-1] == 500  # a size the corpus can fill is kept


def test_the_tokenizer_command_caps_the_vocabulary(tmp_path, capsys, trainer_sizes):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, hello there\n" * 100)
    with pytest.warns(RuntimeWarning, match="2,500 bytes of text can fill at most 1,527 tokens"):
        rc, out, _ = ttk(capsys, "tokenizer", corpus, "--vocab-size", "1000000000", "--out", tmp_path / "t.json")
    assert rc == 0 and "tokenizer: vocab" in out and (tmp_path / "t.json").is_file() and trainer_sizes == [1527]


def test_long_words_are_cut_before_training_and_nothing_else_is():
    from transformer_toolkit.tokenizer.chunking import MAX_WORD_CHARS, split_long_words

    normal = " ".join(CORPUS) + "\n\n" + "x = [1, 2, 3]  # café 日本語 " * 200
    assert split_long_words(normal) == [normal]  # no word over the limit: trains exactly as before
    text = "dna: " + "ACGT" * 1000 + " then 12345 " + " " * 2500 + "end"
    pieces = split_long_words(text)
    assert "".join(pieces) == text and len(pieces) == 3 + 2 + 1  # 4,000 letters -> 4 words, 2,500 spaces -> 3
    assert pieces[1] == "ACGT" * 256 and all(len(p.split()[-1] if p.split() else p) <= MAX_WORD_CHARS for p in pieces)
    assert split_long_words("ab cdefghij k", 3) == ["ab cde", "fgh", "ij k"]
    assert split_long_words("a,b,c,d,e 12345", 3) == ["a,b,c,d,e 123", "45"]  # only a run of one class is a word


def test_one_long_unbroken_word_trains_in_seconds():
    import random

    rng = random.Random(0)
    dna = "".join(rng.choice("ACGT") for _ in range(200_000))  # one 200 KB word: ~20 s before, quadratic
    t0 = time.perf_counter()
    tok = RustBPETokenizer().train([dna], vocab_size=600)
    assert time.perf_counter() - t0 < 10
    assert tok.vocab_size == 600 and tok.decode(tok.encode(dna[:5000])) == dna[:5000]


# tracebacks where one clear line is promised ------------------------------------------------
def _tamper_weights(fn):
    def tamper(folder: Path) -> None:
        sd = load_file(folder / "model.safetensors")
        save_file(fn(sd), folder / "model.safetensors", metadata={"format": "pt"})
    return tamper


def _write(name: str, data: bytes):
    def tamper(folder: Path) -> None:
        (folder / name).write_bytes(data)
    return tamper


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


FOLDER_CASES = {  # a tampered copy of the model folder -> what `ttk generate --model` must say
    "wrong shape": (_tamper_weights(lambda sd: sd | {"model.norm.weight": sd["model.norm.weight"][:-1].clone()}),
                    r"tensor shapes do not match .*norm.weight \(31,\) \(expected \(32,\)\)"),
    "config.json a list": (_write("config.json", b"[1, 2]"), "config.json holds a JSON list"),
    "config.json not JSON": (_write("config.json", b"{'oops'"), "config.json is not valid JSON"),
    "truncated safetensors": (_truncate, "model.safetensors is not a readable safetensors file .* truncated"),
    "NaN weights": (_tamper_weights(lambda sd: {k: torch.full_like(v, float("nan")) for k, v in sd.items()}),
                    "weights hold NaN or infinite values .* damaged"),
    'tokenizer.json {"model": {}}': (_write("tokenizer.json", b'{"model": {}}'),
                                     "the tokenizer at .* cannot be read .* damaged"),
    "tokenizer_config.json a list": (_write("tokenizer_config.json", b"[]"), "tokenizer_config.json holds a JSON list"),
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_a_damaged_model_folder_is_one_clear_line(hf_dir, tmp_path, capsys, case):
    tamper, match = FOLDER_CASES[case]
    folder = copy_of(hf_dir, tmp_path)
    tamper(folder)
    rc, out, err = ttk(capsys, "generate", "--model", folder, "--prompt", "hello", "--max-new", "3")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("ttk generate: error: ") and re.search(match, err), err


@pytest.fixture(scope="module")
def gguf_file(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    tiny_model(tok.vocab_size).save_gguf(path, tokenizer=tok, dtype="f32")
    return path


def test_damaged_gguf_files_are_one_clear_line(tok, gguf_file, tmp_path, capsys):
    (tmp_path / "four.gguf").write_bytes(b"GGUF")
    zero = write_gguf(tmp_path / "zero.gguf", tiny_model(tok.vocab_size), extra={"general.alignment": 0})
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_file.read_bytes()[:4000])
    for path, match in ((tmp_path / "four.gguf", "4 bytes, too short for a GGUF header"),
                        (zero, "general.alignment = 0 is not a positive power of two"),
                        (cut, "truncated")):
        rc, _, err = ttk(capsys, "generate", "--model", path, "--prompt", "hi", "--max-new", "2")
        assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err


PROMPT_CASES = [  # argv after `ttk generate --model M`, what the one line says
    (["--prompt", "a\udcffb"], "lone surrogate U+DCFF (the byte 0xff, which is not UTF-8)"),
    (["--prompt", "\ud800"], "lone surrogate U+D800"),
    (["--prompt", "hello", "--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--prompt", "hello ", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--prompt", "hello ", "--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--prompt", "hello ", "--temperature", "inf"], "temperature must be a finite number >= 0"),
    (["--prompt", "hello ", "--top-k", "0"], "top_k must be an integer >= 1"),
    (["--prompt", "hello ", "--top-k", "-3"], "top_k must be an integer >= 1"),
    # one new token on a healed prompt is sampled before generate() would check anything
    (["--prompt", "hello ", "--max-new", "1", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--prompt", "hello ", "--max-new", "1", "--top-k", "0"], "top_k must be an integer >= 1"),
    (["--prompt", "hello ", "--max-new", "-1"], "max_new must be an integer >= 0"),
]


@pytest.mark.parametrize("argv, match", PROMPT_CASES, ids=[" ".join(a)[:40] for a, _ in PROMPT_CASES])
def test_bad_prompts_and_sampling_settings_are_one_clear_line(hf_dir, capsys, argv, match):
    rc, out, err = ttk(capsys, "generate", "--model", hf_dir, *argv)
    assert rc == 2 and out == "" and match in err and len(err.strip().splitlines()) == 1, err


def test_sampling_settings_are_checked_on_every_path(tok):
    from transformer_toolkit.inference import SamplingParams, complete, stream
    from transformer_toolkit.serve.protocol import ApiError, chat_job, completion_job
    from transformer_toolkit.sft import ChatSession

    model = tiny_model(tok.vocab_size)
    for bad in (dict(temperature=float("nan")), dict(temperature=-1.0), dict(top_k=0), dict(top_p=float("nan"))):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
        with pytest.raises(ValueError):
            complete(model, tok, "hello ", max_new=1, **bad)
        with pytest.raises(ValueError):
            ChatSession(model, tok, **{"temperature": 0.5, "top_k": 5} | bad)
        with pytest.raises(ValueError):
            next(stream(model, [5, 6], max_new=2, **bad))
    with pytest.raises(ValueError, match="lone surrogate"):
        ChatSession(model, tok, temperature=0).ask("bad \udcff byte")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ApiError, match="'temperature' must be between 0 and 2, got nan"):
        chat_job(body | {"temperature": float("nan")})  # Python's json reads NaN
    with pytest.raises(ApiError, match="lone surrogate") as err:
        chat_job(body | {"messages": [{"role": "user", "content": json.loads('"\\ud800"')}]})
    assert err.value.status == 400 and err.value.param == "messages[0].content"
    with pytest.raises(ApiError, match="lone surrogate"):
        completion_job({"model": "m", "prompt": "a\udcff"})


class _Stdin(io.TextIOWrapper):
    def isatty(self) -> bool:
        return False


def test_binary_bytes_on_chats_stdin_skip_that_line_and_keep_the_session(hf_dir, capsys, monkeypatch):
    from transformer_toolkit.cli.use import SKIPPED, read_line

    monkeypatch.setattr(sys, "stdin", _Stdin(io.BytesIO(b"hello\n\xff\xfe\x00 binary\nworld\n"), encoding="utf-8"))
    rc, out, err = ttk(capsys, "chat", "--model", hf_dir, "--max-new", "3")
    assert rc == 0 and "skipped a line that is not UTF-8 text" in err and "Traceback" not in err
    assert len(out.splitlines()) == 3 and out.splitlines()[1] == ""  # one output line per input line
    assert read_line(io.StringIO("surrogate\udcff escaped\n")) is SKIPPED  # a text stream with surrogateescape


def test_a_malicious_checkpoint_is_refused_without_suggesting_weights_only_false(tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "model_config": {}, "payload": Evil()}, tmp_path / "evil.pt")
    rc, _, err = ttk(capsys, "generate", "--run", tmp_path / "evil.pt", "--prompt", "hi")
    assert rc == 2 and "is not a trusted checkpoint" in err and "posix.system" in err
    assert "weights_only" not in err and not marker.exists()
    with pytest.raises(ValueError, match="not a trusted checkpoint") as e:
        load(tmp_path / "evil.pt")
    assert "weights_only" not in str(e.value)
