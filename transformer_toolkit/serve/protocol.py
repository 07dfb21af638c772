"""The OpenAI API's request fields, checked, and its response objects, built.

Requests are read field by field so that every mistake is answered the way OpenAI answers it:
status 400 and ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``
naming the field. Fields that change nothing here are accepted at their neutral value
(``frequency_penalty: 0``, ``user``); features this server does not have (tools, images,
penalties, ``logit_bias``) are refused by name rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..inference import SamplingParams, check_text

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "response_format", "suffix",
               "audio", "prediction", "best_of")
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "parallel_tool_calls": None}


class ApiError(Exception):
    """An error answered as an OpenAI error object with HTTP status ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Job:
    """A checked request: what to generate, for chat or plain completion."""

    model: str
    chat: bool
    messages: list[dict] | None = None  # chat
    prompt: str | list[int] | None = None  # completion: text or token ids
    max_tokens: int | None = None  # None: what the context leaves
    params: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # None: off; k: the token's own and the k most likely
    echo: bool = False
    stream: bool = False
    include_usage: bool = False


def _get(body: dict, name: str, kinds: tuple, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ApiError(400, f"'{name}' must be {names}, got {type(value).__name__}", name)
    return value


def _ranged(body: dict, name: str, lo: float, hi: float | None, default, integer: bool = False):
    value = _get(body, name, (int,) if integer else (int, float), default)
    if value is not None and not (lo <= value and (hi is None or value <= hi)):  # NaN fails too
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ApiError(400, f"'{name}' must be {bound}, got {value}", name)
    return value


def _sampling(body: dict) -> SamplingParams:
    temperature = _ranged(body, "temperature", 0, 2, 1.0)
    top_p = _ranged(body, "top_p", 0, 1, None)
    top_k = _get(body, "top_k", (int,))  # not OpenAI's: an extra field, as vLLM and llama.cpp take it
    if top_k is not None and top_k <= 0:  # 0 / -1: no top-k (vLLM's convention)
        top_k = None
    if top_p == 0:  # only the most likely token
        top_p, top_k = None, 1
    return SamplingParams(float(temperature), top_k, None if top_p is None else float(top_p))


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise ApiError(400, "'stop' must be a string or a list of at most 4 strings", "stop")
    return [s for s in stops if s]


def _common(body: dict, chat: bool) -> Job:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise ApiError(400, f"'{name}' is not supported by this server", name)
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise ApiError(400, f"'{name}' is not supported by this server (only {neutral})", name)
    model = _get(body, "model", (str,))
    if not model:
        raise ApiError(400, "'model' is required (GET /v1/models lists the served ones)", "model")
    max_tokens = _ranged(body, "max_completion_tokens", 1, None, None, integer=True) if chat else None
    if max_tokens is None:
        max_tokens = _ranged(body, "max_tokens", 1, None, None if chat else 16, integer=True)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    return Job(model=model, chat=chat, max_tokens=max_tokens, params=_sampling(body),
               n=_ranged(body, "n", 1, 16, 1, integer=True), stop=_stop(body),
               seed=_get(body, "seed", (int,)), stream=bool(_get(body, "stream", (bool,), False)),
               include_usage=bool((opts or {}).get("include_usage", False)))


def _text(value: str, param: str) -> str:
    """A string of real characters: JSON can spell a lone surrogate (``"\\ud800"``), no tokenizer can encode it."""
    try:
        check_text(value, param)
    except ValueError as e:
        raise ApiError(400, str(e), param) from None
    return value


def _content(message: dict, i: int) -> str:
    return _text(_content_text(message, i), f"messages[{i}].content")


def _content_text(message: dict, i: int) -> str:
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def chat_job(body: dict) -> Job:
    """A ``POST /v1/chat/completions`` body, checked."""
    job = _common(body, chat=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    job.messages = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role {role!r} is not supported; use one of "
                                f"{', '.join(ROLES)}", f"messages[{i}].role")
        job.messages.append({"role": ROLES[role], "content": _content(m, i)})
    if _get(body, "logprobs", (bool,), False):
        job.logprobs = _ranged(body, "top_logprobs", 0, 20, 0, integer=True)
    elif body.get("top_logprobs") is not None:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return job


def completion_job(body: dict) -> Job:
    """A ``POST /v1/completions`` body, checked: ``prompt`` is a string or a list of token ids."""
    job = _common(body, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    ok_ids = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in prompt)
    if not (isinstance(prompt, str) and prompt) and not ok_ids:
        raise ApiError(400, "'prompt' must be a non-empty string or list of token ids (one prompt per request)",
                       "prompt")
    job.prompt = _text(prompt, "prompt") if isinstance(prompt, str) else prompt
    job.logprobs = _ranged(body, "logprobs", 0, 5, None, integer=True)
    job.echo = bool(_get(body, "echo", (bool,), False))
    return job


# responses -------------------------------------------------------------------------------------

def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(job: Job, rid: str, created: int, chunk: bool) -> dict:
    kind = ("chat.completion" if job.chat else "text_completion") + (".chunk" if chunk and job.chat else "")
    return {"id": rid, "object": kind, "created": created, "model": job.model, "system_fingerprint": None}


def now() -> int:
    return int(time.time())
