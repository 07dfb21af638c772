"""SFT loaders: batches, files, errors, packing (loss equal to unpacked), debug view, resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_config
from sft_helpers import small_bpe

from transformer_toolkit import SFTDataConfig, Transformer, from_sft_files, from_sft_hf, from_sft_json, from_sft_strings


def arithmetic(n: int = 40) -> list[dict]:
    out = []
    for i in range(n):
        a, b = i % 10, (3 * i) % 10
        if i % 3 == 0:
            out.append({"prompt": f"add {a} {b}", "response": str(a + b)})
        elif i % 3 == 1:
            out.append({"instruction": "add", "input": f"{a} {b}", "output": str(a + b)})
        else:
            out.append({"messages": [{"role": "user", "content": f"add {a} {b}"},
                                     {"role": "assistant", "content": str(a + b)}]})
    return out


def cfg(**kw) -> SFTDataConfig:
    base = dict(tokenizer=small_bpe(), seq_len=32, batch_size=4, template="chatml", seed=0)
    return SFTDataConfig(**(base | kw))


def test_batches_are_x_y_mask_with_y_shifted():
    train, val = from_sft_strings(arithmetic(), small_bpe(), cfg())
    assert len(train) == 9 and len(val) == 1  # 36 train rows // 4, 4 val rows in one batch
    x, y, m = next(iter(train))
    assert x.shape == y.shape == m.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert m.dtype == torch.float32 and (m.sum(1) > 0).all()
    pad = small_bpe().pad_id
    assert (m[y == pad] == 0).all()  # padding is never trained


def test_tokenizer_supplies_special_ids():
    c = SFTDataConfig(tokenizer=small_bpe(), seq_len=16)
    assert (c.bos_id, c.eos_id, c.pad_id) == (2, 3, 1)
    assert SFTDataConfig(seq_len=16).pad_id is None
    with pytest.raises(ValueError, match="truncation_strategy"):
        SFTDataConfig(seq_len=16, truncation_strategy="tokens")
    with pytest.raises(ValueError, match="seq_lenn.*did you mean 'seq_len'"):
        SFTDataConfig(seq_lenn=16)


def test_json_jsonl_and_many_files(tmp_path):
    data = arithmetic(20)
    (tmp_path / "a.json").write_text(json.dumps(data[:10]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(s) for s in data[10:]) + "\n")
    t1, _ = from_sft_json(tmp_path / "a.json", small_bpe(), cfg(batch_size=2))
    t2, _ = from_sft_json(tmp_path / "b.jsonl", small_bpe(), cfg(batch_size=2))
    both, _ = from_sft_files([tmp_path / "a.json", tmp_path / "b.jsonl"], small_bpe(), cfg(batch_size=2))
    assert len(t1) == len(t2) == 4 and len(both) == 9


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON"):
        from_sft_json(p, small_bpe(), cfg())
    with pytest.raises(FileNotFoundError, match="missing.json"):
        from_sft_json(tmp_path / "missing.json", small_bpe(), cfg())


def test_unrecognised_sample_in_a_set():
    data = arithmetic(6) + [{"q": 1}]
    with pytest.raises(ValueError, match=r"sample 6 has an unrecognised schema \(keys: \['q'\]\)"):
        from_sft_strings(data, small_bpe(), cfg())


def test_samples_without_a_trained_token_are_dropped_with_a_warning():
    data = arithmetic(10) + [{"prompt": "word " * 40, "response": "x"}]
    with pytest.warns(UserWarning, match="dropped 1 of 11 samples"):
        train, val = from_sft_strings(data, small_bpe(), cfg(batch_size=2))
    assert all(b[2].sum() > 0 for b in train)


def test_hf_dataset_offline(tmp_path):
    from datasets import Dataset

    data = arithmetic(20)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"prompt": s.get("prompt", "p"),
                                                             "response": s.get("response", "r")}) for s in data))
    t1, _ = from_sft_hf(str(tmp_path / "d.jsonl"), small_bpe(), cfg(batch_size=2))
    Dataset.from_list([{"prompt": f"add {i}", "response": str(i)} for i in range(12)]).save_to_disk(tmp_path / "ds")
    t2, _ = from_sft_hf(str(tmp_path / "ds"), small_bpe(), cfg(batch_size=2))
    assert len(t1) == 9 and len(t2) == 5


def test_packing_loss_per_sample_equals_unpacked():
    data = arithmetic(24)
    model = Transformer(tiny_config(vocab_size=small_bpe().vocab_size, max_seq=64)).eval()
    plain, _ = from_sft_strings(data, small_bpe(), cfg(seq_len=64, batch_size=1, shuffle=False, split=0.9))
    packed, _ = from_sft_strings(data, small_bpe(), cfg(seq_len=64, batch_size=1, shuffle=False, split=0.9,
                                                          packing=True))
    assert len(packed) < len(plain)  # several conversations per row

    def per_token(batch):
        x, y, m, *doc = batch
        with torch.no_grad():
            logits, _ = model(x, doc_ids=doc[0] if doc else None)
        loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return loss[m > 0]

    a = torch.cat([per_token(b) for b in plain])
    b = torch.cat([per_token(b) for b in packed])
    assert a.numel() == b.numel() > 0  # the same trained tokens, in the same order
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_rows_never_train_across_documents():
    train, _ = from_sft_strings(arithmetic(24), small_bpe(), cfg(seq_len=64, packing=True))
    for x, _y, m, doc in train:
        assert x.shape == doc.shape
        edge = torch.zeros_like(m, dtype=torch.bool)
        edge[:, :-1] = doc[:, 1:] != doc[:, :-1]  # last input of each document
        assert (m[edge] == 0).all()


def test_resume_position():
    train, _ = from_sft_strings(arithmetic(), small_bpe(), cfg(batch_size=2))
    it = iter(train)
    seen = [next(it) for _ in range(3)]
    state = train.state_dict()
    rest = [b[0] for b in it]
    again, _ = from_sft_strings(arithmetic(), small_bpe(), cfg(batch_size=2))
    again.load_state_dict(state)
    assert all(torch.equal(a, b[0]) for a, b in zip(rest, again, strict=True))
    assert len(seen) + len(rest) == len(train)


def test_debug_view(capsys):
    from_sft_strings(arithmetic(10), small_bpe(), cfg(template="llama3", seq_len=128, debug=True, debug_n=2))
    out = capsys.readouterr().out
    assert out.count("── formatted view ──") == 2
    assert "<|start_header_id|>assistant<|end_header_id|>" in out and "← cyan  (loss=0)" in out
    assert "<|eot_id|>[EOS]" in out and "← green (loss=1)" in out
    assert "mask sum=" in out and "✓  x/y alignment correct" in out
    assert "heavy padding" in out  # ~20 tokens per sample in rows of 129
