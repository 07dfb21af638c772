"""from_hf, offline: local json/jsonl/txt files and save_to_disk folders, in memory and streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transformer_toolkit.data.stream import is_val_doc
from transformer_toolkit.dataloader import DataConfig, from_hf

datasets = pytest.importorskip("datasets")

N_DOCS = 1100  # documents 900..999 of every 1000 are validation: 100 val docs here


@pytest.fixture(autouse=True)
def _hf_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()


@pytest.fixture
def docs(text_of):
    rng = np.random.default_rng(0)
    return [text_of(int(rng.integers(2, 12)), seed=i).strip() or "x" for i in range(N_DOCS)]


@pytest.fixture
def jsonl(tmp_path, docs):
    path = tmp_path / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "text": d}) + "\n")
    return path


def stream_tokens(tok, docs, bos=None, eos=None):
    return np.array([i for d in docs for i in [*([bos] if bos is not None else []), *tok.encode(d),
                                                *([eos] if eos is not None else [])]])


def windows_of(ids, seq_len):
    k = (len(ids) - seq_len - 1) // seq_len + 1
    return np.stack([ids[i * seq_len:i * seq_len + seq_len + 1] for i in range(k)])


def rows(dl):
    return np.concatenate([torch.cat([x, y[:, -1:]], 1).numpy() for x, y in dl])


def test_in_memory_jsonl_matches_tokenising_the_documents(tmp_path, jsonl, docs, bpe_tok):
    cfg = DataConfig(seq_len=16, batch_size=4, shuffle=False)
    train_dl, val_dl = from_hf(str(jsonl), bpe_tok, cfg, text_col="text", bos_id=2, eos_id=3,
                               train_path=str(tmp_path / "train.npy"), val_path=str(tmp_path / "val.npy"))
    want = stream_tokens(bpe_tok, docs, 2, 3)
    cut = int(len(want) * 0.9)
    assert np.array_equal(np.load(tmp_path / "train.npy"), want[:cut])
    assert np.array_equal(np.load(tmp_path / "val.npy"), want[cut:])
    assert np.array_equal(rows(train_dl), windows_of(want[:cut], 16)[: len(train_dl) * 4])


def test_save_to_disk_folder_and_dataset_dict(tmp_path, docs, byte_tok):
    ds = datasets.Dataset.from_dict({"body": docs, "n": list(range(len(docs)))})
    ds.save_to_disk(str(tmp_path / "flat"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(10))}).save_to_disk(str(tmp_path / "dict"))
    cfg = DataConfig(seq_len=32, batch_size=4, shuffle=False)
    want = stream_tokens(byte_tok, docs)
    cut = int(len(want) * 0.9)
    for folder in ("flat", "dict"):
        train_dl, val_dl = from_hf(str(tmp_path / folder), byte_tok, cfg, text_col="body")
        assert np.array_equal(rows(train_dl), windows_of(want[:cut], 32)[: len(train_dl) * 4])
        assert np.array_equal(rows(val_dl), windows_of(want[cut:], 32))
    with pytest.raises(ValueError, match=r"has splits \['train', 'test'\], not 'validation'; pass split_name="):
        from_hf(str(tmp_path / "dict"), byte_tok, cfg, text_col="body", split_name="validation")
    with pytest.raises(ValueError, match=r"no column 'text'; its columns are \['body', 'n'\]: pass text_col="):
        from_hf(str(tmp_path / "flat"), byte_tok, cfg)


def test_text_file_one_document_per_line(tmp_path, byte_tok):
    lines = [f"line {i} of the corpus" for i in range(400)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = DataConfig(seq_len=8, batch_size=2, shuffle=False)
    train_dl, _ = from_hf(str(tmp_path / "corpus.txt"), byte_tok, cfg)
    want = stream_tokens(byte_tok, lines)
    assert np.array_equal(train_dl.dataset.tokens[:50], want[:50])
    (tmp_path / "folder").mkdir()  # a plain local dataset folder of data files
    (tmp_path / "corpus.txt").rename(tmp_path / "folder" / "train.txt")
    train_dl, _ = from_hf(str(tmp_path / "folder"), byte_tok, cfg)
    assert np.array_equal(train_dl.dataset.tokens[:50], want[:50])


def test_missing_local_file_and_streaming_with_paths(tmp_path, byte_tok, jsonl):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        from_hf(str(tmp_path / "nope.jsonl"), byte_tok, DataConfig(seq_len=8, batch_size=2))
    with pytest.raises(ValueError, match="streaming=True writes nothing to disk"):
        from_hf(str(jsonl), byte_tok, DataConfig(seq_len=8, batch_size=2, streaming=True), train_path="a.npy",
                val_path="b.npy")
    with pytest.raises(ValueError, match=r"no column 'body'; its columns are \['id', 'text'\]: pass text_col="):
        next(iter(from_hf(str(jsonl), byte_tok, DataConfig(seq_len=8, batch_size=2, streaming=True),
                          text_col="body")[0]))


def test_streaming_splits_by_document_and_windows_in_order(jsonl, docs, byte_tok):
    cfg = DataConfig(seq_len=16, batch_size=4, shuffle=False, streaming=True, drop_last=False)
    train_dl, val_dl = from_hf(str(jsonl), byte_tok, cfg, eos_id=10)
    with pytest.raises(TypeError, match="no length"):
        len(train_dl)
    train_docs = [d for i, d in enumerate(docs) if not is_val_doc(i, 0.9)]
    val_docs = [d for i, d in enumerate(docs) if is_val_doc(i, 0.9)]
    assert len(val_docs) == 100
    assert np.array_equal(rows(train_dl), windows_of(stream_tokens(byte_tok, train_docs, eos=10), 16))
    assert np.array_equal(rows(val_dl), windows_of(stream_tokens(byte_tok, val_docs, eos=10), 16))
    assert train_dl.state_dict() == {"epoch": 1, "batch": 0}


def test_streaming_shuffle_is_deterministic_and_resumable(jsonl, docs, byte_tok):
    cfg = DataConfig(seq_len=16, batch_size=4, streaming=True, seed=3)
    a, _ = from_hf(str(jsonl), byte_tok, cfg)
    e0, e1 = list(a), list(a)
    ordered = windows_of(stream_tokens(byte_tok, [d for i, d in enumerate(docs) if not is_val_doc(i, 0.9)]), 16)
    got = np.concatenate([torch.cat([x, y[:, -1:]], 1).numpy() for x, y in e0])
    assert len(got) == len(ordered) // 4 * 4 and not np.array_equal(got, ordered[: len(got)])  # shuffled
    assert {r.tobytes() for r in got} <= {r.tobytes() for r in ordered}
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(e0, e1, strict=True))  # a new order each epoch

    b, _ = from_hf(str(jsonl), byte_tok, cfg)
    part = []
    for xy in b:
        part.append(xy)
        if len(part) == 5:
            break
    state = b.state_dict()
    assert state == {"epoch": 0, "batch": 5}
    c, _ = from_hf(str(jsonl), byte_tok, cfg)
    c.load_state_dict(state)
    rest = list(c)
    assert len(part) + len(rest) == len(e0)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(part + rest, e0, strict=True))


def test_streaming_workers_and_ranks_split_the_documents(jsonl, docs, byte_tok):
    cfg = DataConfig(seq_len=16, batch_size=2, shuffle=False, streaming=True, num_workers=2, drop_last=False)
    from transformer_toolkit.data.hf import load_hf
    from transformer_toolkit.data.stream import stream_loaders

    ds = load_hf(str(jsonl), streaming=True)
    train_docs = [d for i, d in enumerate(docs) if not is_val_doc(i, 0.9)]
    first = None
    for rank in range(2):
        dl, _ = stream_loaders(ds, byte_tok, cfg, "text", rank=rank, world_size=2)
        got = rows(dl)
        # shard = rank * workers + worker: this rank's workers hold documents j % 4 in {2r, 2r + 1}
        shard_rows = [windows_of(stream_tokens(byte_tok, train_docs[s::4]), 16) for s in (2 * rank, 2 * rank + 1)]
        assert len(got) == sum(len(s) for s in shard_rows)
        assert {r.tobytes() for r in got} == {r.tobytes() for s in shard_rows for r in s}
        first = first if first is not None else got
    dl, _ = stream_loaders(ds, byte_tok, cfg, "text", rank=0, world_size=2)
    assert np.array_equal(rows(dl), first)  # deterministic across runs and worker processes


def test_streaming_debug_preview(jsonl, byte_tok, capsys):
    cfg = DataConfig(seq_len=16, batch_size=4, streaming=True, debug=True, debug_n=1)
    train_dl, _ = from_hf(str(jsonl), byte_tok, cfg)
    out = capsys.readouterr().out
    assert "🔍 Debug samples (train)" in out and out.count("✓  x/y alignment correct") == 1
    assert train_dl.state_dict() == {"epoch": 0, "batch": 0}
