"""The I/O layer: everything that reads or writes a model, a checkpoint or a run on disk.

- ``load(source)``: a model with its tokenizer and chat template from a run folder, a ``.pt``
  checkpoint, a transformers or native folder, a ``.gguf`` file or a Hub repo id (load.py);
- checkpoint.py: the checkpoint format (atomic writes, ``weights_only`` reads, the newest
  resumable one);
- runs.py: run folders (config.yaml, the tokenizer, the checkpoint a folder means, the SFT template);
- adapted.py: a LoRA run's checkpoint (adapters only) put back on its recorded base;
- ``save_pretrained`` / ``save_gguf``: the writers of ``convert/``, for ``Transformer``'s methods.

It sits above ``model``, ``tokenizer``, ``convert`` and ``lora`` and below ``trainer`` and ``cli``.
"""

from ..convert import save_gguf, save_pretrained
from .checkpoint import atomic_save, latest_ckpt, load_checkpoint_model, load_ckpt, read_ckpt, save_checkpoint
from .load import CHECKPOINT, GGUF, NATIVE, PRETRAINED, RUN, TRANSFORMERS, Loaded, load, load_model, source_kind

__all__ = ["CHECKPOINT", "GGUF", "NATIVE", "PRETRAINED", "RUN", "TRANSFORMERS", "Loaded", "atomic_save", "latest_ckpt",
           "load", "load_checkpoint_model", "load_ckpt", "load_model", "read_ckpt", "save_checkpoint", "save_gguf",
           "save_pretrained", "source_kind"]
