"""Supervised fine-tuning: rendering with exact loss masks, loaders, the SFT trainer, chat (the chat
templates themselves live in ``tokenizer.templates``; ``ChatTemplate`` is re-exported here)."""

from ..tokenizer.templates import PRESETS, ChatTemplate
from .chat import ChatSession
from .config import SFTDataConfig
from .loaders import from_sft_files, from_sft_hf, from_sft_json, from_sft_strings
from .render import render, to_messages, truncate
from .synthetic import exact_match, synthetic_tasks
from .trainer import SFTTrainer

__all__ = [
    "ChatSession", "ChatTemplate", "PRESETS", "SFTDataConfig", "SFTTrainer", "exact_match", "from_sft_files",
    "from_sft_hf", "from_sft_json", "from_sft_strings", "render", "synthetic_tasks", "to_messages",
    "truncate",
]
