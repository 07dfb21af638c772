"""Cut long text into pieces that byte-level BPE tokenises exactly as it would the whole.

Byte-level BPE first splits text into words with the GPT-2 pattern, then merges bytes inside
each word. Every word pattern that contains a non-space character ends with a non-space
character, and how a whitespace run is split depends only on what follows it, so a point
where a non-space character is followed by whitespace is always a word boundary, and the
text after it is split the same whether or not the text before it is present. Cutting only
there keeps the concatenated ids equal to encoding the whole text, so long texts can be
encoded in parallel pieces and files streamed chunk by chunk. (Cutting after a newline is
not safe: a run such as "\n\n\n" before a word splits differently at the end of a piece.)
Special tokens contain no whitespace, so a cut never splits one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# Searched on the reversed text, so the first match is the last cut point: a whitespace
# character (newline first) whose predecessor is not whitespace.
_NEWLINE_AFTER_TEXT = re.compile(r"\n(?=\S)")
_SPACE_AFTER_TEXT = re.compile(r"\s(?=\S)")


def safe_cut(text: str, limit: int) -> int:
    """The largest safe cut position in ``text[:limit]`` (0 < cut <= limit).

    Prefers the end of a line, then the end of a word; with no whitespace at all in the
    window it cuts at ``limit`` (exactness is then lost at that one point, which only a
    chunk-sized stretch without whitespace can cause).
    """
    if len(text) <= limit:
        return len(text)
    rev = text[limit::-1]  # text[limit], text[limit - 1], ..., text[0]
    for pattern in (_NEWLINE_AFTER_TEXT, _SPACE_AFTER_TEXT):  # prefer ending a piece at a line end
        m = pattern.search(rev)
        if m is not None:
            return limit - m.start()
    return limit


def split_text(text: str, chunk_chars: int) -> Iterator[str]:
    """Yield consecutive pieces of ``text`` of at most ``chunk_chars`` characters, cut safely."""
    pos = 0
    while pos < len(text):
        cut = safe_cut(text[pos: pos + chunk_chars + 1], chunk_chars)
        yield text[pos: pos + cut]
        pos += cut
