"""Tokenising text files: chunked encoding equals whole-text encoding, BOS/EOS, errors, constant memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer_toolkit.data.corpus import read_chunks, tokenize_files
from transformer_toolkit.data.tokens import open_tokens, token_spec
from transformer_toolkit.tokenizer import RustBPETokenizer
from transformer_toolkit.tokenizer.chunking import safe_cut, split_text

# letters, digits, punctuation, contractions, unicode, every kind of whitespace, a special token;
# "\x1c" is whitespace to Python but not to the tokenizer's regex, the trap for a naive cut rule
PIECES = ["a", "Zq", "é", "日本", "7", "42", ".", "!?", "'s", "'", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\xa0",
          "\u3000", "\x1c", "\x85", "<|im_end|>", "🙂"]
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@pytest.fixture(scope="module")
def piece_tok():
    """A BPE trained on random runs of PIECES, so it has merges across every trap (e.g. "!?\x1c")."""
    rng = np.random.default_rng(0)
    corpus = ["".join(rng.choice(PIECES, 3000)) for _ in range(5)]
    return RustBPETokenizer().train(corpus, vocab_size=600)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=texts, tail=texts)
def test_safe_cut_never_changes_bpe_ids(piece_tok, head, tail):
    """Cut decided from ``head`` alone; whatever text follows, the two sides encode as the whole."""
    cut = safe_cut(head)
    assert 0 <= cut < max(1, len(head))
    if cut:
        whole = head + tail
        assert piece_tok.encode(head[:cut]) + piece_tok.encode(whole[cut:]) == piece_tok.encode(whole)


def test_safe_cut_prefers_a_line_start_then_a_word_end():
    assert safe_cut("ab cd\nef gh") == 5  # before the "\n" that ends a line
    assert safe_cut("ab cd\n\nef gh") == 5  # never inside a whitespace run
    assert safe_cut("ab cd\x1c") == 2  # "\x1c" is no space to the tokenizer
    assert safe_cut("\n\n<|im_end|>") == 0
    assert safe_cut("abcdef") == 0  # nowhere safe
    assert list(split_text("aaaa bbbb cccc", 7)) == ["aaaa", " bbbb", " cccc"]


@pytest.mark.parametrize("chunk_bytes", [16, 64, 1000])  # > 1/4 of the longest word (30)
def test_tokenize_files_equals_whole_text_encoding(tmp_path, text_of, bpe_tok, byte_tok, chunk_bytes):
    text = text_of(800, seed=chunk_bytes)
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    pieces = list(read_chunks(str(tmp_path / "c.txt"), chunk_bytes=chunk_bytes))
    assert "".join(pieces) == text and (chunk_bytes > len(text.encode()) or len(pieces) > 1)
    for tok in (bpe_tok, byte_tok):
        n = tokenize_files([tmp_path / "c.txt"], tok, tmp_path / "t.bin", chunk_bytes=chunk_bytes, group_chars=50)
        assert open_tokens(tmp_path / "t.bin").tolist() == tok.encode(text)
        assert n == len(tok.encode(text))


def test_bos_eos_wrap_every_file(tmp_path, bpe_tok):
    docs = ["first doc\n", "", "second\tdoc", "third 🙂"]
    paths = []
    for i, d in enumerate(docs):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(d, encoding="utf-8")
    bos, eos = bpe_tok.bos_id, bpe_tok.eos_id
    assert (bos, eos) == (2, 3)
    tokenize_files(paths, bpe_tok, tmp_path / "t.bin", bos_id=bos, eos_id=eos, chunk_bytes=4, group_chars=10)
    want = [i for d in docs if d for i in [bos, *bpe_tok.encode(d), eos]]  # an empty file is no document
    assert open_tokens(tmp_path / "t.bin").tolist() == want
    tokenize_files(paths, bpe_tok, tmp_path / "e.bin", eos_id=eos)
    assert open_tokens(tmp_path / "e.bin").tolist() == [i for d in docs if d for i in [*bpe_tok.encode(d), eos]]


def test_uint32_corpus_round_trip(tmp_path, big_tok):
    (tmp_path / "a.txt").write_text("héllo wörld", encoding="utf-8")
    tokenize_files([tmp_path / "a.txt"], big_tok, tmp_path / "t.bin", bos_id=big_tok.bos_id)
    spec = token_spec(tmp_path / "t.bin")
    assert spec.dtype == "<u4" and spec.vocab_size == 70_256
    assert spec.open().tolist() == [big_tok.bos_id, *big_tok.encode("héllo wörld")]


def test_non_utf8_file_names_the_byte_and_the_fix(tmp_path, byte_tok):
    raw = b"good text " * 70 + "caf\xe9".encode("latin-1") + b" more"
    (tmp_path / "bad.txt").write_bytes(raw)
    for chunk in (64, 1 << 20):  # the bad byte inside a later chunk, or in the first
        with pytest.raises(ValueError) as e:
            tokenize_files([tmp_path / "bad.txt"], byte_tok, tmp_path / "t.bin", chunk_bytes=chunk)
        msg = str(e.value)
        assert "bad.txt" in msg and "not valid utf-8" in msg and "byte 703" in msg
        assert "iconv -f latin1 -t utf-8" in msg and "encoding=" in msg
    assert not (tmp_path / "t.bin").exists()
    tokenize_files([tmp_path / "bad.txt"], byte_tok, tmp_path / "t.bin", encoding="latin-1")
    assert bytes(open_tokens(tmp_path / "t.bin").tolist()).decode() == raw.decode("latin-1")


def test_multibyte_characters_split_across_reads_decode_fine(tmp_path, byte_tok):
    text = "日本語 é🙂\n" * 50
    (tmp_path / "u.txt").write_text(text, encoding="utf-8")
    tokenize_files([tmp_path / "u.txt"], byte_tok, tmp_path / "t.bin", chunk_bytes=5)
    assert open_tokens(tmp_path / "t.bin").tolist() == list(text.encode())


def test_missing_and_empty_corpus_errors(tmp_path, byte_tok):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*does not exist"):
        tokenize_files([tmp_path / "nope.txt"], byte_tok, tmp_path / "t.bin")
    (tmp_path / "e1.txt").write_text("")
    (tmp_path / "e2.txt").write_text("")
    with pytest.raises(ValueError, match=r"corpus is empty.*e1\.txt.*e2\.txt"):
        tokenize_files([tmp_path / "e1.txt", tmp_path / "e2.txt"], byte_tok, tmp_path / "t.bin", eos_id=None)
    with pytest.raises(ValueError, match="no text files"):
        tokenize_files([], byte_tok, tmp_path / "t.bin")
    with pytest.raises(ValueError, match=r"bos_id=999 is outside the tokenizer's vocabulary \(vocab_size=256\)"):
        tokenize_files([tmp_path / "e1.txt"], byte_tok, tmp_path / "t.bin", bos_id=999)
    assert not (tmp_path / "t.bin").exists()


MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    from transformer_toolkit.data.corpus import tokenize_files
    from transformer_toolkit.tokenizer import ByteLevelTokenizer

    def peak():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    corpus, small, out, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tok = ByteLevelTokenizer()
    tokenize_files([small], tok, out, chunk_bytes=chunk)  # warm up every code path first
    before = peak()
    n = tokenize_files([corpus], tok, out, chunk_bytes=chunk)
    print(n, peak() - before)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for the peak RSS")
def test_tokenising_runs_in_constant_memory(tmp_path):
    """40 MB of text through byte-level ids (the worst case: 8 bytes per id in a Python list).

    The working set is a group of pieces (cores x chunk_bytes) and its ids, never the corpus.
    """
    block = ("the king and queen 42 héllo\n\n" * 4000 + "x" * 300 + " ").encode()
    (tmp_path / "small.txt").write_bytes(block)
    size = 0
    with open(tmp_path / "big.txt", "wb") as f:
        while size < 40_000_000:
            f.write(block)
            size += len(block)
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "big.txt"), str(tmp_path / "small.txt"),
                          str(tmp_path / "t.bin"), str(1 << 17)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    n, growth = map(int, res.stdout.split())
    assert n == size and len(np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r", offset=32)) == size
    assert growth < size / 5, f"peak RSS grew by {growth / 1e6:.1f} MB while tokenising {size / 1e6:.0f} MB"
