"""SFTDataConfig: how conversations become training rows; ChatDataConfig, the base it shares with
the preference and prompt data configs (``dpo``, ``grpo``)."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, model_validator

from ..config_base import StrictConfig, check_choice
from ..tokenizer.templates import ChatTemplate
from .render import SCHEMAS

# The README's field is called `schema`, which shadows pydantic's deprecated BaseModel.schema();
# nothing here uses that method, so the warning about it is silenced.
warnings.filterwarnings("ignore", message='Field name "schema" in "SFTDataConfig" shadows')


class ChatDataConfig(StrictConfig):
    """The base of the data configs whose rows are rendered in a chat template (SFT, preference
    pairs, prompts): ``tokenizer`` (not serialised), and ``template`` (a field of each subclass,
    where its order is the config's), a preset name, a ``ChatTemplate`` or its dict, made a
    ``ChatTemplate`` before the subclass's own checks and written by ``to_dict`` as its dict."""

    tokenizer: Any = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check_template(self) -> ChatDataConfig:
        if isinstance(self.template, str):
            self.template = ChatTemplate(self.template)
        elif isinstance(self.template, dict):
            self.template = ChatTemplate.from_dict(self.template)
        elif not isinstance(self.template, ChatTemplate):
            raise ValueError(f"template must be a preset name or a ChatTemplate, got {type(self.template).__name__}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(exclude={"tokenizer", "template"})
        d["template"] = self.template.to_dict()
        return d


class SFTDataConfig(ChatDataConfig):
    """Settings of the SFT loaders.

    ``tokenizer`` (optional here, since every loader also takes it) supplies ``bos_id``,
    ``eos_id`` and ``pad_id`` unless they are given. ``seq_len`` is the number of input tokens
    per row and must not exceed the model's ``max_seq``. ``template`` is a preset name or a
    ``ChatTemplate``. ``packing=True`` fills each row with several conversations that cannot
    attend to each other (batches then carry a fourth tensor, the document ids).
    """

    seq_len: int = 512
    batch_size: int = 8
    split: float = 0.9
    template: Any = "chatml"
    schema: str = "auto"
    truncation_strategy: str = "turn"
    packing: bool = False
    shuffle: bool = True
    num_workers: int = 0
    pin_memory: bool = False
    seed: int = 0
    debug: bool = False
    debug_n: int = 2
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    RANGES = {"seq_len": {"ge": 2}, "batch_size": {"ge": 1},
              "split": {"gt": 0, "lt": 1, "hint": " (the train fraction)"},
              "num_workers": {"ge": 0}, "seed": {"ge": 0}, "debug_n": {"ge": 1},
              "bos_id": {"ge": 0}, "eos_id": {"ge": 0}, "pad_id": {"ge": 0}}

    @model_validator(mode="after")
    def _check(self) -> SFTDataConfig:
        check_choice("schema", self.schema, SCHEMAS)
        check_choice("truncation_strategy", self.truncation_strategy, ("token", "turn"))
        if self.tokenizer is not None:
            for name in ("bos_id", "eos_id", "pad_id"):
                if getattr(self, name) is None:
                    setattr(self, name, getattr(self.tokenizer, name, None))
        return self
