"""Chat templates: how a conversation becomes one string, and which characters are trained.

Each preset is the format its model family really uses:

- ``chatml`` (Qwen, SmolLM): ``<|im_start|>{role}\\n{content}<|im_end|>\\n``
- ``llama3``: ``[BOS]`` then ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
- ``gemma``: ``[BOS]`` then ``<start_of_turn>{role}\\n{content}<end_of_turn>\\n``; the assistant
  role is called ``model`` and a system message is folded into the first user turn
- ``alpaca``: ``### Instruction:\\n{content}\\n\\n### Response:\\n{content}\\n\\n``
- ``raw``: ``User: {content}\\nAssistant: {content}\\n``

``format_messages(msgs)`` returns ``(text, spans)``: ``spans`` are the ``(start, end)`` character
ranges the model is trained on, every assistant turn's content and its closer. The SFT
renderer tokenises the whole text once and marks a token trained when it starts inside a
span, so training sees exactly the ids inference sees when it encodes the same string.

>>> t = ChatTemplate("chatml")
>>> text, spans = t.format_messages([{"role": "user", "content": "Hi"},
...                                  {"role": "assistant", "content": "Hello!"}])
>>> text
'<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n'
>>> [text[a:b] for a, b in spans]
['Hello!<|im_end|>\\n']
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from ..config_base import suggest

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class _Format:
    bos_token: str = ""
    system_header: str = ""
    system_closer: str = ""
    user_header: str = ""
    user_closer: str = ""
    assistant_header: str = ""
    assistant_closer: str = ""
    content_prefix: str = ""  # put before every content (inside the trained span for assistants)
    system_mode: str = "turn"  # "turn": its own turn; "fold": prepended to the first user message
    special_tokens: tuple[str, ...] = field(default=())


PRESETS: dict[str, _Format] = {
    "chatml": _Format(
        system_header="<|im_start|>system\n", system_closer="<|im_end|>\n",
        user_header="<|im_start|>user\n", user_closer="<|im_end|>\n",
        assistant_header="<|im_start|>assistant\n", assistant_closer="<|im_end|>\n",
        special_tokens=("<|im_start|>", "<|im_end|>")),
    "llama3": _Format(
        bos_token="[BOS]",
        system_header="<|start_header_id|>system<|end_header_id|>\n\n", system_closer="<|eot_id|>",
        user_header="<|start_header_id|>user<|end_header_id|>\n\n", user_closer="<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n", assistant_closer="<|eot_id|>",
        special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "gemma": _Format(
        bos_token="[BOS]", system_mode="fold",
        user_header="<start_of_turn>user\n", user_closer="<end_of_turn>\n",
        assistant_header="<start_of_turn>model\n", assistant_closer="<end_of_turn>\n",
        special_tokens=("<start_of_turn>", "<end_of_turn>")),
    "alpaca": _Format(
        system_closer="\n\n",
        user_header="### Instruction:\n", user_closer="\n\n",
        assistant_header="### Response:\n", assistant_closer="\n\n"),
    # Headers end before the space, which belongs to the content: the prompt then ends in
    # "Assistant:" and the model's first token is " word", as it was in training.
    "raw": _Format(
        system_header="System:", system_closer="\n", user_header="User:", user_closer="\n",
        assistant_header="Assistant:", assistant_closer="\n", content_prefix=" "),
}

_OVERRIDES = tuple(f.name for f in fields(_Format))


class ChatTemplate:
    """A conversation format: a preset plus any field overridden.

    ``ChatTemplate("llama3")``, or ``ChatTemplate(preset="chatml", assistant_header=...,
    assistant_closer=...)``. Overridable: ``bos_token``, ``{system,user,assistant}_header``,
    ``{system,user,assistant}_closer``, ``content_prefix``, ``system_mode`` ("turn"/"fold"),
    ``special_tokens`` (the tokens that must each be one id; checked by
    ``tokenizer.validate_template``). Backslash-escaped pipes (``<\\|im_start\\|>``, as written
    in Markdown tables) are read as plain pipes.
    """

    def __init__(self, preset: str = "chatml", **overrides):
        if preset not in PRESETS:
            raise ValueError(f"unknown chat template preset {preset!r}{suggest(preset, PRESETS)}; "
                             f"presets: {', '.join(PRESETS)}")
        bad = [k for k in overrides if k not in _OVERRIDES]
        if bad:
            named = ", ".join(f"{k!r}{suggest(k, _OVERRIDES)}" for k in bad)
            raise ValueError(f"ChatTemplate got unknown field(s) {named}; valid: {', '.join(_OVERRIDES)}")
        clean = {k: v.replace("\\|", "|") if isinstance(v, str) else tuple(v) for k, v in overrides.items()}
        fmt = replace(PRESETS[preset], **clean)
        if fmt.system_mode not in ("turn", "fold"):
            raise ValueError(f"system_mode must be 'turn' or 'fold', got {fmt.system_mode!r}")
        self.preset = preset
        self.fmt = fmt

    def __getattr__(self, name: str):  # template.assistant_header etc.
        fmt = self.__dict__.get("fmt")
        if fmt is not None and name in _OVERRIDES:
            return getattr(fmt, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        base = PRESETS[self.preset]
        changed = {f: getattr(self.fmt, f) for f in _OVERRIDES if getattr(self.fmt, f) != getattr(base, f)}
        extra = "".join(f", {k}={v!r}" for k, v in changed.items())
        return f"ChatTemplate({self.preset!r}{extra})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ChatTemplate) and self.fmt == other.fmt

    def to_dict(self) -> dict:
        """Plain dict (preset + every field) for checkpoints and run folders."""
        return {"preset": self.preset} | {f: (list(v) if isinstance(v := getattr(self.fmt, f), tuple) else v)
                                          for f in _OVERRIDES}

    @classmethod
    def from_dict(cls, d: dict) -> ChatTemplate:
        d = dict(d)
        return cls(d.pop("preset", "chatml"), **d)

    # rendering ------------------------------------------------------------------------------
    def _turns(self, messages: list[dict]) -> list[tuple[str, str]]:
        """Validated (role, content) pairs, with a system message folded where the format says."""
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
            role, content = m["role"], m["content"]
            if role not in ROLES:
                raise ValueError(f"message {i} has role {role!r}; roles are {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise ValueError(f"message {i} ({role}) content must be a string, got {type(content).__name__}")
            turns.append((role, content))
        if self.fmt.system_mode == "fold" and turns and turns[0][0] == "system":
            system = turns.pop(0)[1]
            if turns and turns[0][0] == "user":
                turns[0] = ("user", f"{system}\n\n{turns[0][1]}")
            else:
                turns.insert(0, ("user", system))
        return turns

    def format_messages(self, messages: list[dict], add_generation_prompt: bool = False, bos: bool = True
                        ) -> tuple[str, list[tuple[int, int]]]:
        """``(text, spans)``: the conversation as one string and the trained character ranges.

        With ``add_generation_prompt=True`` the assistant header is appended (what the
        README's chat example does by hand with ``template.assistant_header``). ``bos=False``
        leaves out the BOS text (the renderer inserts the tokenizer's BOS id instead).
        """
        f = self.fmt
        start = f.bos_token if bos else ""
        parts, spans, pos = [start], [], len(start)
        for role, content in self._turns(messages):
            header, closer = getattr(f, f"{role}_header"), getattr(f, f"{role}_closer")
            body = f.content_prefix + content + closer
            if role == "assistant":
                spans.append((pos + len(header), pos + len(header) + len(body)))
            parts += [header, body]
            pos += len(header) + len(body)
        if add_generation_prompt:
            parts.append(f.assistant_header)
        return "".join(parts), spans

    def stop_strings(self) -> list[str]:
        """Text that ends an assistant turn (the closer without trailing whitespace)."""
        closer = self.fmt.assistant_closer.strip()
        return [closer] if closer else []

    def to_jinja(self) -> str:
        """This template as a Jinja ``chat_template`` that transformers' ``apply_chat_template``
        renders to the same text as ``format_messages`` (with ``add_generation_prompt``)."""
        from .jinja import to_jinja

        return to_jinja(self)
