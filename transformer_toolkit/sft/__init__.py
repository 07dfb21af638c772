"""Supervised fine-tuning: chat templates, rendering with exact loss masks, loaders, chat."""

from .chat import ChatSession
from .config import SFTDataConfig
from .loaders import from_sft_files, from_sft_hf, from_sft_json, from_sft_strings
from .render import render, to_messages, truncate
from .templates import PRESETS, ChatTemplate

__all__ = [
    "PRESETS", "ChatSession", "ChatTemplate", "SFTDataConfig", "from_sft_files", "from_sft_hf",
    "from_sft_json", "from_sft_strings", "render", "to_messages", "truncate",
]
