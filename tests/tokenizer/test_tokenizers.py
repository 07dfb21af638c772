"""Tokenizer protocol, exact round trips, the fixed special ids, HF compatibility, loading."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tok_helpers import corpus

import transformer_toolkit.tokenizer.bpe as bpe_module
from transformer_toolkit import c_tokenizers
from transformer_toolkit.tokenizer import (
    SPECIAL_TOKENS,
    ByteLevelTokenizer,
    HFTokenizer,
    RustBPETokenizer,
    Tokenizer,
    load_tokenizer,
)
from transformer_toolkit.tokenizer.chunking import split_text

# Any text that can be UTF-8 encoded (lone surrogates cannot be).
unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


# ---------------------------------------------------------------- byte level
def test_byte_level_readme_example():
    tok = ByteLevelTokenizer()
    ids = tok.encode("Hello world")
    assert ids == [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]
    assert tok.decode(ids) == "Hello world"
    assert tok.vocab_size == 256
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, None, None)
    assert isinstance(tok, Tokenizer)


@given(unicode_text)
def test_byte_level_round_trip(text):
    tok = ByteLevelTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, text[::-1]]) == [ids, tok.encode(text[::-1])]


def test_byte_level_decode_bad_input():
    tok = ByteLevelTokenizer()
    assert tok.decode([0xE6, 0x9D]) == "\ufffd"  # a cut multi-byte char (a model may sample one)
    with pytest.raises(ValueError, match="0..255"):
        tok.decode([300])


# ---------------------------------------------------------------- BPE: specials and round trips
def test_special_tokens_at_fixed_ids(bpe):
    assert len(SPECIAL_TOKENS) == 21
    for i, s in enumerate(SPECIAL_TOKENS):
        assert bpe.token_to_id(s) == i
        assert bpe.encode(s) == [i], s
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id) == (1, 2, 3)
    assert SPECIAL_TOKENS[7:9] == ("<|im_start|>", "<|im_end|>")
    assert SPECIAL_TOKENS[20] == "<|system|>"


def test_no_stray_space_after_special(bpe):
    for s in SPECIAL_TOKENS:
        for text in ("user\nhello", "the fox", " spaced"):
            assert bpe.encode(s + text) == [SPECIAL_TOKENS.index(s)] + bpe.encode(text)
    assert bpe.decode(bpe.encode("<|im_start|>user\nhi<|im_end|>\n")) == "<|im_start|>user\nhi<|im_end|>\n"


def test_split_special_tokens_encodes_them_as_text(bpe):
    ids = bpe.encode("<|im_end|>", split_special_tokens=True)
    assert len(ids) > 1 and 8 not in ids
    assert bpe.decode(ids) == "<|im_end|>"
    assert bpe.encode("<|im_end|>") == [8]  # the switch does not stick


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(unicode_text)
def test_bpe_round_trip_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert 0 not in ids or "[UNK]" in text  # no [UNK] from unseen bytes
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_decode_skip_special_tokens(bpe):
    ids = bpe.encode("[BOS]hello<|im_end|>")
    assert bpe.decode(ids) == "[BOS]hello<|im_end|>"
    assert bpe.decode(ids, skip_special_tokens=True) == "hello"


def test_vocab_size_and_merges(bpe):
    assert bpe.vocab_size == 350
    words = bpe.encode("the quick brown fox")
    assert len(words) < len(b"the quick brown fox")  # merges happened


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="277"):
        RustBPETokenizer().train(["abc"], vocab_size=100)


def test_train_from_iterator_equals_list():
    lines = corpus(200, seed=1)
    a = RustBPETokenizer().train(lines, vocab_size=320)
    b = RustBPETokenizer().train(iter(lines), vocab_size=320)
    c = RustBPETokenizer().train((line for line in lines), vocab_size=320)
    probe = "the lazy dog jumps over 42 naïve cafés"
    assert a.encode(probe) == b.encode(probe) == c.encode(probe)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def test_encode_batch_equals_encode(bpe):
    texts = corpus(20, seed=2) + ["", "<|im_start|>x"]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_long_text_parallel_encode_is_exact(bpe, monkeypatch):
    text = "".join(corpus(300, seed=3)) + "  trailing\n\n\n spaces\t\tand tabs <|im_end|>\n" * 5
    whole = bpe.encode(text)
    monkeypatch.setattr(bpe_module, "PARALLEL_CHARS", 64)  # force the chunked path
    assert bpe.encode(text) == whole


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.sampled_from("ab \n\t\r.é🙂<|>\x1c"), max_size=80), st.integers(1, 20))
def test_safe_chunks_tokenise_like_the_whole(bpe, text, size):
    parts = list(split_text(text, size))
    assert "".join(parts) == text
    assert all(0 < len(p) <= size for p in parts)
    cuts = [sum(map(len, parts[:k])) for k in range(1, len(parts))]
    def ok(a: str, b: str) -> bool:  # the rule: a non-space, then an ASCII whitespace character
        return not a.isspace() and b in " \t\n\r\x0b\x0c"

    safe = [ok(text[i - 1], text[i]) for i in cuts]
    for start, fine in zip([0] + cuts, safe, strict=False):
        if not fine:  # a hard cut only where the window had no safe point at all
            window = text[start: start + size + 1]
            assert not any(ok(a, b) for a, b in zip(window, window[1:], strict=False))
    if all(safe):
        assert [t for p in parts for t in bpe.encode(p)] == bpe.encode(text)


def test_train_takes_a_single_string_as_one_text():
    tok = RustBPETokenizer().train("one single text " * 20, vocab_size=300)
    assert tok.decode(tok.encode("single")) == "single"


def test_untrained_tokenizer_says_what_to_do():
    with pytest.raises(RuntimeError, match="train"):
        RustBPETokenizer().encode("x")


# ---------------------------------------------------------------- saving and loading
def test_save_load_round_trip(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    tok = RustBPETokenizer()
    assert tok.load(path) is tok  # README: tok.load("tokenizer.json")
    text = "<|start_header_id|>user<|end_header_id|>\n\nnaïve 東京<|eot_id|>"
    assert tok.encode(text) == bpe.encode(text)
    assert tok.vocab_size == bpe.vocab_size
    assert RustBPETokenizer(path).encode(text) == bpe.encode(text)
    assert RustBPETokenizer().load(tmp_path).encode(text) == bpe.encode(text)  # a folder works too
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_load_missing_or_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train one"):
        RustBPETokenizer().load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        RustBPETokenizer().load(bad)


def test_saved_file_loads_in_transformers_and_encodes_identically(bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    texts = corpus(30, seed=4) + ["<|im_start|>user\nhi<|im_end|>\n", "naïve 東京 🙂  x", "", "[BOS]a[EOS]"]
    for t in texts:
        ids = bpe.encode(t)
        assert hf.encode(t, add_special_tokens=False) == ids
        assert hf.decode(ids) == bpe.decode(ids)


def test_hf_tokenizer_offline_on_a_local_folder(bpe, tmp_path):
    folder = tmp_path / "hf_tok"
    bpe.to_transformers().save_pretrained(folder)
    tok = HFTokenizer(folder)
    text = "the quick <|im_end|> naïve"
    assert tok.encode(text) == bpe.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch([text, "dog"]) == [bpe.encode(text), bpe.encode("dog")]
    assert tok.vocab_size == bpe.vocab_size
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 1)
    assert tok._tok.bos_token_id == 2  # the README reaches into _tok
    assert tok.token_to_id("<|im_start|>") == 7
    assert isinstance(tok, Tokenizer)
    again = tmp_path / "again"
    tok.save(again)
    assert HFTokenizer(again).encode(text) == tok.encode(text)


def test_hf_tokenizer_missing_folder_error(tmp_path):
    with pytest.raises(OSError, match="could not load a tokenizer"):
        HFTokenizer(tmp_path / "missing-folder")


def test_load_tokenizer_picks_the_class(bpe, tmp_path):
    bpe.save(tmp_path / "bpe.json")
    assert isinstance(load_tokenizer(tmp_path / "bpe.json"), RustBPETokenizer)

    ByteLevelTokenizer().save(tmp_path / "bytes.json")
    assert isinstance(load_tokenizer(tmp_path / "bytes.json"), ByteLevelTokenizer)

    run = tmp_path / "run"
    run.mkdir()
    bpe.save(run)
    assert isinstance(load_tokenizer(run), RustBPETokenizer)

    hf_folder = tmp_path / "hf"
    bpe.to_transformers().save_pretrained(hf_folder)
    assert isinstance(load_tokenizer(hf_folder), RustBPETokenizer)  # still ours: same specials

    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(corpus(50), trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"]))
    raw.save(str(tmp_path / "foreign.json"))
    assert isinstance(load_tokenizer(tmp_path / "foreign.json"), HFTokenizer)

    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a tokenizer file"):
        load_tokenizer(tmp_path / "other.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "empty")


def test_validate_template(bpe, tmp_path):
    assert bpe.validate_template("chatml") == {"<|im_start|>": 7, "<|im_end|>": 8}
    assert bpe.validate_template("llama3")["<|eot_id|>"] == 11
    assert bpe.validate_template("gemma") == {"<start_of_turn>": 12, "<end_of_turn>": 13}
    assert bpe.validate_template("raw") == {}
    assert bpe.validate_template(["<|system|>"]) == {"<|system|>": 20}
    with pytest.raises(ValueError, match="unknown template"):
        bpe.validate_template("chatlm")

    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(corpus(50), trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.save(str(tmp_path / "nospecial.json"))
    tok = RustBPETokenizer().load(tmp_path / "nospecial.json")
    assert tok.bos_id is None and tok.pad_id is None
    with pytest.raises(ValueError, match=r"Template tokens \['<\|im_start\|>', '<\|im_end\|>'\] are fragmented"):
        tok.validate_template("chatml")


def test_seed_import_paths():
    assert c_tokenizers.RustBPETokenizer is RustBPETokenizer
    assert c_tokenizers.ByteLevelTokenizer is ByteLevelTokenizer
    assert c_tokenizers.HFTokenizer is HFTokenizer


def test_saved_tokenizer_files_get_the_usual_mode_and_secrets_stay_private(tmp_path):
    import os
    import stat

    from transformer_toolkit.atomic import atomic_write_text
    from transformer_toolkit.tokenizer import ByteLevelTokenizer

    umask = os.umask(0)
    os.umask(umask)
    ByteLevelTokenizer().save(tmp_path / "tok.json")
    assert stat.S_IMODE((tmp_path / "tok.json").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    atomic_write_text(tmp_path / "secret" / "token", "hf_x", private=True)
    assert stat.S_IMODE((tmp_path / "secret" / "token").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o700 & ~umask
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []
