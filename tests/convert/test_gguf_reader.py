"""``GGUFFile`` reads exactly what gguf-py's ``GGUFReader`` reads: every metadata value (all
value types, both byte orders, custom alignment) and every tensor (type, shape, offset, bytes),
and names truncated or foreign files."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf_helpers import tiny_model, tiny_tokenizer, write_quantized_gguf  # noqa: E402
from model_helpers import smollm2_gguf  # noqa: E402

from transformer_toolkit.convert.gguf import save_gguf  # noqa: E402
from transformer_toolkit.convert.gguf_reader import GGUFFile  # noqa: E402


def assert_reads_like_gguf_py(path) -> GGUFFile:
    ref, ours = gguf.GGUFReader(str(path)), GGUFFile(path)
    assert list(ours.fields) == list(ref.fields)
    for key, field in ref.fields.items():
        want, got = field.contents(), ours.fields[key].contents()
        assert got == want and type(got) is type(want), key
        if isinstance(want, list) and want:
            assert [type(v) for v in got] == [type(v) for v in want], key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ref.tensors, ours.tensors, strict=True):
        assert (b.tensor_type, b.n_elements, b.n_bytes, b.data_offset) == \
            (a.tensor_type, a.n_elements, a.n_bytes, a.data_offset), a.name
        assert b.shape.dtype == np.uint64 and np.array_equal(b.shape, a.shape), a.name  # (native order)
        assert b.data.dtype == a.data.dtype and b.data.shape == a.data.shape, a.name
        assert np.array_equal(b.data, a.data, equal_nan=True), a.name
    return ours


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_our_exports_with_tokenizer_and_template(dtype, tmp_path):
    tok = tiny_tokenizer()
    path = save_gguf(tiny_model(tok.vocab_size), tmp_path / "m.gguf", tokenizer=tok, template="chatml", dtype=dtype)
    ours = assert_reads_like_gguf_py(path)
    assert len(ours.fields["tokenizer.ggml.tokens"].contents()) == tok.vocab_size


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K", "Q6_K", "BF16"])
def test_quantized_tensors(kind, tmp_path):
    write_quantized_gguf(tmp_path / "q.gguf", tiny_model(300), kind)
    assert_reads_like_gguf_py(tmp_path / "q.gguf")


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_every_value_type_in_both_byte_orders_and_a_custom_alignment(endian, tmp_path):
    path = str(tmp_path / f"{endian}.gguf")
    w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian[endian])
    w.add_custom_alignment(1024)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1 / 3)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "café 日本語 🚀")
    w.add_string("t.empty_str", "")
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.strs", ["a", "", "ü"])
    w.add_array("t.one", [7])
    w.add_array("t.none", [])
    w.add_tensor("a", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b", np.arange(5, dtype=np.float16))
    w.add_tensor("c", np.arange(6, dtype=np.int32).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = assert_reads_like_gguf_py(path)
    assert ours.fields["t.u64"].contents() == 2**63 + 5 and ours.fields["t.str"].contents() == "café 日本語 🚀"
    assert ours.tensors[2].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert all(t.data_offset % 1024 == 0 for t in ours.tensors)


def test_the_real_smollm2_file():
    ours = assert_reads_like_gguf_py(smollm2_gguf())
    assert len(ours.fields["tokenizer.ggml.merges"].contents()) > 40_000


def test_foreign_empty_and_truncated_files_are_named(tmp_path):
    tok = tiny_tokenizer()
    whole = open(save_gguf(tiny_model(tok.vocab_size), tmp_path / "m.gguf", tokenizer=tok, dtype="f32"), "rb").read()
    cases = {"text.gguf": (b"not a model at all", "is not a GGUF file"), "empty.gguf": (b"", "is empty"),
             "header.gguf": (whole[:2000], "ends early"), "data.gguf": (whole[:-100], "runs past the end")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            GGUFFile(tmp_path / name)
    unknown = bytearray(whole)  # the first tensor's type id (after its name and dims) set to 250
    ours = GGUFFile(tmp_path / "m.gguf")
    name = ours.tensors[0].name.encode()
    at = whole.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    at += 4 + 8 * int.from_bytes(whole[at:at + 4], "little")
    unknown[at:at + 4] = (250).to_bytes(4, "little")
    (tmp_path / "unknown.gguf").write_bytes(bytes(unknown))
    with pytest.raises(ValueError, match=f"tensor {ours.tensors[0].name} has type id 250.*upgrade"):
        GGUFFile(tmp_path / "unknown.gguf")
    v9 = bytearray(whole)
    v9[4:8] = (9).to_bytes(4, "little")
    (tmp_path / "v9.gguf").write_bytes(bytes(v9))
    with pytest.raises(ValueError, match="version"):
        GGUFFile(tmp_path / "v9.gguf")
