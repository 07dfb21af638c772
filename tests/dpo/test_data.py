"""Preference data: TRL's three formats, response-only masks from our chat templates, batch
layout, and bad samples (empty, identical, no room) skipped with a count or refused."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from dpo_helpers import conversational, implicit, small_bpe, standard

from transformer_toolkit.dpo import PreferenceDataConfig, from_preference_json, from_preference_samples
from transformer_toolkit.dpo.data import Skipped, render_pair
from transformer_toolkit.sft import ChatTemplate


def _pair(sample, strings="text", template="chatml", row_len=256):
    skipped = Skipped()
    return render_pair(sample, 0, small_bpe(), ChatTemplate(template), strings, row_len, skipped), skipped


def _trained_text(ids, mask):
    return small_bpe().decode([int(i) for i in np.asarray(ids)[mask]])


def test_standard_strings_train_the_response_and_eos():
    tok = small_bpe()
    pair, _ = _pair(standard(1)[0])
    s = standard(1)[0]
    assert pair.chosen_ids[0] == tok.bos_id and pair.chosen_ids[-1] == tok.eos_id
    assert pair.chosen_mask[-1] and not pair.chosen_mask[0]
    assert _trained_text(pair.chosen_ids[:-1], pair.chosen_mask[:-1]) == s["chosen"]
    assert _trained_text(pair.rejected_ids[:-1], pair.rejected_mask[:-1]) == s["rejected"]
    assert tok.decode(pair.chosen_ids[1:-1].tolist()) == s["prompt"] + s["chosen"]


@pytest.mark.parametrize("template", ["chatml", "llama3", "gemma", "alpaca"])
def test_conversational_pairs_train_only_the_response(template):
    s = conversational(1)[0]
    s["prompt"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is the sun?"},
                   {"role": "assistant", "content": "in the sky"}] + s["prompt"]  # an earlier assistant turn
    pair, _ = _pair(s, template=template)
    t = ChatTemplate(template)
    want = s["chosen"][0]["content"] + t.assistant_closer
    got = _trained_text(pair.chosen_ids, pair.chosen_mask)
    eos = small_bpe().decode([small_bpe().eos_id])
    assert got == want + eos  # the response, its closer and EOS; not "in the sky", not headers
    full = t.format_messages(s["prompt"] + s["chosen"], bos=False)[0]
    assert small_bpe().encode(full) == [i for i in pair.chosen_ids.tolist() if i not in (small_bpe().bos_id,
                                                                                      small_bpe().eos_id)]


def test_implicit_prompt_is_the_common_prefix():
    conv, _ = _pair(conversational(1)[0])
    imp, _ = _pair(implicit(1, conv=True)[0])
    assert np.array_equal(conv.chosen_ids, imp.chosen_ids) and np.array_equal(conv.chosen_mask, imp.chosen_mask)
    text, _ = _pair(implicit(1)[0])  # "...the sky is blue" vs "...the sky is green": the response is " blue"
    assert _trained_text(text.chosen_ids[:-1], text.chosen_mask[:-1]) == " blue"


def test_strings_as_chat():
    s = standard(1)[0]
    pair, _ = _pair(s, strings="chat")
    assert _trained_text(pair.chosen_ids, pair.chosen_mask).startswith(s["chosen"] + "<|im_end|>")
    assert "<|im_start|>user" in small_bpe().decode(pair.chosen_ids.tolist())


def test_batches_are_chosen_then_rejected_with_distinct_pair_indices(tmp_path):
    samples = standard(10)
    samples[3]["ref_chosen_logps"], samples[3]["ref_rejected_logps"] = -1.0, -2.0
    cfg = PreferenceDataConfig(seq_len=48, batch_size=3, split=0.7, seed=1)
    train_dl, val_dl = from_preference_samples(samples, small_bpe(), cfg)
    assert len(train_dl.dataset) == 7 and len(val_dl.dataset) == 3
    assert not train_dl.dataset.has_ref  # only some pairs carry reference log-probs: not used
    batch = next(iter(train_dl))
    x, y, mask = batch["input_ids"], batch["labels"], batch["loss_mask"]
    assert x.shape[0] == 6 and x.shape == y.shape == mask.shape
    assert torch.equal(x[:, 1:], y[:, :-1])
    ds = train_dl.dataset
    for k, i in enumerate(batch["pair_index"].tolist()):
        p = ds.pairs[i]
        assert x[k, :len(p.chosen_ids) - 1].tolist() == p.chosen_ids[:-1].tolist()
        assert x[3 + k, :len(p.rejected_ids) - 1].tolist() == p.rejected_ids[:-1].tolist()
    val_idx = {i for b in val_dl for i in b["pair_index"].tolist()}
    assert val_idx == {7, 8, 9}  # val pairs follow the train pairs' indices

    for s in samples:
        s["ref_chosen_logps"], s["ref_rejected_logps"] = -1.5, -2.5
    train_dl, _ = from_preference_samples(samples, small_bpe(), cfg)
    batch = next(iter(train_dl))
    assert batch["ref_logps"].tolist() == [-1.5] * 3 + [-2.5] * 3


def test_bad_samples_are_skipped_and_counted(tmp_path):
    good = standard(4)
    bad = [{"prompt": "what color is the sky?", "chosen": "", "rejected": " red"},
           {"prompt": "what color is the sky?", "chosen": " blue", "rejected": " blue"},
           {"prompt": "sky " * 80, "chosen": " blue", "rejected": " red"},
           {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": " "}],
            "rejected": [{"role": "assistant", "content": "no"}]},
           {"chosen": "what color is the sky? blue", "rejected": "what color is the sky? blue"}]  # implicit
    cfg = PreferenceDataConfig(seq_len=40, batch_size=2, split=1.0)
    with pytest.warns(UserWarning, match=r"skipped 5 of 9 .*2 with an empty chosen or rejected, 2 with chosen "
                                         r"identical to rejected, 1 whose prompt leaves no room"):
        train_dl, val_dl = from_preference_samples(good + bad, small_bpe(), cfg)
    assert len(train_dl.dataset) == 4 and val_dl is None
    with pytest.raises(ValueError, match="nothing left to train on"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_preference_samples(bad, small_bpe(), cfg)
    long = [{"prompt": "what?", "chosen": " blue" * 60, "rejected": " red" * 60}] * 2
    with pytest.warns(UserWarning, match="2 pairs are longer than seq_len=40; their responses are cut"):
        dl, _ = from_preference_samples(long, small_bpe(), cfg)
    assert max(len(p.chosen_ids) for p in dl.dataset.pairs) == 41


@pytest.mark.parametrize("sample,msg", [
    ({"prompt": "x", "response": "y"}, "needs 'chosen' and 'rejected'"),
    ({"chosen": "x", "rejected": [{"role": "assistant", "content": "y"}]}, "both be strings or both be lists"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "a string when they are"),
    ({"chosen": "x", "rejected": "y", "ref_chosen_logps": float("nan"), "ref_rejected_logps": 0.0}, "finite"),
])
def test_malformed_samples_raise(sample, msg):
    with pytest.raises(ValueError, match=msg):
        _pair(sample)


def test_json_file(tmp_path):
    import json

    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in conversational(6)))
    train_dl, val_dl = from_preference_json(path, small_bpe(), PreferenceDataConfig(seq_len=48, batch_size=2))
    assert len(train_dl.dataset) + len(val_dl.dataset) == 6
