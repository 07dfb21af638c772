"""SFTTrainer: the Trainer loop with a loss over the trained (assistant) tokens only.

The loss is the sum of the masked token losses divided by the number of trained tokens in the
whole accumulated batch (across micro-batches and ranks), so a micro-batch with long replies
weighs what its tokens weigh and accumulation never changes the objective. Packed batches
``(x, y, loss_mask, doc_ids)`` pass their document ids to the model.
"""

from __future__ import annotations

from ..trainer import Trainer
from ..trainer.batches import Batch


class SFTTrainer(Trainer):
    """``SFTTrainer(model, train_dl, val_dl, vocab_size, cfg, tokenizer=None)``; see ``Trainer``."""

    def count_tokens(self, batch: Batch):
        if batch.loss_mask is None:
            raise ValueError("SFTTrainer needs batches (x, y, loss_mask) with a loss mask: build the loaders with "
                             "from_sft_strings / from_sft_json / from_sft_files / from_sft_hf, or use Trainer "
                             "for plain next-token batches")
        return super().count_tokens(batch)
