"""Write a ChatTemplate as the Jinja ``chat_template`` string transformers renders.

The generated template renders exactly ``ChatTemplate.format_messages`` (plus the assistant
header when ``add_generation_prompt`` is true), so a model exported with its tokenizer chats
in transformers with the format it was trained on.
"""

from __future__ import annotations

import json


def _lit(s: str) -> str:
    """A Jinja string literal (Jinja reads the escapes of a JSON string)."""
    return json.dumps(s)


def _emit(s: str) -> str:
    return "{{ " + _lit(s) + " }}" if s else ""


def to_jinja(template) -> str:
    f = template.fmt
    p = _lit(f.content_prefix)
    turn = {}
    for role in ("system", "user", "assistant"):
        header, closer = getattr(f, f"{role}_header"), getattr(f, f"{role}_closer")
        turn[role] = _emit(header) + "{{ " + p + " + content }}" + _emit(closer)
    lines = [_emit(f.bos_token)]
    if f.system_mode == "fold":
        lines += [
            "{%- if messages and messages[0]['role'] == 'system' -%}",
            "{%- set sys = messages[0]['content'] -%}{%- set msgs = messages[1:] -%}",
            "{%- else -%}{%- set sys = none -%}{%- set msgs = messages -%}{%- endif -%}",
            "{%- if sys is not none and (not msgs or msgs[0]['role'] != 'user') -%}",
            "{%- set content = sys -%}" + turn["user"],
            "{%- endif -%}",
        ]
    else:
        lines.append("{%- set sys = none -%}{%- set msgs = messages -%}")
    lines += [
        "{%- for message in msgs -%}",
        "{%- set content = message['content'] -%}",
        "{%- if loop.first and sys is not none and message['role'] == 'user' -%}"
        "{%- set content = sys + '\\n\\n' + content -%}{%- endif -%}",
    ]
    for i, role in enumerate(("system", "user", "assistant")):
        lines.append(("{%- if" if i == 0 else "{%- elif") + f" message['role'] == '{role}' -%}}" + turn[role])
    lines += [
        "{%- else -%}{{ raise_exception('unknown role: ' + message['role']) }}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}" + _emit(f.assistant_header) + "{%- endif -%}",
    ]
    return "".join(lines)
