"""from_binary / from_npy_split / from_files: the README calls, splits, saved .npy files, errors, debug view."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from transformer_toolkit.dataloader import (
    DataConfig,
    from_binary,
    from_files,
    from_npy_split,
    save_binary,
)


def all_x(dl) -> torch.Tensor:
    return torch.cat([x for x, _ in dl])


def test_from_binary_splits_at_int_n_split(tokens_bin):
    path, ids = tokens_bin
    cfg = DataConfig(seq_len=16, batch_size=4, split=0.8, shuffle=False)
    train_dl, val_dl = from_binary(path, cfg)
    cut = int(len(ids) * 0.8)
    assert len(train_dl.dataset) == (cut - 17) // 16 + 1 and len(val_dl.dataset) == (len(ids) - cut - 17) // 16 + 1
    x0, y0 = next(iter(train_dl))
    assert x0[0].tolist() == ids[:16].tolist() and y0[0].tolist() == ids[1:17].tolist()
    xv, yv = next(iter(val_dl))
    assert xv[0].tolist() == ids[cut:cut + 16].tolist()  # val is the tail
    xs = all_x(val_dl)  # the val loader starts from its first batch on every pass
    assert xs.shape == (len(val_dl.dataset), 16) and len(val_dl) == -(-len(val_dl.dataset) // 4)
    assert torch.equal(xs[:4], xv) and torch.equal(all_x(val_dl), xs)


def test_npy_splits_equal_the_token_stream_split(tmp_path, tokens_bin, byte_tok):
    path, ids = tokens_bin
    cfg = DataConfig(seq_len=16, batch_size=4)
    tr, va = tmp_path / "out" / "train.npy", tmp_path / "out" / "val.npy"
    a_train, a_val = from_binary(path, cfg, train_path=tr, val_path=va, tokenizer=byte_tok)
    cut = int(len(ids) * 0.9)
    assert np.array_equal(np.load(tr), ids[:cut]) and np.array_equal(np.load(va), ids[cut:])
    assert np.load(tr).dtype == np.uint16
    b_train, b_val = from_npy_split(tr, va, cfg, tokenizer=byte_tok)  # the README's second run
    for a, b in ((a_train, b_train), (a_val, b_val)):
        assert len(a) == len(b) and all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    b_train, _ = from_npy_split(tr, va, cfg)
    c_train, _ = from_binary(path, cfg)  # no .npy: views of the same file give the same batches
    assert all(torch.equal(p[1], q[1]) for p, q in zip(b_train, c_train, strict=True))


def test_legacy_raw_bin_and_npy_load_through_from_binary(tmp_path):
    ids = (np.arange(3000) % 251).astype(np.uint16)
    ids.tofile(tmp_path / "old.bin")
    np.save(tmp_path / "all.npy", ids.astype(np.int64))
    cfg = DataConfig(seq_len=8, batch_size=2, shuffle=False)
    for name in ("old.bin", "all.npy"):
        train_dl, _ = from_binary(tmp_path / name, cfg)
        assert next(iter(train_dl))[0][0].tolist() == ids[:8].tolist()


def test_from_files_readme_call(tmp_path, bpe_tok, text_of):
    texts = [text_of(400, seed=1), text_of(300, seed=2)]
    paths = []
    for i, t in enumerate(texts):
        paths.append(str(tmp_path / f"data{i}.txt"))
        (tmp_path / f"data{i}.txt").write_text(t, encoding="utf-8")
    cfg = DataConfig(seq_len=32, batch_size=4, shuffle=False)
    train_dl, val_dl = from_files(paths=paths, tokenizer=bpe_tok, cfg=cfg, train_path=str(tmp_path / "train.npy"),
                                  val_path=str(tmp_path / "val.npy"), bos_id=bpe_tok.bos_id, eos_id=bpe_tok.eos_id)
    want = np.array([i for t in texts for i in [2, *bpe_tok.encode(t), 3]])
    cut = int(len(want) * 0.9)
    assert np.array_equal(np.load(tmp_path / "train.npy"), want[:cut])
    assert np.array_equal(np.load(tmp_path / "val.npy"), want[cut:])
    assert sorted(os.listdir(tmp_path)) == ["data0.txt", "data1.txt", "train.npy", "val.npy"]  # temp removed
    x, y = next(iter(train_dl))
    assert x[0].tolist() == want[:32].tolist() and y[0].tolist() == want[1:33].tolist()
    # without paths: a session temp file, same batches
    t2, _ = from_files(paths, bpe_tok, cfg, bos_id=2, eos_id=3)
    assert torch.equal(next(iter(t2))[0], x) and os.path.exists(t2.dataset.spec.path)


def test_seq_len_longer_than_a_split_says_how_many_tokens(tokens_bin):
    path, _ = tokens_bin  # 5,000 tokens: train 4,500, val 500
    with pytest.raises(ValueError) as e:
        from_binary(path, DataConfig(seq_len=600, batch_size=2))
    msg = str(e.value)
    assert "seq_len=600" in msg and "data.bin" in msg and "train=4,500" in msg and "val=500" in msg
    assert "smaller seq_len (at most 499" in msg and "split" in msg


def test_too_few_windows_for_one_train_batch(tokens_bin):
    path, _ = tokens_bin
    with pytest.raises(ValueError, match=r"train split .* 9 windows .*fewer than batch_size=64.*smaller batch_size"):
        from_binary(path, DataConfig(seq_len=499, batch_size=64))


def test_ids_beyond_the_tokenizer_vocab_are_caught(tmp_path, byte_tok):
    save_binary([1, 2, 3] * 100 + [999] + [4] * 100, tmp_path / "t.bin")  # written by some bigger tokenizer
    cfg = DataConfig(seq_len=8, batch_size=2)
    with pytest.raises(ValueError, match=r"t\.bin.*token id 999 at position 300 .*vocab_size=256.*another tokenizer"):
        from_binary(tmp_path / "t.bin", cfg, tokenizer=byte_tok)
    np.save(tmp_path / "tr.npy", np.array([5] * 50 + [300]))
    np.save(tmp_path / "va.npy", np.array([5] * 50))
    with pytest.raises(ValueError, match=r"tr\.npy.*token id 300 at position 50"):
        from_npy_split(tmp_path / "tr.npy", tmp_path / "va.npy", cfg, tokenizer=byte_tok)
    from_binary(tmp_path / "t.bin", cfg)  # without a tokenizer nothing to check against


def test_missing_files_and_half_given_paths(tmp_path, tokens_bin, byte_tok):
    cfg = DataConfig(seq_len=8, batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        from_binary(tmp_path / "nope.bin", cfg)
    with pytest.raises(FileNotFoundError, match=r"val\.npy"):
        from_npy_split(tokens_bin[0], tmp_path / "val.npy", cfg)
    with pytest.raises(ValueError, match="pass both train_path and val_path"):
        from_binary(tokens_bin[0], cfg, train_path=tmp_path / "train.npy")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        from_files([tmp_path / "missing.txt"], byte_tok, cfg)


def test_debug_view_prints_readme_format(tmp_path, capsys):
    from transformer_toolkit.tokenizer import ByteLevelTokenizer

    tok = ByteLevelTokenizer()
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 40
    save_binary(tok.encode(text), tmp_path / "data.bin")
    cfg = DataConfig(seq_len=64, batch_size=8, debug=True, debug_n=2)
    train_dl, _ = from_binary(tmp_path / "data.bin", cfg, tokenizer=tok)
    out = capsys.readouterr().out
    assert "  🔍 Debug samples (train)\n  seq_len=64  stride=64  batch_size=8\n" in out
    assert out.count("  sample ") == 2 and "sample 3" not in out
    assert out.count("✓  x/y alignment correct (y = x shifted by 1)") == 2
    x, y = train_dl.first_batch()
    first = x[0].tolist()
    assert f"  x ids : [{', '.join(map(str, first[:5]))} ...] ... +59" in out
    assert f"  y ids : [{', '.join(map(str, first[1:6]))} ...] ... +59" in out
    assert f"  x text: {tok.decode(first)[:50] + '...'!r}" in out
    assert train_dl.state_dict() == {"epoch": 0, "batch": 0}  # the preview consumed nothing
    assert torch.equal(next(iter(train_dl))[0], x)

    from_binary(tmp_path / "data.bin", cfg)  # no tokenizer: ids only
    out = capsys.readouterr().out
    assert "x ids :" in out and "x text" not in out


def test_debug_view_names_a_misalignment(capsys):
    from transformer_toolkit.data.debug import print_debug

    x = torch.arange(10).view(1, 10)
    y = torch.arange(1, 11).view(1, 10)
    y[0, 4] = 99
    print_debug(None, None, DataConfig(seq_len=10, batch_size=1, debug_n=1), x, y)
    assert "✗  x/y misaligned at position 4: y[4]=99 but x[5]=5" in capsys.readouterr().out


def test_pin_memory_on_cpu_is_silent(tokens_bin, recwarn):
    cfg = DataConfig(seq_len=16, batch_size=4, pin_memory=True)
    train_dl, _ = from_binary(tokens_bin[0], cfg)
    next(iter(train_dl))
    if not torch.cuda.is_available():
        assert not train_dl._dl.pin_memory and not [w for w in recwarn if "pin" in str(w.message)]


def test_readme_shakespeare_data_flow(tmp_path, monkeypatch):
    """The README's Full Example, data part, verbatim apart from sizes: first run, then the .npy rerun."""
    from transformer_toolkit.tokenizer import RustBPETokenizer

    monkeypatch.chdir(tmp_path)
    text = "".join(f"ROMEO {i}:\nBut soft, what light through yonder window breaks? {i * 7}\n\n" for i in range(900))
    (tmp_path / "shakespeare.txt").write_text(text, encoding="utf-8")
    tok = RustBPETokenizer()
    tok.train(open("shakespeare.txt", encoding="utf-8").readlines(), vocab_size=400)
    cfg_data = DataConfig(seq_len=32, batch_size=8, split=0.9, stride=None)
    runs = []
    for _ in range(2):
        if os.path.exists("train.npy") and os.path.exists("val.npy"):
            train_dl, val_dl = from_npy_split("train.npy", "val.npy", cfg_data, tokenizer=tok)
        else:
            if not os.path.exists("data.bin"):
                save_binary(tok.encode(open("shakespeare.txt", encoding="utf-8").read()), "data.bin")
            train_dl, val_dl = from_binary("data.bin", cfg_data, train_path="train.npy", val_path="val.npy",
                                           tokenizer=tok)
        runs.append(next(iter(train_dl)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert tok.decode(runs[0][0][0].tolist()) in text
