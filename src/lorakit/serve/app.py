"""The HTTP API (FastAPI): OpenAI-compatible completions and chat completions, classification, adapter
loading, health, metrics.

Handlers only check and tokenize requests and wait for the engine (``engine.py``), which runs the model on
its own thread; they never block the event loop on a forward pass. Completions and chat completions are one
path (``generation``) that differs only in the prompt (text or ids; a conversation rendered with the chat
template, ``chat.py``) and in the reply's shape. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` so the official client raises with the message.

Two ASGI layers sit in front of the handlers, both acting before a body is read: ``_Guard`` checks bearer
tokens (an API key for the model endpoints, an admin token for loading and unloading adapters) and
``_BodyLimit`` answers 413 to bodies over ``max_body_bytes``, so a huge body is never parsed on the event
loop (which would hold up every other request, ``/health`` included).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from ..data.chat import ChatTemplateError, MessageError
from ..decode.sampling import row_seed
from .chat import ChatPrompts, ChatShape, NoChatTemplate, checked_messages
from .engine import Engine, GenerationRow, QueueFull, RequestRejected
from .registry import AdapterConflict, AdapterNotFound, AdapterRefused
from .schemas import AdapterRequest, ChatRequest, ClassifyRequest, CompletionRequest, UnloadRequest

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
ADMIN_PATHS = ("/v1/adapters/",)  # loading and unloading: what every client then gets served
OPEN_PATHS = ("/health", "/metrics")  # probes and scrapers send no token


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def _error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _json_safe(value: Any) -> Any:
    """``value`` as strict JSON can carry it: error bodies echo client input, which may hold NaN, infinities
    or lone surrogates (Python's JSON parser accepts all three), and must never fail to serialise."""
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    return _json_safe(str(value))


class SafeJSONResponse(JSONResponse):
    """A JSON response whose content is made strict JSON first (see ``_json_safe``)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_json_safe(content), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")


def _error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                    code: str | None = None, headers: dict[str, str] | None = None) -> SafeJSONResponse:
    return SafeJSONResponse(_error_body(message, kind, param, code), status_code=status, headers=headers)


def api_error(err: BaseException, param: str = "model") -> ApiError:
    """The HTTP status and message for an error raised while serving a request; ``param``: the request field
    that named the adapter."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, AdapterNotFound):
        return ApiError(404, str(err), code="model_not_found", param=param)
    if isinstance(err, AdapterConflict):
        return ApiError(409, str(err), param=param, code="adapter_name_taken")
    if isinstance(err, AdapterRefused):
        return ApiError(400, str(err), param=getattr(err, "param", None) or param)
    if isinstance(err, QueueFull):
        return ApiError(503, str(err), kind="server_overloaded")
    if isinstance(err, RequestRejected):  # can never succeed as sent (413: larger than the queue)
        return ApiError(err.status, str(err), param=err.param,
                        code="request_too_large" if err.status == 413 else None)
    if isinstance(err, MessageError):  # a malformed conversation: 422 naming the field, as pydantic's are
        return ApiError(422, f"{err.key}: {err.message}", param=err.key)
    if isinstance(err, ChatTemplateError):
        return ApiError(422, f"messages: the chat template refuses this conversation: {err.error}", param="messages")
    if isinstance(err, NoChatTemplate):
        return ApiError(400, str(err), param="messages", code="no_chat_template")
    return ApiError(500, f"{type(err).__name__}: {err}", kind="server_error")


def _bearer(scope: dict[str, Any]) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, if the request has one."""
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


class _Guard:
    """Bearer-token checks, before anything else reads the request (ASGI middleware).

    ``api_key`` guards every path but the adapter admin ones, which ``admin_token`` guards, and the open ones;
    with an API key and no admin token they need the API key (a server that asks for a key to generate
    must not let anyone change what it serves). ``/health`` and ``/metrics`` stay open. Tokens are
    compared in constant time (``hmac.compare_digest``)."""

    def __init__(self, app: Any, api_key: str | None, admin_token: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.admin_token = admin_token.encode("utf-8") if admin_token else self.api_key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        admin = path.startswith(ADMIN_PATHS)
        needed = self.admin_token if admin else self.api_key  # any other path: the API key (deny by default)
        given = _bearer(scope)
        if needed is not None and (given is None or not hmac.compare_digest(given, needed)):
            if admin:
                message = ("missing or wrong admin token: loading and unloading adapters needs 'Authorization: "
                           "Bearer <token>' with the server's admin token (lorakit serve --admin-token or "
                           "LORAKIT_ADMIN_TOKEN; its API key when it has no admin token)")
            else:
                message = ("missing or incorrect API key: send 'Authorization: Bearer <key>' with the server's "
                           "API key (lorakit serve --api-key or LORAKIT_API_KEY; the openai client's api_key)")
            response = _error_response(401, message, code="invalid_admin_token" if admin else "invalid_api_key",
                                       headers={"WWW-Authenticate": 'Bearer realm="lorakit"'})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class _BodyLimit:
    """413 for request bodies over ``limit`` bytes, decided before the body is parsed (ASGI middleware).

    A declared ``Content-Length`` over the limit is refused unread; a chunked body is read up to the
    limit and refused as soon as it passes it. Bodies within the limit are handed on as they came."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def _too_large(self) -> SafeJSONResponse:
        return _error_response(413, f"request body is over this server's limit of {self.limit} bytes "
                                    "(lorakit serve --max-body-bytes)", code="request_too_large")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large()(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large()(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls: disconnect notices, as the server sends them

        await self.app(scope, replay, send)


def _endpoint(path: str) -> str:
    """A bounded label for metrics (unknown paths must not create one series each)."""
    known = ("/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/models", "/v1/adapters/load",
             "/v1/adapters/unload", "/health", "/metrics")
    return path if path in known else "other"


def create_app(engine: Engine, base_name: str, *, api_key: str | None = None, admin_token: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, chat_template: str | os.PathLike[str] | None = None
               ) -> FastAPI:
    """The API over a running ``engine`` whose base model is called ``base_name`` in requests.

    ``api_key``: required (``Authorization: Bearer``) by the completion, classification and model-list
    endpoints; ``admin_token``: by ``/v1/adapters/load`` and ``/unload`` (which fall back to ``api_key``);
    None leaves them open. ``max_body_bytes``: larger request bodies get 413. ``chat_template``: Jinja text
    or file for ``/v1/chat/completions`` when the base's tokenizer has none (or to replace its own)."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    # tokenizing a long prompt takes a while: one thread of its own (fast tokenizers are not thread-safe, so
    # one tokenizer, one thread) keeps the event loop, and so /health and every other request, responsive
    tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorakit-tokenizer")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        tokenizing.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="lorakit serve", version="0.1.0", lifespan=lifespan)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)  # added first: inside the guard, which runs first
    app.add_middleware(_Guard, api_key=api_key or None, admin_token=admin_token or None)
    metrics = engine.metrics
    tokenizer = copy.deepcopy(engine.tokenizer)  # the tokenizing thread's own (the engine thread uses another)
    chat = ChatPrompts(tokenizer, chat_template, engine.eos)  # a classifier's chat requests get its 400 first
    metrics.gauge("lorakit_queue_rows", "Rows waiting for a place in a batch.", engine.queued)
    metrics.gauge("lorakit_adapters_loaded", "Adapters attached to the model.", lambda: len(engine.loaded()))

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        endpoint = _endpoint(request.url.path)
        if isinstance(response, StreamingResponse) or hasattr(response, "body_iterator"):
            inner = response.body_iterator

            async def timed() -> AsyncIterator[bytes]:
                try:
                    async for chunk in inner:
                        yield chunk
                finally:
                    metrics.observe(endpoint, response.status_code, time.perf_counter() - start)

            response.body_iterator = timed()
        else:
            metrics.observe(endpoint, response.status_code, time.perf_counter() - start)
        return response

    root = str(engine.registry.root)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        message = err.message.replace(root + "/", "").replace(root, "<adapter folder>")  # no server paths out
        return _error_response(err.status, message, err.kind, err.param, err.code)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        """Starlette's own errors (unknown path, wrong method, a body that is not parseable JSON) in OpenAI's
        shape too, so every error a client gets reads the same."""
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return _error_response(err.status_code, str(err.detail), kind, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                    for e in err.errors()]
        first = err.errors()[0].get("loc", ()) if err.errors() else ()
        param = ".".join(str(x) for x in first if x != "body") or None
        body = _error_body("; ".join(problems), "invalid_request_error", param)
        body["detail"] = [{k: v for k, v in e.items() if k != "input" or _small(v)} for e in err.errors()]
        return SafeJSONResponse(body, status_code=422)

    def resolve(model: str) -> str | None:
        """The adapter a request names (None: the base model); 404 / 400 when there is none or it is refused."""
        if model == base_name:
            return None
        engine.registry.folder(model)
        return model

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": base_name, "loaded_adapters": engine.loaded(), "queued_rows": engine.queued(),
                "kind": "classifier" if engine.classifier else "generator"}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        loaded = set(engine.loaded())
        data = [{"id": base_name, "object": "model", "created": 0, "owned_by": "lorakit", "kind": "base",
                 "loaded": True}]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": "lorakit", "kind": "adapter",
                  "parent": base_name, "loaded": name in loaded} for name in engine.registry.names()
                 if name != base_name]
        return {"object": "list", "data": data}

    @app.post("/v1/adapters/load")
    async def load(body: AdapterRequest) -> dict[str, Any]:
        if body.name == base_name:
            raise ApiError(409, f"{base_name!r} is the base model's name, not an adapter's", param="name",
                           code="adapter_name_taken")
        new = False
        try:
            if body.path is not None:
                new = engine.registry.register(body.name, body.path)
            else:
                engine.registry.folder(body.name)
            await asyncio.wrap_future(engine.load(body.name))
        except BaseException as err:  # cancelled too: a load that did not finish leaves no name behind
            if new:
                engine.registry.forget(body.name)
            if not isinstance(err, Exception):
                raise
            raise api_error(err, param="name") from err
        return {"name": body.name, "loaded": True}

    @app.post("/v1/adapters/unload")
    async def unload(body: UnloadRequest) -> dict[str, Any]:
        try:
            engine.registry.folder(body.name)
            was_loaded = await asyncio.wrap_future(engine.unload(body.name))
        except Exception as err:
            raise api_error(err, param="name") from err
        return {"name": body.name, "unloaded": bool(was_loaded)}

    async def generation(body: CompletionRequest | ChatRequest, request: Request,
                         shape: CompletionShape | ChatShape, encode: Callable[[], list[list[int]]],
                         prompt_param: str = "prompt", stop_ids: frozenset[int] = frozenset()):
        """One request's rows through the engine, answered whole or streamed in ``shape``: the one path for
        completions and chat completions. ``encode`` runs on the tokenizing thread and gives the prompts."""
        if engine.classifier:
            raise ApiError(400, f"{base_name} is a classification model: use /v1/classify", param="model")
        try:
            adapter = resolve(body.model)
        except Exception as err:
            raise api_error(err) from err
        loop = asyncio.get_running_loop()
        try:
            prompts = await loop.run_in_executor(tokenizing, encode)
        except Exception as err:
            raise api_error(err) from err
        longest = max(len(p) for p in prompts)
        max_tokens = body.new_tokens(longest, engine.context_length)
        _check_lengths(prompts, max_tokens, engine.context_length, prompt_param)
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, data: dict[str, Any]) -> None:  # engine thread -> event loop
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        n = body.n
        rows = [GenerationRow(adapter, prompt, max_tokens, body.temperature, body.top_p, list(body.stop or []), emit,
                              index=i * n + c, seed=_row_seed(body.seed, i * n + c), top_k=body.top_k,
                              stop_ids=stop_ids)
                for i, prompt in enumerate(prompts) for c in range(n)]
        try:
            engine.generate(rows)
        except Exception as err:
            raise api_error(err) from err
        reply = {"id": f"{shape.id_prefix}{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        usage = {"prompt_tokens": sum(len(p) for p in prompts) * n}
        if body.stream:
            return StreamingResponse(_stream(rows, events, reply, usage, body.include_usage, shape),
                                     media_type="text/event-stream")
        return await _collect(rows, events, reply, usage, shape, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await generation(body, request, CompletionShape(), lambda: [_encode(tokenizer, p, engine.input_vocab)
                                                                          for p in body.prompts()])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        try:
            messages = checked_messages(body.messages)
        except MessageError as err:
            raise api_error(err) from err
        return await generation(body, request, ChatShape(),
                                lambda: [_encode(tokenizer, chat.render(tokenizer, messages), engine.input_vocab)],
                                prompt_param="messages", stop_ids=chat.stop_ids)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        if not engine.classifier:
            raise ApiError(400, f"{base_name} generates text: classification needs a sequence-classification base "
                                "model (e.g. --model minilm-l6)", param="model")
        try:
            adapter = resolve(body.model)
        except Exception as err:
            raise api_error(err) from err
        inputs = body.inputs()
        if not inputs:
            raise ApiError(400, "input is empty", param="input")
        if not _same_kind(inputs):
            raise ApiError(400, "input mixes single texts and pairs; send one kind per request", param="input")
        limit = engine.context_length or tokenizer.model_max_length
        encoded = await asyncio.get_running_loop().run_in_executor(tokenizing, lambda: tokenizer(
            [x if isinstance(x, str) else x[0] for x in inputs],
            [x[1] for x in inputs] if all(not isinstance(x, str) for x in inputs) else None,
            truncation=True, max_length=limit))
        try:
            logits, labels = await asyncio.wrap_future(engine.classify(adapter, encoded["input_ids"],
                                                                       encoded.get("token_type_ids")))
        except Exception as err:
            raise api_error(err) from err
        return _classification(body.model, logits, labels, engine)

    return app


def _small(value: Any) -> bool:
    """Whether a 422's ``detail`` may echo this input: scalars and short texts, never a whole body."""
    return value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 200)


def _row_seed(seed: int | None, row: int) -> int | None:
    """Row ``row``'s seed (prompt i, choice c: row i * n + c), derived as ``lorakit generate`` derives input
    ``row``'s, so one prompt or a list gives the command line's text; any seed the schema accepts works."""
    return None if seed is None else row_seed(seed, row)


def _finite(value: float) -> float | None:
    """A score JSON can carry: a model that outputs NaN or infinity gives ``null`` rather than a 500."""
    return value if math.isfinite(value) else None


def _same_kind(inputs: list[str | list[str]]) -> bool:
    return len({isinstance(x, str) for x in inputs}) == 1


def _encode(tokenizer, prompt: str | list[int], vocab: int | None = None) -> list[int]:
    """Token ids for ``prompt``; given ids must be below ``vocab``, the model's input rows (which may be
    more than the tokenizer's ids, never fewer: the engine refuses such a pair at start-up)."""
    if isinstance(prompt, list):
        vocab = len(tokenizer) if vocab is None else vocab
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"prompt token ids {bad[:5]} are outside the model's vocabulary (0..{vocab - 1})",
                           param="prompt")
        ids = prompt
    else:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as lorakit's training and generate see it
    if not ids:
        raise ApiError(400, "prompt is empty: at least one token is needed", param="prompt")
    return ids


def _check_lengths(prompts: list[list[int]], max_tokens: int, context: int | None, param: str = "prompt") -> None:
    """The prompts (named ``param`` in requests) and ``max_tokens`` new tokens fit the model's context."""
    if context is None:
        return
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise ApiError(400, f"prompt is {longest} tokens, longer than the model's context of {context} tokens "
                            "(which must also leave room for at least one new token)", param=param,
                       code="context_length_exceeded")
    if longest + max_tokens > context:
        raise ApiError(400, f"prompt ({longest} tokens) + max_tokens ({max_tokens}) = {longest + max_tokens} "
                            f"exceeds the model's context of {context} tokens; lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")


async def _cancel_on_disconnect(request: Request, rows: list[GenerationRow]) -> None:
    """Mark ``rows`` cancelled once the client disconnects (the body is read already, so the next ASGI
    message is the disconnect): the engine then drops them instead of generating for nobody."""
    while True:
        try:
            message = await request.receive()
        except Exception:  # nothing more to learn from this connection; the request runs to its end
            return
        if message["type"] == "http.disconnect":
            for row in rows:
                row.cancelled = True
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            await asyncio.sleep(0.05)  # a server that repeats the (empty) body: do not spin


class CompletionShape:
    """Choices as OpenAI's completions endpoint writes them (``chat.ChatShape`` is the chat one)."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def opening(index: int) -> dict[str, Any] | None:
        return None  # completions' streams start with the text

    @staticmethod
    def piece(index: int, text: str) -> dict[str, Any]:
        return CompletionShape.choice(index, text, None)

    @staticmethod
    def ending(index: int, finish_reason: str) -> dict[str, Any]:
        return CompletionShape.choice(index, "", finish_reason)


async def _collect(rows: list[GenerationRow], events: asyncio.Queue, reply: dict[str, Any],
                   usage: dict[str, int], shape: CompletionShape | ChatShape,
                   request: Request | None = None) -> dict[str, Any]:
    texts = {r.index: [] for r in rows}
    finish: dict[int, str] = {}
    completion_tokens = 0
    watcher = asyncio.create_task(_cancel_on_disconnect(request, rows)) if request is not None else None
    try:
        while len(finish) < len(rows):
            kind, data = await events.get()
            if kind == "text":
                texts[data["index"]].append(data["text"])
            elif kind == "done":
                finish[data["index"]] = data["finish_reason"]
                completion_tokens += data["tokens"]
            else:
                raise api_error(data["error"])
    finally:
        if watcher is not None:
            watcher.cancel()
        for row in rows:  # a cancelled or failed request frees its places in the batch
            row.cancelled = True
    choices = [shape.choice(i, "".join(texts[i]), finish[i]) for i in sorted(texts)]
    usage = {**usage, "completion_tokens": completion_tokens,
             "total_tokens": usage["prompt_tokens"] + completion_tokens}
    return {**reply, "object": shape.object, "choices": choices, "usage": usage}


async def _stream(rows: list[GenerationRow], events: asyncio.Queue, reply: dict[str, Any], usage: dict[str, int],
                  include_usage: bool, shape: CompletionShape | ChatShape) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them: one chunk per piece of text (chat: the role first), a last
    one per choice with its finish reason, ``[DONE]`` at the end."""
    done, completion_tokens = 0, 0

    def chunk(choice: dict[str, Any]) -> str:
        return f"data: {json.dumps({**reply, 'object': shape.chunk_object, 'choices': [choice]})}\n\n"

    try:
        for row in rows:
            opening = shape.opening(row.index)
            if opening is not None:
                yield chunk(opening)
        while done < len(rows):
            kind, data = await events.get()
            if kind == "text":
                yield chunk(shape.piece(data["index"], data["text"]))
            elif kind == "done":
                done += 1
                completion_tokens += data["tokens"]
                yield chunk(shape.ending(data["index"], data["finish_reason"]))
            else:
                err = api_error(data["error"])
                yield f"data: {json.dumps(_error_body(err.message, err.kind, err.param, err.code))}\n\n"
                return
        if include_usage:
            body = {**reply, "object": shape.chunk_object, "choices": [],
                    "usage": {**usage, "completion_tokens": completion_tokens,
                              "total_tokens": usage["prompt_tokens"] + completion_tokens}}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for row in rows:
            row.cancelled = True


def _classification(model: str, logits: torch.Tensor, labels: list[str] | None, engine: Engine) -> dict[str, Any]:
    config = getattr(engine.model, "config", None)
    width = logits.shape[-1]
    if labels is None or len(labels) != width:
        id2label = getattr(config, "id2label", None) or {}
        labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(width)]
    data = []
    for i, row in enumerate(logits):
        if width == 1:  # a regression head (STS-B): the score is the value
            data.append({"index": i, "label": None, "score": _finite(float(row[0])), "scores": None})
            continue
        probs = row.softmax(-1)
        best = int(probs.argmax())
        data.append({"index": i, "label": labels[best], "score": _finite(float(probs[best])),
                     "scores": {label: _finite(float(p)) for label, p in zip(labels, probs, strict=True)}})
    return {"object": "list", "model": model, "data": data}
