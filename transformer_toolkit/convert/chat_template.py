"""The chat template of a pretrained model, as one of our ``ChatTemplate`` presets.

A transformers folder (``chat_template.jinja`` or ``tokenizer_config.json``) or a GGUF file
carries its chat format as a Jinja program. Our chat and SFT code needs a ``ChatTemplate``
(it must know which characters are the assistant's to build loss masks), so the Jinja is
rendered on probe conversations and compared with each preset's rendering: the preset that
renders the same text is used. BOS is compared loosely (our presets spell it ``[BOS]`` and
insert the tokenizer's BOS id; a model's template writes its own BOS string).

>>> template, matched = template_for_model("SmolLM2-135M-Instruct/")   # doctest: +SKIP
>>> template.preset, matched
('chatml', True)
"""

from __future__ import annotations

import os
from datetime import datetime

from ..optional import require
from ..tokenizer.loading import folder_chat_template
from ..tokenizer.templates import PRESETS, ChatTemplate

# Probes: with a system message first; a template that refuses system messages gets the second.
_TURNS = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
          {"role": "user", "content": "And 4 + 4?"}]
PROBES = ([{"role": "system", "content": "Be brief."}, *_TURNS], _TURNS)


def read_chat_template(path: str | os.PathLike) -> str | None:
    """The Jinja chat template stored with a model: a transformers folder's
    ``chat_template.jinja`` (transformers >= 5) or ``tokenizer_config.json`` ``chat_template``,
    or a ``.gguf`` file's ``tokenizer.chat_template``; None when there is none."""
    path = os.fspath(path)
    if path.endswith(".gguf") and os.path.isfile(path):
        from .gguf import gguf_chat_template

        return gguf_chat_template(path)
    return folder_chat_template(path)


def render(jinja: str, messages: list[dict], add_generation_prompt: bool = True, bos_token: str = "",
           eos_token: str = "") -> str:
    """Render a transformers-style chat template (sandboxed Jinja, ``trim_blocks`` and
    ``lstrip_blocks`` on, ``raise_exception`` available, as transformers renders it)."""
    loopcontrols = require("jinja2.ext", "rendering a model's chat template", "hf").loopcontrols
    ImmutableSandboxedEnvironment = require("jinja2.sandbox", "rendering a model's chat template",
                                            "hf").ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)  # Llama 3.x templates use it
    return env.from_string(jinja).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos_token, eos_token=eos_token)


def match_preset(jinja: str, bos_token: str | None = None, eos_token: str | None = None) -> str | None:
    """The name of the preset whose rendering equals ``jinja``'s on the probe conversations, or None."""
    for probe in PROBES:
        try:
            theirs = render(jinja, probe, True, bos_token or "", eos_token or "")
        except Exception:  # noqa: BLE001 - a template may refuse a probe (e.g. no system role); try the next
            continue
        # with and without a leading BOS: a template may write {{ bos_token }}, and a BOS token
        # may also be an ordinary part of the format (SmolLM2's BOS is <|im_start|>)
        candidates = {theirs, theirs.removeprefix(bos_token)} if bos_token else {theirs}
        for name, fmt in PRESETS.items():
            ours, _ = ChatTemplate(name).format_messages(probe, add_generation_prompt=True, bos=False)
            if any(ours == c.removeprefix(fmt.bos_token) for c in candidates):  # our Jinja spells BOS as "[BOS]"
                return name
        return None
    return None


def _token_text(tokenizer, attr: str) -> str | None:
    i = getattr(tokenizer, f"{attr}_id", None)
    if i is None:
        return None
    try:
        return tokenizer.decode([i], skip_special_tokens=False)
    except Exception:  # noqa: BLE001 - an id the tokenizer cannot decode just means no BOS text
        return None


def template_for_model(path: str | os.PathLike, tokenizer=None) -> tuple[ChatTemplate, bool]:
    """``(template, matched)`` for a transformers folder or GGUF file: the preset its chat
    template renders like, or ``(chatml, False)`` when it has none or matches no preset."""
    jinja = getattr(tokenizer, "chat_template", None) or read_chat_template(path)
    if not jinja:
        return ChatTemplate("chatml"), False
    name = match_preset(jinja, _token_text(tokenizer, "bos"), _token_text(tokenizer, "eos"))
    return ChatTemplate(name or "chatml"), name is not None
