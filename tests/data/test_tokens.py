"""Token files: header, uint16/uint32 choice, legacy raw uint16, .npy, the atomic writer, errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from transformer_toolkit.data.tokens import (
    HEADER_BYTES,
    MAGIC,
    TokenWriter,
    check_ids,
    open_tokens,
    token_spec,
    write_npy,
)
from transformer_toolkit.dataloader import save_binary


def test_header_layout_and_raw_memmap(tmp_path):
    ids = [5, 0, 65535, 7]
    save_binary(ids, tmp_path / "t.bin", vocab_size=65536)
    raw = (tmp_path / "t.bin").read_bytes()
    magic, version, itemsize, n, vocab, max_id = struct.unpack("<8sIIQII", raw[:32])
    assert (magic, version, itemsize, n, vocab, max_id) == (MAGIC, 1, 2, 4, 65536, 65535)
    assert len(raw) == HEADER_BYTES + 2 * len(ids)
    # the documented promise: a plain numpy memmap at offset 32 reads the tokens
    assert np.memmap(tmp_path / "t.bin", dtype="<u2", mode="r", offset=32).tolist() == ids


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_save_binary_accepts_list_array_tensor(tmp_path, kind):
    ids = list(range(300))
    data = {"list": ids, "numpy": np.array(ids, dtype=np.int32), "tensor": torch.tensor(ids)}[kind]
    assert save_binary(data, tmp_path / "t.bin") == 300
    mm = open_tokens(tmp_path / "t.bin")
    assert isinstance(mm, np.memmap) and not mm.flags.writeable
    assert mm.tolist() == ids


def test_uint16_while_vocab_fits_uint32_beyond(tmp_path):
    save_binary([1, 2, 65535], tmp_path / "a.bin")
    save_binary([1, 2], tmp_path / "b.bin", vocab_size=65536)
    save_binary([1, 2], tmp_path / "c.bin", vocab_size=65537)  # ids small, but the vocabulary is not
    save_binary([1, 70_000, 4_000_000_000], tmp_path / "d.bin")
    assert open_tokens(tmp_path / "a.bin").dtype == np.uint16
    assert open_tokens(tmp_path / "b.bin").dtype == np.uint16
    assert open_tokens(tmp_path / "c.bin").dtype == np.uint32
    d = open_tokens(tmp_path / "d.bin")
    assert d.dtype == np.uint32 and d.tolist() == [1, 70_000, 4_000_000_000]  # no silent wrap past 65,535


def test_npy_path_gets_a_numpy_file(tmp_path):
    save_binary([3, 70_000], tmp_path / "t.npy")
    arr = np.load(tmp_path / "t.npy")
    assert arr.dtype == np.uint32 and arr.tolist() == [3, 70_000]
    assert open_tokens(tmp_path / "t.npy").tolist() == [3, 70_000]


def test_legacy_raw_uint16_bin_still_loads(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) * 7
    ids.tofile(tmp_path / "old.bin")  # what older (nanoGPT-style) runs wrote: no header
    spec = token_spec(tmp_path / "old.bin")
    assert (spec.offset, spec.dtype, spec.length, spec.max_id) == (0, "<u2", 1000, None)
    assert np.array_equal(open_tokens(tmp_path / "old.bin"), ids)


def test_odd_sized_headerless_file_is_rejected(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match=r"junk\.bin.*odd size \(3 bytes\).*save_binary"):
        open_tokens(tmp_path / "junk.bin")


def test_truncated_headed_file_is_rejected(tmp_path):
    save_binary(list(range(100)), tmp_path / "t.bin")
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"t\.bin.*truncated.*100 tokens.*95"):
        open_tokens(tmp_path / "t.bin")


def test_missing_file_and_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.bin.*does not exist.*save_binary"):
        open_tokens(tmp_path / "nope.bin")
    with pytest.raises(ValueError, match="is a folder"):
        open_tokens(tmp_path)


def test_npy_must_be_1d_integers(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros(4, dtype=np.float32))
    np.save(tmp_path / "m.npy", np.zeros((2, 2), dtype=np.int64))
    for name in ("f.npy", "m.npy"):
        with pytest.raises(ValueError, match=r"1-D integer array"):
            open_tokens(tmp_path / name)


def test_empty_files_open_as_empty(tmp_path):
    save_binary([], tmp_path / "e.bin")
    np.save(tmp_path / "e.npy", np.zeros(0, dtype=np.uint16))
    assert len(open_tokens(tmp_path / "e.bin")) == 0
    assert len(open_tokens(tmp_path / "e.npy")) == 0


def test_save_binary_rejects_ids_outside_vocab(tmp_path):
    with pytest.raises(ValueError, match=r"t\.bin.*token id 300 at position 2 is outside vocab_size=256"):
        save_binary([1, 2, 300], tmp_path / "t.bin", vocab_size=256)
    with pytest.raises(ValueError, match="negative token id -1"):
        save_binary([1, -1], tmp_path / "t.bin")
    with pytest.raises(ValueError, match="integer token ids"):
        save_binary(np.array([1.5, 2.0]), tmp_path / "t.bin")
    assert not (tmp_path / "t.bin").exists()


def test_writer_streams_chunks_and_records_max(tmp_path):
    with TokenWriter(tmp_path / "w.bin", vocab_size=1000) as w:
        w.write([1, 2, 3])
        w.write(np.array([999], dtype=np.int16))
        w.write(torch.tensor([4, 5]))
        w.write([])
    spec = token_spec(tmp_path / "w.bin")
    assert (spec.length, spec.vocab_size, spec.max_id) == (6, 1000, 999)
    assert spec.open().tolist() == [1, 2, 3, 999, 4, 5]
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]  # no temp file left behind


def test_writer_error_names_file_id_and_vocab(tmp_path):
    with pytest.raises(ValueError, match=r"w\.bin.*token id 1000 at position 4 .*vocab_size=1000"):
        with TokenWriter(tmp_path / "w.bin", vocab_size=1000) as w:
            w.write([1, 2, 3])
            w.write([4, 1000])


def test_writer_is_atomic_old_file_survives_a_crash(tmp_path):
    path = tmp_path / "data.bin"
    save_binary([7, 8, 9], path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with TokenWriter(path, vocab_size=256) as w:
            w.write(list(range(200)))
            assert len(list(tmp_path.iterdir())) == 2  # the temp file sits next to the target meanwhile
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_writer_needs_a_vocab_size(tmp_path):
    with pytest.raises(ValueError, match="needs vocab_size"):
        TokenWriter(tmp_path / "w.bin", vocab_size=None)


def test_write_npy_copies_a_view_atomically(tmp_path):
    src = np.arange(10_000, dtype=np.uint32)
    write_npy(src[100:9000], tmp_path / "s.npy")
    out = np.load(tmp_path / "s.npy")
    assert out.dtype == np.uint32 and np.array_equal(out, src[100:9000])
    assert [p.name for p in tmp_path.iterdir()] == ["s.npy"]


def test_check_ids_uses_header_or_scans(tmp_path):
    save_binary([1, 2, 500], tmp_path / "h.bin", vocab_size=1000)
    np.array([1, 2, 500], dtype=np.uint16).tofile(tmp_path / "raw.bin")
    check_ids(token_spec(tmp_path / "h.bin"), 501)
    for name in ("h.bin", "raw.bin"):
        with pytest.raises(ValueError, match=rf"{name}.*token id 500 at position 2 .*vocab_size=300"):
            check_ids(token_spec(tmp_path / name), 300)
