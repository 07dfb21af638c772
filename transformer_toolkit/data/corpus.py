"""Tokenise text files into a token file in constant memory, using every core the tokenizer can.

Each file is read in ~1 MB pieces and cut only where byte-level BPE pre-tokenisation (the GPT-2
split pattern) cannot join text across the cut (see :func:`safe_cut`), so encoding the pieces gives exactly the ids of
encoding the whole text. Groups of pieces go to ``tokenizer.encode_batch`` (multi-threaded Rust
for ``RustBPETokenizer``) and the ids stream into a :class:`TokenWriter`.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator

from ..tokenizer.chunking import safe_cut
from .tokens import TokenWriter

CHUNK_BYTES = 1 << 20
FLUSH_IDS = 1 << 16  # ids collected from short documents before one bulk write
def read_chunks(path: str, encoding: str = "utf-8", chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """Yield the decoded text of ``path`` in pieces of about ``chunk_bytes``, each ending at a safe cut.

    Decoding errors name the byte offset of the first bad byte and how to fix the file.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    carry = ""
    pos = 0  # bytes read so far
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            pending = len(decoder.getstate()[0])
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                where = pos - pending + e.start
                raise ValueError(
                    f"{path!r} is not valid {encoding} text: byte {where:,} ({e.object[e.start:e.start + 4]!r}...) "
                    f"{e.reason}. Convert the file (e.g. `iconv -f latin1 -t utf-8 {path} > fixed.txt`) or pass "
                    "encoding= with its real encoding (e.g. encoding='latin-1')") from None
            pos += len(raw)
            if not raw:
                if text:
                    yield text
                return
            cut = safe_cut(text) if len(text) > 1 else 0
            if cut == 0 and len(text) < 4 * chunk_bytes:
                carry = text  # no safe point yet: read on rather than cut inside a token
                continue
            cut = cut or len(text)
            yield text[:cut]
            carry = text[cut:]


def _groups(items: Iterable[tuple[int, str]], budget: int) -> Iterator[list[tuple[int, str]]]:
    """Consecutive items in groups of at most ``budget`` characters (at least one item each)."""
    group, chars = [], 0
    for item in items:
        if group and chars + len(item[1]) > budget:
            yield group
            group, chars = [], 0
        group.append(item)
        chars += len(item[1])
    if group:
        yield group


def default_group_chars(chunk_bytes: int = CHUNK_BYTES) -> int:
    """Text per ``encode_batch`` call: one piece per core (Rust threads), capped to bound memory."""
    return max(2, min(16, os.cpu_count() or 1)) * chunk_bytes


def encode_documents(docs: Iterable[Iterable[str]], tokenizer, writer: TokenWriter, bos_id: int | None = None,
                     eos_id: int | None = None, group_chars: int | None = None) -> int:
    """Encode documents (each an iterable of text pieces) into ``writer``; returns documents written.

    Pieces of consecutive documents share ``encode_batch`` calls of up to ``group_chars``
    characters; each non-empty document is wrapped in ``bos_id`` / ``eos_id`` when given.
    Memory: one group of text and its ids, whatever the corpus size.
    """
    current, n_docs = -1, 0

    def tagged() -> Iterator[tuple[int, str]]:
        for d, pieces in enumerate(docs):
            for piece in pieces:
                if piece:
                    yield d, piece

    out: list[int] = []  # ids waiting for one bulk write (per-document writes are slow for short docs)
    for group in _groups(tagged(), group_chars or default_group_chars()):
        encoded = tokenizer.encode_batch([piece for _, piece in group])
        for k, (d, _) in enumerate(group):
            if d != current:
                if current >= 0 and eos_id is not None:
                    out.append(eos_id)
                if bos_id is not None:
                    out.append(bos_id)
                current, n_docs = d, n_docs + 1
            ids, encoded[k] = encoded[k], None  # free each piece's ids as soon as they are written
            if len(ids) >= FLUSH_IDS:  # a big piece goes straight to disk, without a copy into ``out``
                writer.write(out)
                writer.write(ids)
                out = []
            else:
                out.extend(ids)
                if len(out) >= FLUSH_IDS:
                    writer.write(out)
                    out = []
            del ids
    if current >= 0 and eos_id is not None:
        out.append(eos_id)
    writer.write(out)
    return n_docs


def check_special(tokenizer, bos_id: int | None, eos_id: int | None) -> None:
    for name, v in (("bos_id", bos_id), ("eos_id", eos_id)):
        if v is not None and not 0 <= v < tokenizer.vocab_size:
            raise ValueError(f"{name}={v} is outside the tokenizer's vocabulary (vocab_size={tokenizer.vocab_size}); "
                             f"use tokenizer.{name} or None")


def tokenize_files(paths, tokenizer, out_path: str | os.PathLike, bos_id: int | None = None,
                   eos_id: int | None = None, encoding: str = "utf-8", chunk_bytes: int = CHUNK_BYTES,
                   group_chars: int | None = None) -> int:
    """Tokenise text files (one document each) into the token file ``out_path``; returns its token count.

    >>> tokenize_files(["a.txt", "b.txt"], tok, "data.bin", bos_id=tok.bos_id, eos_id=tok.eos_id)  # doctest: +SKIP
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no text files given; pass paths=['corpus.txt', ...]")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"text file {p!r} does not exist (or is not a file); check the path")
        if not os.access(p, os.R_OK):
            raise ValueError(f"text file {p!r} is not readable; check its permissions")
    check_special(tokenizer, bos_id, eos_id)
    with TokenWriter(out_path, tokenizer.vocab_size) as w:
        docs = (read_chunks(p, encoding, chunk_bytes) for p in paths)
        encode_documents(docs, tokenizer, w, bos_id, eos_id, group_chars or default_group_chars(chunk_bytes))
        if w.n_tokens == 0:
            raise ValueError(f"the corpus is empty: {', '.join(repr(p) for p in paths)} hold no text; "
                             "check the files (and the encoding)")
        return w.n_tokens
