"""Token files on disk: a small headed binary format, legacy raw uint16, and ``.npy``.

The headed ``.bin`` format is 32 bytes of header followed by the raw little-endian tokens, so
``np.memmap(path, dtype, offset=32)`` reads it::

    offset  size  field
    0       8     magic  b"TTKTOKS\\0"
    8       4     version (1), uint32
    12      4     itemsize: 2 (uint16) or 4 (uint32)
    16      8     n_tokens, uint64
    24      4     vocab_size, uint32 (0 = unknown)
    28      4     max_id, uint32 (largest id stored; lets a reader skip the vocabulary scan)

Tokens are stored as uint16 while the vocabulary fits (every id < 65,536) and as uint32 beyond:
the reference implementation always used uint16 and silently wrapped ids over 65,535.
A file without the magic is read as the headerless uint16 stream older (nanoGPT-style) runs wrote.
Every writer goes through a temp file in the destination folder and ``os.replace``, so a crash
never leaves half a file and never damages the file it was replacing.
"""

from __future__ import annotations

import array
import os
import struct
from dataclasses import dataclass, replace

import numpy as np

from ..atomic import temp_path_for

MAGIC = b"TTKTOKS\x00"
VERSION = 1
HEADER = struct.Struct("<8sIIQII")
HEADER_BYTES = HEADER.size  # 32
NPY_MAGIC = b"\x93NUMPY"
CHUNK = 1 << 22  # tokens per chunk when copying or scanning: constant memory on any file size
LIST_SLICE = 1 << 18  # ids of a Python list converted to numpy at a time
_UINT32_LIST = array.array("I").itemsize == 4


def dtype_for(vocab_size: int | None, max_id: int = -1) -> np.dtype:
    """uint16 while every id fits in 16 bits (vocab <= 65,536), else uint32."""
    if (vocab_size is None or vocab_size <= 1 << 16) and max_id < 1 << 16:
        return np.dtype("<u2")
    if (vocab_size or 0) > 1 << 32 or max_id >= 1 << 32:
        raise ValueError(f"token ids up to {max(vocab_size or 0, max_id + 1) - 1} do not fit in uint32")
    return np.dtype("<u4")


def as_id_array(ids, what: str = "ids") -> np.ndarray:
    """A 1-D integer numpy array (uint32 or int64) from a list, a numpy array or a tensor of ids."""
    if isinstance(ids, list) and _UINT32_LIST:
        try:  # 3x faster than np.array for a list of Python ints (tokenizers return lists)
            return np.frombuffer(array.array("I", ids), dtype=np.uint32)
        except (OverflowError, TypeError):
            pass  # negative, huge or not integers: the general path below says which
    if hasattr(ids, "detach"):  # torch.Tensor, without importing torch here
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one token stream), got shape {tuple(arr.shape)}; flatten it first")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True)
class TokenSpec:
    """Where a token stream lives: enough to reopen it lazily in any process (cheap to pickle).

    ``start``/``length`` select a contiguous view (a train or val split) without copying.
    ``max_id`` is an upper bound on the ids in the view when known (from the header), else None.
    """

    path: str
    offset: int
    dtype: str
    start: int
    length: int
    vocab_size: int | None = None
    max_id: int | None = None

    def open(self) -> np.ndarray:
        """Read-only 1-D memmap of this view."""
        if self.length == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset + self.start * self.itemsize,
                         shape=(self.length,))

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def slice(self, a: int, b: int) -> TokenSpec:
        """The view of tokens ``[a, b)`` of this view."""
        a, b = max(0, a), min(self.length, b)
        return replace(self, start=self.start + a, length=max(0, b - a))


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(f"token file {path!r} does not exist; write it first with save_binary(ids, path) "
                             "or tokenize_files(paths, tokenizer, path), or check the path")


