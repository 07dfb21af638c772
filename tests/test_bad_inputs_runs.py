"""Bad inputs and faults around runs, configs and checkpoints (issue 19, item 3): each gets one
clear line naming the problem (exit status 2 from ``ttk``) or the correct behaviour, and nothing
already saved is lost. Case numbers are the issue's."""

from __future__ import annotations

import typing

import pytest

from transformer_toolkit import DataConfig, TrainConfig, TransformerConfig
from transformer_toolkit.cli import main
from transformer_toolkit.model.config import VARIANT_RANGES
from transformer_toolkit.sft import SFTDataConfig

NAN, INF = float("nan"), float("inf")


def ttk(capsys, *argv) -> tuple[int, str, str]:
    """``ttk ARGV`` in process: (status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# 8: every numeric config field is finite and in range -----------------------------------------
BAD_NUMBERS = [
    *[(TransformerConfig, f, v) for f in ("eps", "init_std", "rope_theta") for v in (NAN, INF, 0.0, -1.0)],
    *[(TransformerConfig, f, v) for f in ("hidden_dim", "head_dim") for v in (0, -4)],
    (TransformerConfig, "dropout", NAN), (TransformerConfig, "dropout", 1.0),
    *[(TrainConfig, f, v) for f in ("weight_decay", "grad_clip", "min_lr") for v in (NAN, -INF, -0.1)],
    *[(TrainConfig, f, v) for f in ("eps", "lr") for v in (NAN, INF, 0.0)],
    (TrainConfig, "beta2", NAN), (TrainConfig, "beta1", 1.0),
    (DataConfig, "split", NAN), (DataConfig, "split", 1.0), (DataConfig, "stride", 0),
    (SFTDataConfig, "split", NAN), (SFTDataConfig, "pad_id", -1), (SFTDataConfig, "seq_len", 1),
]
MOE_NUMBERS = [("moe_aux_weight", NAN), ("moe_aux_weight", -0.5), ("moe_hidden_dim", 0), ("moe_hidden_dim", -8)]


@pytest.mark.parametrize("cls,field,value", BAD_NUMBERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_number_out_of_range_is_refused_with_its_name(cls, field, value):
    base = {"vocab_size": 97, "dim": 32, "n_heads": 4} if cls is TransformerConfig else {}
    with pytest.raises(ValueError, match=field):
        cls(**base, **{field: value})


@pytest.mark.parametrize("field,value", MOE_NUMBERS)
def test_moe_numbers_are_checked_when_the_variant_reads_them(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**{"vocab_size": 97, "dim": 32, "n_heads": 4, "ffn": "moe", "n_experts": 4, "top_k": 1,
                             field: value})


# checked by their own rules (they depend on other fields): must be even / a step count or a bool
CHECKED_ELSEWHERE = {"rope_head_dim", "hf_push_every_n"}


@pytest.mark.parametrize("cls", [TransformerConfig, TrainConfig, DataConfig, SFTDataConfig], ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_range(cls):
    """A new int/float field cannot be added without saying its range."""
    def numeric(annotation) -> bool:
        args = typing.get_args(annotation) or (annotation,)
        return any(a in (int, float) for a in args)

    ranged = set(cls.RANGES) | (set(VARIANT_RANGES) if cls is TransformerConfig else set())
    fields = {name for name, f in cls.model_fields.items() if numeric(f.annotation)}
    assert fields and fields - ranged - CHECKED_ELSEWHERE == set()


def test_nan_on_the_command_line_is_one_line(capsys, tmp_path):
    rc, _, err = ttk(capsys, "train", "--out", tmp_path / "run", "--train.weight_decay", "nan")
    assert rc == 2 and "weight_decay" in err and "finite" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
