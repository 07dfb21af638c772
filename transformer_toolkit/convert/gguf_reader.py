"""Reading a GGUF file's metadata and tensor table in one pass over its bytes.

gguf-py's ``GGUFReader`` makes a numpy view of every part of every metadata value, which for a
real vocabulary (SmolLM2's 49,152 tokens and 48,900 merges) takes about 2 s: most of the time
``ttk chat --model x.gguf`` waited before its first token. ``GGUFFile`` reads the same header
with ``struct`` into Python values, about 30x faster, and maps the tensor data as numpy views of
the memory-mapped file, exactly as ``GGUFReader`` does (same dtypes and shapes, so
``gguf.quants.dequantize`` takes them as they are).

Only what the importer uses is offered: ``fields[key].contents()`` and ``tensors`` (``name``,
``tensor_type``, ``shape``, ``n_elements``, ``n_bytes``, ``data_offset``, ``data``). Both byte
orders and format versions 2 and 3 are read; anything else raises ``ValueError``.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
STRING, ARRAY = 8, 9
# value type -> struct code (GGUF spec: uint8, int8, uint16, int16, uint32, int32, float32, bool,
# string, array, uint64, int64, float64)
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
DEFAULT_ALIGNMENT = 32
HEADER_BYTES = 24  # magic, version, tensor count, metadata count
# element types whose data GGUFReader gives as numbers; every other type as raw bytes
NUMERIC_TENSORS = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16,
                   "I32": np.int32, "I64": np.int64}


class Field:
    """One metadata value. ``contents()`` as ``GGUFReader``'s fields give it: a str, int, float
    or bool, or a list of them for an array (a fresh list each call)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def contents(self) -> Any:
        return list(self.value) if isinstance(self.value, list) else self.value


@dataclass
class Tensor:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: np.ndarray  # GGUF order (fastest-varying first), uint64, as GGUFReader gives it
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray  # a read-only view of the mapped file


class _Cursor:
    """Reads little- or big-endian values from ``buf`` at a moving offset."""

    def __init__(self, buf, order: str, path: str):
        self.buf, self.order, self.path, self.at = buf, order, path, 0

    def take(self, code: str):
        return self.many(code, 1)[0]

    def many(self, code: str, n: int) -> tuple:
        fmt = f"{self.order}{n}{code}"
        try:
            values = struct.unpack_from(fmt, self.buf, self.at)
        except struct.error:
            raise ValueError(f"{self.path}: the GGUF header ends early at byte {self.at} (a truncated or "
                             "damaged file); download or export it again") from None
        self.at += struct.calcsize(fmt)
        return values

    def string(self) -> str:
        n = self.take("Q")
        raw = self.buf[self.at:self.at + n]
        if len(raw) != n:
            self.many("B", n)  # raises the truncation error
        self.at += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: the GGUF string at byte {self.at - n} is not UTF-8 (a damaged file); "
                             "download or export it again") from None

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            item, count = self.take("I"), self.take("Q")
            if item == STRING:
                return [self.string() for _ in range(count)]
            if item not in SCALARS:
                raise ValueError(f"{self.path}: unsupported GGUF array of value type {item}")
            return list(self.many(SCALARS[item], count))
        if vtype not in SCALARS:
            raise ValueError(f"{self.path}: unsupported GGUF value type {vtype}")
        return self.take(SCALARS[vtype])


class GGUFFile:
    """``fields`` (key -> ``Field``) and ``tensors`` (in file order) of a GGUF file, memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        self.path = path = os.fspath(path)
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                raise ValueError(f"{path} is empty, not a GGUF file") from None
        buf = self._map
        if buf[:4] != MAGIC:
            raise ValueError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        if len(buf) < HEADER_BYTES:
            raise ValueError(f"{path} is {len(buf)} bytes, too short for a GGUF header ({HEADER_BYTES} bytes): a "
                             "truncated file; download or export it again")
        order = "<" if struct.unpack_from("<I", buf, 4)[0] in VERSIONS else ">"
        cur = _Cursor(buf, order, path)
        cur.at = 4
        version = cur.take("I")
        if version not in VERSIONS:
            raise ValueError(f"{path}: GGUF version {version} is not supported (versions 2 and 3 are)")
        n_tensors, n_fields = cur.take("Q"), cur.take("Q")
        # the header's counts first, under the names GGUFReader gives them
        self.fields: dict[str, Field] = {"GGUF.version": Field(version), "GGUF.tensor_count": Field(n_tensors),
                                         "GGUF.kv_count": Field(n_fields)}
        for _ in range(n_fields):
            key = cur.string()
            self.fields[key] = Field(cur.value(cur.take("I")))
        table = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = cur.many("Q", cur.take("I"))
            table.append((name, dims, cur.take("I"), cur.take("Q")))
        align = self.fields.get("general.alignment")
        align = align.value if align is not None else DEFAULT_ALIGNMENT
        if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"{path}: general.alignment = {align!r} is not a positive power of two (GGUF files "
                             f"use {DEFAULT_ALIGNMENT}); the file is damaged")
        start = cur.at + (-cur.at % align)
        self.tensors: list[Tensor] = []
        seen = set()
        for name, dims, raw_type, offset in table:
            if name in seen:
                raise ValueError(f"{path}: tensor {name} appears twice")
            seen.add(name)
            try:
                kind = GGMLQuantizationType(raw_type)
                block, size = GGML_QUANT_SIZES[kind]
            except (ValueError, KeyError):
                raise ValueError(f"{path}: tensor {name} has type id {raw_type}, which the installed gguf package "
                                 "does not know; upgrade it (pip install -U gguf) or re-quantise the file with "
                                 "llama.cpp's llama-quantize") from None
            n = math.prod(dims)  # Python ints: a damaged header cannot overflow them
            n_bytes = n * size // block
            shape = tuple(reversed(dims))
            if kind.name in NUMERIC_TENSORS:
                dtype, count = np.dtype(NUMERIC_TENSORS[kind.name]).newbyteorder(order), n
            else:
                dtype, count, shape = np.dtype(np.uint8), n_bytes, quant_shape_to_byte_shape(shape, kind)
            at = start + offset
            if at + count * dtype.itemsize > len(buf):
                raise ValueError(f"{path}: tensor {name}'s data runs past the end of the file (a truncated "
                                 "file); download or export it again")
            data = np.frombuffer(buf, dtype=dtype, count=count, offset=at).reshape(shape)
            self.tensors.append(Tensor(name, kind, np.array(dims, dtype=np.uint64), n, n_bytes, at, data))