def token_spec(path: str | os.PathLike) -> TokenSpec:
    """Inspect a token file (headed .bin, .npy or legacy raw uint16 .bin) and describe it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _missing(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a token file; pass the .bin or .npy file inside it")
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise ValueError(f"cannot read token file {path!r} ({e.strerror}); check its permissions") from e
    size = os.path.getsize(path)
    if head[:8] == MAGIC:
        if len(head) < HEADER_BYTES:
            raise ValueError(f"{path!r} has a truncated header ({len(head)} of {HEADER_BYTES} bytes); rewrite it")
        _, version, itemsize, n, vocab, max_id = HEADER.unpack(head)
        if version != VERSION or itemsize not in (2, 4):
            raise ValueError(f"{path!r}: unsupported token file (version {version}, itemsize {itemsize}); "
                             "it was written by a newer transformer_toolkit, upgrade it")
        if HEADER_BYTES + n * itemsize > size:
            raise ValueError(f"{path!r} is truncated: header says {n:,} tokens but the file holds "
                             f"{(size - HEADER_BYTES) // itemsize:,}; rewrite it")
        return TokenSpec(path, HEADER_BYTES, f"<u{itemsize}", 0, n, vocab or None, max_id if n else None)
    if head[:6] == NPY_MAGIC:
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"{path!r} holds a {arr.dtype} array of shape {arr.shape}; a token file is a 1-D "
                             "integer array (save one with save_binary(ids, path))")
        offset = int(getattr(arr, "offset", 0))
        if arr.size == 0:  # numpy may hand back a plain array for an empty file
            offset = size
        return TokenSpec(path, offset, arr.dtype.str, 0, int(arr.shape[0]))
    if size % 2:
        raise ValueError(f"{path!r} is not a token file: no header and an odd size ({size} bytes), so not raw "
                         "uint16 either; write token files with save_binary(ids, path)")
    return TokenSpec(path, 0, "<u2", 0, size // 2)


def open_tokens(path: str | os.PathLike) -> np.ndarray:
    """Read-only 1-D memmap of a token file: headed .bin, legacy raw uint16 .bin, or .npy."""
    return token_spec(path).open()


def check_ids(spec: TokenSpec, vocab_size: int, who: str = "the tokenizer") -> None:
    """Raise if any id of the view is outside ``[0, vocab_size)``; scans in chunks unless the header says."""
    if spec.max_id is not None and spec.max_id < vocab_size:
        return
    tokens = spec.open()
    for a in range(0, len(tokens), CHUNK):
        chunk = np.asarray(tokens[a:a + CHUNK])
        bad = np.flatnonzero((chunk >= vocab_size) | (chunk < 0))
        if bad.size:
            pos = int(bad[0])
            raise ValueError(f"{spec.path!r}: token id {int(chunk[pos])} at position {spec.start + a + pos:,} is "
                             f"outside the vocabulary of {who} (vocab_size={vocab_size}); the file was made with "
                             "another tokenizer: pass that one, or re-tokenise the text with this one")


class TokenWriter:
    """Write a headed token file incrementally, atomically.

    >>> with TokenWriter("data.bin", vocab_size=8000) as w:   # doctest: +SKIP
    ...     w.write([1, 2, 3])
    ...     w.write(np.array([4, 5]))

    Tokens go to a temp file in the same folder; ``close`` patches ``n_tokens``/``max_id`` into
    the header and renames it over ``path``. If the block raises, the temp file is removed and a
    file already at ``path`` is left untouched. ``dtype`` overrides the choice from ``vocab_size``.
    """

    def __init__(self, path: str | os.PathLike, vocab_size: int | None, *, dtype=None):
        self.path = os.fspath(path)
        if vocab_size is None and dtype is None:
            raise ValueError("TokenWriter needs vocab_size (e.g. tokenizer.vocab_size) to pick uint16 or uint32")
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.dtype = np.dtype(dtype).newbyteorder("<") if dtype is not None else dtype_for(vocab_size)
        if self.dtype.str not in ("<u2", "<u4"):
            raise ValueError(f"token files store uint16 or uint32, not {self.dtype}")
        self.limit = min(vocab_size or 1 << 62, 1 << (8 * self.dtype.itemsize))
        self.n_tokens = 0
        self.max_id = 0
        self._tmp = temp_path_for(self.path)
        self._f = open(self._tmp, "xb")
        self._f.write(bytes(HEADER_BYTES))  # patched in close()

    def write(self, ids) -> None:
        """Append a chunk of ids (list, numpy array or 1-D tensor)."""
        if isinstance(ids, list) and len(ids) > LIST_SLICE:
            for a in range(0, len(ids), LIST_SLICE):  # 8 bytes per id as int64: convert a slice at a time
                self.write(ids[a:a + LIST_SLICE])
            return
        arr = as_id_array(ids)
        if arr.size == 0:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.limit:
            pos = int(np.flatnonzero((arr < 0) | (arr >= self.limit))[0])
            what = f"vocab_size={self.vocab_size}" if self.vocab_size else f"the {self.dtype} range"
            raise ValueError(f"writing {self.path!r}: token id {int(arr[pos])} at position {self.n_tokens + pos:,} "
                             f"is outside {what}; ids must be in [0, {self.limit}). Pass the vocab_size of the "
                             "tokenizer that produced these ids")
        self._f.write(arr.astype(self.dtype).tobytes())
        self.n_tokens += arr.size
        self.max_id = max(self.max_id, hi)

    def close(self) -> str:
        """Finish the file and move it into place; returns the path."""
        if self._f is None:
            return self.path
        self._f.seek(0)
        self._f.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.n_tokens, self.vocab_size or 0,
                                  self.max_id))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is not touched."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_binary(ids, path: str | os.PathLike, vocab_size: int | None = None) -> int:
    """Save a token stream (list, numpy array or 1-D tensor) to ``path``; returns the token count.

    A ``.npy`` path gets a numpy file, anything else the headed format above. Pass
    ``vocab_size`` (``tok.vocab_size``) to have ids checked against it and recorded.
    """
    arr = as_id_array(ids)
    max_id = int(arr.max()) if arr.size else 0
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"writing {os.fspath(path)!r}: negative token id {int(arr.min())}; ids must be >= 0")
    if vocab_size is not None and max_id >= vocab_size:
        pos = int(np.flatnonzero(arr >= vocab_size)[0])
        raise ValueError(f"writing {os.fspath(path)!r}: token id {int(arr[pos])} at position {pos:,} is outside "
                         f"vocab_size={vocab_size}; pass the vocab_size of the tokenizer that made these ids")
    dtype = dtype_for(vocab_size, max_id)
    if os.fspath(path).endswith(".npy"):
        write_npy(arr.astype(dtype), path)
    else:
        with TokenWriter(path, vocab_size, dtype=dtype) as w:
            for a in range(0, arr.size, CHUNK):
                w.write(arr[a:a + CHUNK])
    return int(arr.size)


def write_npy(tokens: np.ndarray, path: str | os.PathLike) -> str:
    """Copy a 1-D token array (often a memmap view) to a ``.npy`` file in chunks, atomically.

    Plain file writes after a numpy header: memory use stays constant whatever the size.
    """
    path = os.fspath(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "xb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(tokens.dtype), "fortran_order": False,
                      "shape": (int(tokens.shape[0]),)}
            np.lib.format.write_array_header_1_0(f, header)
            for a in range(0, tokens.shape[0], CHUNK):
                f.write(np.ascontiguousarray(tokens[a:a + CHUNK]).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
