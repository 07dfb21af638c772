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
