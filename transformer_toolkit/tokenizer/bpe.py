"""RustBPETokenizer: byte-level BPE trained and run by Hugging Face's Rust `tokenizers`.

Byte-level means the base alphabet is all 256 bytes, so any UTF-8 text encodes and decodes
back exactly and ``[UNK]`` never appears. The 21 special tokens of the seed README sit at the
fixed ids 0..20 whatever the vocab size, and each encodes to a single id. The saved file is a
standard ``tokenizer.json``: ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``
loads it and encodes identically.

>>> tok = RustBPETokenizer()
>>> tok.train(["hello world", "hello there"] * 50, vocab_size=300)   # doctest: +SKIP
>>> tok.decode(tok.encode("héllo <|im_end|>"))                        # doctest: +SKIP
'héllo <|im_end|>'
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence

from ..atomic import atomic_write_text
from ..optional import require
from .base import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, as_id_list
from .chunking import split_long_words, split_text
from .templates import PRESETS

# Texts longer than this are cut at safe points and encoded in parallel (see chunking.py).
PARALLEL_CHARS = 1 << 20
# The largest vocabulary train() builds: 16x the largest in use; the Rust trainer reserves ~44
# bytes per token asked before it reads a word (1e9 would abort the process asking for 44 GB).
MAX_VOCAB = 1 << 22


def _require_tokenizers():
    return require("tokenizers", "RustBPETokenizer", None)  # a core dependency: only a broken install fails


class RustBPETokenizer:
    """Byte-level BPE with the project's fixed special tokens. Train it, or load a saved one."""

    def __init__(self, path: str | os.PathLike | None = None):
        self._tok = None  # tokenizers.Tokenizer
        if path is not None:
            self.load(path)

    # building -------------------------------------------------------------------------------
    def train(self, texts: Iterable[str] | str, vocab_size: int = 8000, min_frequency: int = 2,
              show_progress: bool = False, corpus_bytes: int | None = None) -> RustBPETokenizer:
        """Learn merges from ``texts``: a list, a file object or any iterator of strings.

        An iterator is consumed once and never held in memory, so a corpus larger than RAM can
        stream through. ``vocab_size`` counts the 21 special tokens and the 256 bytes; a small
        corpus may stop short of it (then ``vocab_size`` reports the real size). A
        ``vocab_size`` more than the corpus can fill is lowered, with a warning, to what it can
        (the trainer reserves memory for every token asked: 4.4 GB for 10^8): each merge uses
        ``min_frequency`` byte pairs of the text at least. A list's size is measured; for an
        iterator give ``corpus_bytes`` (its UTF-8 size, e.g. the files' sizes), else it is
        capped at ``MAX_VOCAB``. Words over ``chunking.MAX_WORD_CHARS`` characters are cut
        (``split_long_words``), so DNA- or base64-like text trains in linear time.
        """
        tk = _require_tokenizers()
        floor = len(SPECIAL_TOKENS) + 256
        if vocab_size < floor:
            raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs the "
                             f"{len(SPECIAL_TOKENS)} special tokens + 256 bytes = {floor} at least")
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, (list, tuple)):
            corpus_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
            texts = [piece for t in texts for piece in split_long_words(t)]
        else:
            texts = (piece for t in texts for piece in split_long_words(t))
        vocab_size = _capped(vocab_size, floor, corpus_bytes, min_frequency)
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = tk.decoders.ByteLevel()
        tok.post_processor = tk.processors.ByteLevel(trim_offsets=False)
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
            special_tokens=list(SPECIAL_TOKENS),  # first, so they take ids 0..20 in order
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        )
        # A list goes to Rust as is; other iterables are grouped into lists, which the Rust
        # side reads in parallel, instead of being pulled one Python string at a time.
        source = texts if isinstance(texts, (list, tuple)) else _batches(texts)
        tok.train_from_iterator(source, trainer=trainer)
        self._tok = tok
        self._check_specials()
        return self

    def _check_specials(self) -> None:
        wrong = [(i, s) for i, s in enumerate(SPECIAL_TOKENS) if self._tok.token_to_id(s) != i]
        if wrong:  # cannot happen with train(); guards against a changed library
            raise RuntimeError(f"special tokens not at their fixed ids: {wrong}")

    @property
    def tokenizer(self):
        """The underlying ``tokenizers.Tokenizer``."""
        if self._tok is None:
            raise RuntimeError("this RustBPETokenizer is empty: call .train(texts, vocab_size) "
                               "or .load('tokenizer.json') first")
        return self._tok

    # the protocol ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        return self._special_id(BOS_ID)

    @property
    def eos_id(self) -> int | None:
        return self._special_id(EOS_ID)

    @property
    def pad_id(self) -> int | None:
        return self._special_id(PAD_ID)

    def _special_id(self, i: int) -> int | None:
        return self.tokenizer.token_to_id(SPECIAL_TOKENS[i])

    def encode(self, text: str, split_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in the text become their single ids,
        unless ``split_special_tokens=True`` (then they are encoded as plain text, which is
        what untrusted user content wants). Long texts are encoded in parallel pieces, with the
        same result as one piece."""
        tok = self.tokenizer
        tok.encode_special_tokens = split_special_tokens
        try:
            if len(text) <= PARALLEL_CHARS:
                return tok.encode(text, add_special_tokens=False).ids
            pieces = tok.encode_batch_fast(list(split_text(text, PARALLEL_CHARS // 4)), add_special_tokens=False)
            return [i for enc in pieces for i in enc.ids]
        finally:
            tok.encode_special_tokens = False

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids plus, per id, the ``(start, end)`` character span of ``text`` it covers (a byte
        token inside a multi-byte character points at that character). The SFT loss mask is
        built from these token boundaries."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts on all cores (Rust threads)."""
        return [enc.ids for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(as_id_list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` (atomically). A folder path gets ``folder/tokenizer.json``."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        atomic_write_text(path, self.tokenizer.to_str(pretty=True))

    def load(self, path: str | os.PathLike) -> RustBPETokenizer:
        """Load a ``tokenizer.json`` (or a folder holding one); returns ``self``."""
        tk = _require_tokenizers()
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer file at {path}: train one with "
                                    "RustBPETokenizer().train(texts, vocab_size) and .save(path) first")
        try:
            self._tok = tk.Tokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"{path} is not a valid tokenizer.json ({e})") from e
        return self

    # helpers for chat templates and interop ---------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tokenizer.id_to_token(i)

    def validate_template(self, template) -> dict[str, int]:
        """Check that every special token a chat template needs is one id in this vocabulary.

        ``template`` is a preset name ("chatml", "llama3", "gemma", "alpaca", "raw"), an object
        with a ``special_tokens`` attribute (a ChatTemplate), or a list of token strings.
        Returns ``{token: id}``; raises ValueError listing the fragmented tokens otherwise.
        """
        if isinstance(template, str):
            if template not in PRESETS:
                raise ValueError(f"unknown template {template!r}; presets: {', '.join(PRESETS)}")
            tokens = PRESETS[template].special_tokens
        else:
            tokens = tuple(getattr(template, "special_tokens", template))
        found, fragmented = {}, []
        for t in tokens:
            ids = self.encode(t)
            if len(ids) == 1 and self.tokenizer.id_to_token(ids[0]) == t:
                found[t] = ids[0]
            else:
                fragmented.append(t)
        if fragmented:
            raise ValueError(f"Template tokens {fragmented} are fragmented: each must be a single special "
                             "token id, but this tokenizer splits them into pieces. It was trained or saved "
                             "before the special tokens were registered. Retrain it with "
                             "RustBPETokenizer().train(...), which registers them; the vocabulary cannot "
                             "change after pretraining.")
        return found

    def to_transformers(self):
        """This tokenizer as a ``transformers.PreTrainedTokenizerFast`` with its special tokens set."""
        PreTrainedTokenizerFast = require("transformers", "to_transformers()", "hf").PreTrainedTokenizerFast
        named = {"unk_token": "[UNK]", "pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
        named = {k: v for k, v in named.items() if self.token_to_id(v) is not None}
        extra = [s for s in SPECIAL_TOKENS if s not in named.values() and self.token_to_id(s) is not None]
        return PreTrainedTokenizerFast(tokenizer_object=self.tokenizer, additional_special_tokens=extra,
                                       clean_up_tokenization_spaces=False, **named)

    def __repr__(self) -> str:
        size = "untrained" if self._tok is None else f"vocab_size={self.vocab_size}"
        return f"RustBPETokenizer({size})"


def _capped(vocab_size: int, floor: int, corpus_bytes: int | None, min_frequency: int) -> int:
    """``vocab_size``, or what a corpus of ``corpus_bytes`` can fill (or ``MAX_VOCAB``) with a warning."""
    fill = floor + corpus_bytes // max(1, min_frequency) if corpus_bytes is not None else None
    limit = min(MAX_VOCAB, fill) if fill is not None else MAX_VOCAB
    if vocab_size <= limit:
        return vocab_size
    why = (f"{corpus_bytes:,} bytes of text can fill at most {fill:,} tokens" if fill is not None and fill <= MAX_VOCAB
           else f"vocabularies above {MAX_VOCAB:,} tokens are refused (the largest in use are ~256K)")
    warnings.warn(f"vocab_size={vocab_size:,} is more than the trainer can use: {why}; training with "
                  f"vocab_size={limit:,}", RuntimeWarning, stacklevel=3)
    return limit


def _batches(texts: Iterable[str], size: int = 1024) -> Iterator[list[str]]:
    """Group an iterable of strings into lists, the unit the Rust trainer parallelises over."""
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
