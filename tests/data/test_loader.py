"""Windows and batches: shift/stride arithmetic, deterministic order, exact resume, workers, sharding."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from transformer_toolkit.data.loader import EpochBatchSampler, TokenLoader, TokenWindows, n_windows
from transformer_toolkit.data.tokens import token_spec
from transformer_toolkit.dataloader import DataConfig, save_binary


def windows(tmp_path, n=1000, seq_len=16, stride=None, dtype_vocab=None):
    ids = (np.arange(n) * 7919 + 13) % (dtype_vocab or 50_000)  # distinct neighbours, so shifts show
    save_binary(ids, tmp_path / "t.bin", vocab_size=dtype_vocab)
    return TokenWindows(token_spec(tmp_path / "t.bin"), seq_len, stride), ids


@pytest.mark.parametrize("n,seq_len,stride", [(1000, 16, None), (1000, 16, 16), (1000, 16, 5), (17, 16, 1),
                                              (16, 16, None), (1001, 10, 3)])
def test_window_count_and_contents(tmp_path, n, seq_len, stride):
    ds, ids = windows(tmp_path, n, seq_len, stride)
    s = seq_len if stride is None else stride
    assert len(ds) == max(0, (n - seq_len - 1) // s + 1) == n_windows(n, seq_len, s)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (seq_len,)
        assert x.tolist() == ids[i * s:i * s + seq_len].tolist()
        assert y.tolist() == ids[i * s + 1:i * s + seq_len + 1].tolist()  # y = x shifted by one


def test_last_window_ends_inside_the_stream(tmp_path):
    ds, ids = windows(tmp_path, 1000, 16, 5)
    x, y = ds[len(ds) - 1]
    assert y[-1].item() == ids[(len(ds) - 1) * 5 + 16]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_stride_none_equals_seq_len(tmp_path):
    a, _ = windows(tmp_path, 500, 12, None)
    b = TokenWindows(a.spec, 12, 12)
    assert len(a) == len(b) == 41
    xa, ya = a.__getitems__(list(range(len(a))))
    xb, yb = b.__getitems__(list(range(len(b))))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(xa[1:, 0], ya[:-1, -1])  # non-overlapping: each window starts at the last target


def test_getitems_is_the_stack_of_getitem_and_handles_uint32(tmp_path):
    ds, ids = windows(tmp_path, 800, 8, 3, dtype_vocab=100_000)
    assert ds.spec.dtype == "<u4"
    idx = [5, 0, 200, 5]
    x, y = ds.__getitems__(idx)
    assert x.shape == (4, 8) and x.is_contiguous() and y.is_contiguous()
    for row, i in enumerate(idx):
        assert torch.equal(x[row], ds[i][0]) and torch.equal(y[row], ds[i][1])
        assert y[row].tolist() == ids[i * 3 + 1:i * 3 + 9].tolist()
    assert int(x.max()) > 65535  # ids past uint16 come back intact


def test_dataset_pickles_without_the_mapped_tokens(tmp_path):
    ds, _ = windows(tmp_path, 100_000, 16)
    ds[0]  # maps the file in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # the spec travels, not 200 KB of tokens
    clone = pickle.loads(blob)
    assert clone._tokens is None and torch.equal(clone[3][0], ds[3][0])


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    a = EpochBatchSampler(100, 8, shuffle=True, drop_last=True, seed=1)
    b = EpochBatchSampler(100, 8, shuffle=True, drop_last=True, seed=1)
    assert torch.equal(a.indices(0), b.indices(0)) and torch.equal(a.indices(3), b.indices(3))
    assert not torch.equal(a.indices(0), a.indices(1))
    c = EpochBatchSampler(100, 8, shuffle=True, drop_last=True, seed=2)
    assert not torch.equal(a.indices(0), c.indices(0))
    assert sorted(a.indices(0).tolist()) == list(range(100))
    torch.manual_seed(123)  # the global RNG has no say in the order
    assert torch.equal(a.indices(0), b.indices(0))
    assert len(a) == 12 and [len(bt) for bt in a] == [8] * 12


def test_sampler_without_shuffle_and_keeping_the_tail():
    s = EpochBatchSampler(10, 4, shuffle=False, drop_last=False)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(s) == 3


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_cover_each_epoch_disjointly(world):
    n = 101
    shards = [EpochBatchSampler(n, 4, shuffle=True, drop_last=True, seed=5, rank=r, world_size=world)
              for r in range(world)]
    got = [s.indices(2).tolist() for s in shards]
    assert len({len(g) for g in got}) == 1  # equal work, so no rank waits on a collective
    flat = [i for g in got for i in g]
    assert len(flat) == len(set(flat)) == n - n % world
    assert set(flat) <= set(range(n))
    assert len({len(s) for s in shards}) == 1
    evals = [EpochBatchSampler(n, 4, shuffle=False, drop_last=False, rank=r, world_size=world) for r in range(world)]
    covered = {i for s in evals for b in s for i in b}
    assert covered == set(range(n)) and len({len(s) for s in evals}) == 1  # eval sees every window
    tiny = [EpochBatchSampler(1, 4, shuffle=False, drop_last=False, rank=r, world_size=world) for r in range(world)]
    assert [list(s) for s in tiny] == [[[0]]] * world  # fewer windows than ranks: repeated, never empty


def loader(ds, **kw):
    kw = {"batch_size": 4, "shuffle": True, "seed": 0, "rank": 0, "world_size": 1} | kw
    return TokenLoader(ds, **kw)


def batches(it, k=None):
    out = []
    for xy in it:
        out.append(xy)
        if k is not None and len(out) == k:
            break
    return out


def same(a, b):
    if len(a) != len(b):
        return False
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_loader_len_state_and_next_epoch(tmp_path):
    ds, _ = windows(tmp_path, 1000, 16)  # 62 windows
    dl = loader(ds)
    assert len(dl) == 15 and dl.batch_size == 4 and dl.seq_len == 16 and dl.dataset is ds
    assert dl.state_dict() == {"epoch": 0, "batch": 0}
    e0 = batches(dl)
    assert len(e0) == 15 and dl.state_dict() == {"epoch": 1, "batch": 0}
    e1 = batches(dl)
    assert len(e1) == 15 and not same(e0, e1)  # the next epoch is a new permutation
    assert same(e0, batches(loader(ds)))  # and a fresh loader repeats epoch 0 exactly


@pytest.mark.parametrize("k", [0, 1, 7, 14])
def test_resume_mid_epoch_yields_exactly_the_rest(tmp_path, k):
    ds, _ = windows(tmp_path, 1000, 16)
    full = batches(loader(ds))
    first = loader(ds)
    seen = batches(first, k) if k else []
    state = first.state_dict()
    assert state == {"epoch": 0, "batch": k}
    resumed = loader(ds)
    resumed.load_state_dict(state)
    assert same(seen + batches(resumed), full)


def test_resume_across_an_epoch_boundary(tmp_path):
    ds, _ = windows(tmp_path, 1000, 16)
    ref = loader(ds)
    e0, e1 = batches(ref), batches(ref)
    a = loader(ds)
    batches(a)
    batches(a, 3)  # 3 batches into epoch 1
    b = loader(ds)
    b.load_state_dict(a.state_dict())
    assert a.state_dict() == {"epoch": 1, "batch": 3}
    assert same(e1[:3] + batches(b), e1)
    c = loader(ds)
    c.load_state_dict({"epoch": 0, "batch": 15})  # saved right after the last batch of epoch 0
    assert same(batches(c), e1)
    assert not same(e0, e1)


def test_load_state_rejects_impossible_positions(tmp_path):
    ds, _ = windows(tmp_path, 1000, 16)
    with pytest.raises(ValueError, match="out of range.*15 batches per epoch"):
        loader(ds).load_state_dict({"epoch": 0, "batch": 99})


def test_two_workers_give_the_same_batches_and_resume(tmp_path):
    ds, _ = windows(tmp_path, 2000, 16)
    ref = loader(ds)
    e0, e1 = batches(ref), batches(ref)
    dl = loader(ds, num_workers=2)
    assert same(batches(dl), e0) and same(batches(dl), e1)  # persistent workers, second epoch
    dl2 = loader(ds, num_workers=2)
    part = batches(dl2, 5)  # workers have prefetched past batch 5 by now
    assert dl2.state_dict() == {"epoch": 0, "batch": 5}
    assert same(part + batches(dl2), e0)  # breaking out and iterating again continues exactly


def test_eval_loader_keeps_every_window_in_order(tmp_path):
    ds, ids = windows(tmp_path, 1000, 16)
    dl = loader(ds, shuffle=False, drop_last=False)
    got = batches(dl)
    assert len(got) == len(dl) == 16 and got[-1][0].shape == (2, 16)
    x = torch.cat([b[0] for b in got])
    assert torch.equal(x[:, 0], torch.as_tensor(ids[0:62 * 16:16], dtype=torch.long))


def test_config_validation_names_field_and_fix():
    with pytest.raises(ValueError, match=r"unknown field.*'bacth_size'.*did you mean 'batch_size'"):
        DataConfig(seq_len=8, bacth_size=2)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        DataConfig(seq_len=0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DataConfig(seq_len=8, batch_size=0)
    with pytest.raises(ValueError, match=r"split must be in \(0, 1\)"):
        DataConfig(seq_len=8, batch_size=2, split=1.0)
    with pytest.raises(ValueError, match="stride must be >= 1 or None"):
        DataConfig(seq_len=8, batch_size=2, stride=0)
    cfg = DataConfig(seq_len=8, batch_size=2)
    assert (cfg.split, cfg.stride, cfg.window_stride, cfg.shuffle, cfg.num_workers, cfg.pin_memory, cfg.debug,
            cfg.debug_n, cfg.streaming, cfg.seed, cfg.drop_last) == (0.9, None, 8, True, 0, False, False, 3, False,
                                                                     0, True)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
