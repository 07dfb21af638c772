"""The HTTP server: OpenAI's chat and text completion endpoints, the model list, a health check and
the web page, over one ``Batcher`` per served model.

Every error is an OpenAI error object with a 4xx/5xx status (``protocol.ApiError``), and the
server keeps serving after it. Limits: request bodies of at most ``max_body`` bytes (413), at
most ``max_requests`` requests in flight (429), and with ``api_key`` every ``/v1`` call needs
``Authorization: Bearer <key>`` (401). A stream whose client goes away cancels its requests,
which frees their slots at the batcher's next round.
"""

# (no ``from __future__ import annotations``: FastAPI reads the route functions' annotations, and
# ``Request`` is imported inside ``create_app``, so they must be evaluated there)
import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from importlib import resources

from .models import Choices, ServedModel
from .protocol import ApiError, Job, chat_job, completion_job, envelope, new_id, now, usage


def _fastapi():
    try:
        import fastapi  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as e:
        raise ImportError('ttk serve needs FastAPI and uvicorn: pip install -e ".[serve]"') from e


def page_html() -> str:
    """The web chat page (one self-contained file shipped in this package)."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def create_app(models: list[ServedModel], api_key: str | None = None, max_requests: int = 64,
               max_body: int = 1 << 20):
    """A FastAPI app serving ``models`` (their ``name``s are the API's model ids)."""
    _fastapi()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError("two served models have the same name; give each its own")
    state = {"in_flight": 0}

    @asynccontextmanager
    async def lifespan(app):
        yield
        for m in models:
            m.batcher.close()

    app = FastAPI(title="transformer-toolkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        return JSONResponse(ApiError(500, f"{type(e).__name__}: {e}", kind="server_error").body(), status_code=500)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(page_html())

    @app.get("/health")
    async def health():
        return {"status": "ok", "in_flight": state["in_flight"],
                "models": {m.name: m.batcher.load() for m in models}}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_key(request)
        return {"object": "list", "data": [m.card() for m in models]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: Request):
        check_key(request)
        return _served(by_name, name).card()

    async def complete(request: Request, chat: bool):
        check_key(request)
        body = await _read_json(request, max_body)
        job = chat_job(body) if chat else completion_job(body)
        served = _served(by_name, job.model)
        prompt = served.prompt_ids(job)
        max_new = served.budget(job, len(prompt))
        if state["in_flight"] >= max_requests:
            raise ApiError(429, f"the server is at its limit of {max_requests} requests in flight; retry shortly",
                           kind="requests", code="rate_limit_exceeded")
        state["in_flight"] += 1
        try:
            choices = served.start(job, prompt, max_new, asyncio.get_running_loop())
        except Exception:
            state["in_flight"] -= 1
            raise
        release = _once(lambda: state.__setitem__("in_flight", state["in_flight"] - 1))
        if job.stream:
            return _event_stream(_sse(choices, prompt), lambda: (choices.cancel(), release()))
        try:
            return await _gather(request, choices, prompt)
        finally:
            choices.cancel()
            release()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    return app


def _served(by_name: dict, name: str) -> ServedModel:
    if name not in by_name:
        raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(by_name)}", "model",
                       "model_not_found")
    return by_name[name]


def _once(fn):
    done = []

    def call():
        if not done:
            done.append(True)
            fn()
    return call


async def _read_json(request, limit: int):
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise ApiError(413, f"the request body has {int(size)} bytes; the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


# bodies ----------------------------------------------------------------------------------------

def _token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def _chat_logprobs(tokenizer, entries) -> dict:
    def one(tok, lp):
        text = _token_text(tokenizer, tok)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
    return {"content": [one(t, lp) | {"top_logprobs": [one(a, b) for a, b in top]} for t, lp, top in entries]}


def _text_logprobs(tokenizer, entries, offset: int) -> dict:
    tokens = [_token_text(tokenizer, t) for t, _, _ in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{_token_text(tokenizer, a): b for a, b in top} for _, _, top in entries],
            "text_offset": offsets}


def _choice_body(job: Job, tokenizer, index: int, text: str, entries, finish, offset: int = 0,
                 delta: dict | None = None) -> dict:
    lp = None
    if job.logprobs is not None:
        lp = _chat_logprobs(tokenizer, entries) if job.chat else _text_logprobs(tokenizer, entries, offset)
    if not job.chat:
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
    key = "delta" if delta is not None else "message"
    return {"index": index, key: delta if delta is not None else {"role": "assistant", "content": text},
            "logprobs": lp, "finish_reason": finish}


async def _gather(request, choices: Choices, prompt: list[int]) -> dict:
    """A whole (non-streaming) response; a client that goes away cancels the choices."""
    job, tok = choices.job, choices.served.tokenizer
    while not choices.done():
        try:
            await asyncio.wait_for(choices.next(), timeout=1.0)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                choices.cancel()
                return {}
    echo = tok.decode(prompt, skip_special_tokens=True) if job.echo and not job.chat else ""
    body = envelope(job, new_id(job.chat), now(), chunk=False)
    body["choices"] = [_choice_body(job, tok, i, echo + c.text.text, c.logprobs, c.finish, len(echo))
                       for i, c in enumerate(choices.choices)]
    body["usage"] = usage(len(prompt), choices.completion_tokens())
    return body


def _data(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(choices: Choices, prompt: list[int]):
    """Server-sent events as OpenAI streams them: a chunk per piece of text, a last chunk per
    choice with its ``finish_reason``, the usage chunk if asked, then ``data: [DONE]``."""
    job, tok = choices.job, choices.served.tokenizer
    rid, created = new_id(job.chat), now()
    head = envelope(job, rid, created, chunk=True)
    if job.include_usage:
        head["usage"] = None
    offsets = [0] * job.n

    def chunk(i, text, entries, finish, delta=None):
        body = dict(head, choices=[_choice_body(job, tok, i, text, entries, finish, offsets[i], delta)])
        offsets[i] += len(text)
        return _data(body)

    if job.chat:
        for i in range(job.n):
            yield chunk(i, "", [], None, {"role": "assistant", "content": ""})
    elif job.echo:
        for i in range(job.n):
            yield chunk(i, tok.decode(prompt, skip_special_tokens=True), [], None)
    try:
        while not choices.done():
            i, piece, entries, finish = await choices.next()
            if piece or entries:
                yield chunk(i, piece, entries, None, {"content": piece} if job.chat else None)
            if finish is not None:
                yield chunk(i, "", [], finish, {} if job.chat else None)
    except ApiError as e:
        yield _data(e.body())
        yield "data: [DONE]\n\n"
        return
    if job.include_usage:
        yield _data(dict(head, choices=[], usage=usage(len(prompt), choices.completion_tokens())))
    yield "data: [DONE]\n\n"


def _event_stream(events, cleanup):
    """A streaming response that runs ``cleanup`` however it ends: done, failed, or the client
    gone (even before the first event, when the generator would never run its own finally)."""
    from starlette.responses import StreamingResponse

    class EventStream(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                cleanup()

    return EventStream(events, media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
