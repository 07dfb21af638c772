"""Import/export between our ``Transformer`` and the formats the ecosystem uses.

- transformers folders: ``save_pretrained`` / ``load_pretrained`` (hf_io.py, exact mappings in
  hf_config.py and hf_weights.py)
- native folders for configs with no transformers counterpart (native.py)
- GGUF for llama.cpp (gguf.py, imported on use)
- ``write_model_folder``: a transformers folder when the config has a counterpart, else a native one
- reading any of them by path is ``store.load`` (what ``Transformer.from_pretrained`` calls)
- ``template_for_model``: a pretrained model's chat template as one of our presets
"""

from .auto import export_blocker, gguf_module, save_gguf, write_model_folder
from .chat_template import match_preset, read_chat_template, template_for_model
from .hf_config import from_hf_config, to_hf_config
from .hf_io import load_pretrained, save_pretrained
from .native import load_native, save_native

__all__ = ["export_blocker", "from_hf_config", "gguf_module", "load_native", "load_pretrained", "match_preset",
           "read_chat_template", "save_gguf", "save_native", "save_pretrained", "template_for_model", "to_hf_config",
           "write_model_folder"]
