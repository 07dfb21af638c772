"""Cut long text into pieces that byte-level BPE tokenises exactly as it would the whole.

Byte-level BPE first splits text into words with the GPT-2 pattern, then merges bytes inside
each word. A cut goes between a non-space character and a whitespace character (a newline if
there is one, else an ASCII space). Every word that holds a non-space character ends with one
and never takes the whitespace after it, special tokens hold no whitespace, and how a
whitespace run splits depends only on what follows it: so the pieces' ids equal the whole's.
Cutting *inside* a whitespace run is not safe (at the end of a piece, or before a special
token, ``"\n\n"`` stays one word), nor after a newline. Only ASCII spaces are trusted as the
cut's right side: ``str.isspace`` also accepts e.g. ``"\x1c"``, which the tokenizer's pattern
does not treat as whitespace.

Long texts are encoded in parallel pieces (``RustBPETokenizer.encode``) and files are streamed
chunk by chunk (``transformer_toolkit.data.corpus``) with this one rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

# Searched on the reversed text (the first match there is the last cut point): a newline, then
# any ASCII space, whose predecessor is not whitespace.
_NEWLINE_AFTER_TEXT = re.compile(r"\n(?=\S)")
_SPACE_AFTER_TEXT = re.compile(r"[ \t\n\r\x0b\x0c](?=\S)")


def safe_cut(text: str) -> int:
    """The last position where ``text`` can be cut so both sides tokenise as inside the whole;
    0 when there is none."""
    rev = text[::-1]
    for pattern in (_NEWLINE_AFTER_TEXT, _SPACE_AFTER_TEXT):
        m = pattern.search(rev)
        if m is not None:
            return len(text) - 1 - m.start()
    return 0


def split_text(text: str, max_chars: int) -> Iterator[str]:
    """Yield consecutive pieces of ``text`` of at most ``max_chars`` characters, cut safely.

    A stretch of ``max_chars`` with no safe point is cut hard (exactness is then lost at that
    one point, which only that much text without a space can cause)."""
    pos = 0
    while len(text) - pos > max_chars:
        cut = safe_cut(text[pos: pos + max_chars + 1]) or max_chars  # a cut at max_chars needs text[max_chars]
        yield text[pos: pos + cut]
        pos += cut
    if pos < len(text):
        yield text[pos:]


# A pre-token (a "word" of the GPT-2 pattern: a run of letters, of digits, of other symbols, or
# of whitespace) longer than this is cut into pieces of this length before BPE training: the
# Rust trainer's time grows with the square of a word's length (one 100 KB word of DNA-like
# text took 52 s, the same cut into 4 KB words 0.6 s), and no useful token spans a thousand
# characters. Text without such words trains exactly as before.
MAX_WORD_CHARS = 1024
# Unicode White_Space, the \s of the tokenizer's pattern
_WHITESPACE = np.array([*range(9, 14), 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                        0x205F, 0x3000], dtype=np.uint32)


def _long_words(max_chars: int) -> re.Pattern:
    n = max_chars + 1  # letters, digits, other symbols (with "_"), whitespace: the pattern's classes
    return re.compile(rf"(?<![^\W\d_])[^\W\d_]{{{n},}}|(?<!\d)\d{{{n},}}|(?<![^\w\s])(?<!_)(?:[^\w\s]|_){{{n},}}"
                      rf"|\s{{{n},}}")


def _long_runs(text: str, max_chars: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the runs of non-whitespace, and of whitespace, longer than
    ``max_chars``: where a long word can be. Found with numpy, ~30x faster than a regex over
    the whole text (which would cost a third of training on ordinary text)."""
    if len(text) <= max_chars:
        return
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    space = np.isin(cp, _WHITESPACE) if cp.max(initial=0) > 127 else (cp == 32) | ((cp >= 9) & (cp <= 13))
    edges = np.flatnonzero(space[1:] != space[:-1]) + 1
    starts, ends = np.concatenate(([0], edges)), np.concatenate((edges, [len(cp)]))
    for i in np.flatnonzero(ends - starts > max_chars):
        yield int(starts[i]), int(ends[i])


def split_long_words(text: str, max_chars: int = MAX_WORD_CHARS) -> list[str]:
    """``text`` as consecutive pieces, cut every ``max_chars`` characters inside each pre-token
    longer than that and nowhere else; given to a BPE trainer as separate texts, no word it
    counts is longer than ``max_chars`` (plus the space a word may start with)."""
    words = _long_words(max_chars)
    pieces, pos = [], 0
    for a, b in _long_runs(text, max_chars):
        for m in words.finditer(text, a, b):
            for cut in range(m.start() + max_chars, m.end(), max_chars):
                pieces.append(text[pos:cut])
                pos = cut
    pieces.append(text[pos:])
    return pieces
