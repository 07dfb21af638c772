import torch

import transformer_toolkit
from transformer_toolkit import Transformer, TransformerConfig


def test_top_level_names_and_forward_contract():
    assert transformer_toolkit.__version__
    model = Transformer(TransformerConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, max_seq=16))
    out = model(torch.zeros(1, 4, dtype=torch.long))
    assert isinstance(out, tuple) and len(out) == 2
    logits, aux = out
    assert logits.shape == (1, 4, 50) and aux.dim() == 0 and aux.item() == 0.0
