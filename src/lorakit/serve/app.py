"""The HTTP API (FastAPI): OpenAI-compatible completions and chat completions, classification, adapter
loading, health, metrics.

Handlers only check and tokenize requests and wait for the engine (``engine.py``), which runs the model on
its own thread; they never block the event loop on a forward pass. Completions and chat completions are one
path (``generation``) that differs only in the prompt (text or ids; a conversation rendered with the chat
template, ``chat.py``) and in the reply's shape. OpenAI-shaped errors, the bearer-token checks (``Guard``)
and the body limit (``BodyLimit``) come from ``http.py``; the two ASGI layers act before a body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import os
import threading
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

from ..data.chat import CHAT_TEMPLATE_NAME, MessageError
from ..decode.sampling import row_seed
from .chat import ChatPrompts, ChatShape, checked_messages
from .engine import Engine, GenerationRow
from .http import (
    DEFAULT_MAX_BODY_BYTES,
    ApiError,
    BodyLimit,
    Guard,
    SafeJSONResponse,
    api_error,
    error_body,
    error_response,
)
from .registry import AdapterRefused
from .schemas import AdapterRequest, ChatRequest, ClassifyRequest, CompletionRequest, UnloadRequest

MAX_REPORTED_ERRORS = 5  # a 422 lists this many of a body's problems and counts the rest


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
    app.add_middleware(BodyLimit, limit=max_body_bytes)  # added first: inside the guard, which runs first
    app.add_middleware(Guard, api_key=api_key or None, admin_token=admin_token or None)
    metrics = engine.metrics
    tokenizer = copy.deepcopy(engine.tokenizer)  # the tokenizing thread's own (the engine thread uses another)
    chat = ChatPrompts(tokenizer, chat_template, engine.eos)  # a classifier's chat requests get its 400 first
    # an adapter's own template (None: it has none), read at its first chat request and kept until it is
    # unloaded, as its weights are; filled on the tokenizing thread, emptied by /v1/adapters/unload
    adapter_chats: dict[str, ChatPrompts | None] = {}
    adapter_chats_lock = threading.Lock()
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
        message = err.message.replace(root, "<adapter folder>")  # no server path out, and no name rewritten
        return error_response(err.status, message, err.kind, err.param, err.code)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        """Starlette's own errors (unknown path, wrong method, a body that is not parseable JSON) in OpenAI's
        shape too, so every error a client gets reads the same."""
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return error_response(err.status_code, str(err.detail), kind, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        """422 naming the fields at fault: the first ``MAX_REPORTED_ERRORS`` of them and how many more, so a
        body of many bad items cannot make a reply many times its own size."""
        errors = err.errors()
        if not_json := _not_json(request, errors):
            return error_response(400, not_json, "invalid_request_error", code="invalid_json")
        shown = errors[:MAX_REPORTED_ERRORS]
        problems = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"[:500]
                    for e in shown]
        if len(errors) > len(shown):
            problems.append(f"and {len(errors) - len(shown)} more")
        first = errors[0].get("loc", ()) if errors else ()
        param = ".".join(str(x) for x in first if x != "body") or None
        body = error_body("; ".join(problems), "invalid_request_error", param)
        body["detail"] = [{k: v for k, v in e.items() if k not in ("input", "ctx") or _small(v)} for e in shown]
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
        if body.name == base_name:
            raise ApiError(400, f"{base_name!r} is the base model's name: the base cannot be unloaded", param="name")
        try:
            engine.registry.folder(body.name)
            was_loaded = await asyncio.wrap_future(engine.unload(body.name))
        except Exception as err:
            raise api_error(err, param="name") from err
        with adapter_chats_lock:
            adapter_chats.pop(body.name, None)
        return {"name": body.name, "unloaded": bool(was_loaded)}

    async def generation(body: CompletionRequest | ChatRequest, request: Request, shape: CompletionShape | ChatShape,
                         encode: Callable[[str | None], tuple[list[list[int]], frozenset[int]]],
                         prompt_param: str = "prompt"):
        """One request's rows through the engine, answered whole or streamed in ``shape``: the one path for
        completions and chat completions. ``encode(adapter)`` runs on the tokenizing thread and gives the
        prompts and the token ids that also end a row (a chat template's end of turn)."""
        if engine.classifier:
            raise ApiError(400, f"{base_name} is a classification model: use /v1/classify", param="model")
        try:
            adapter = resolve(body.model)
            # before tokenizing: a request that can never fit is refused without holding up the others
            engine.check_size((len(body.prompts()) if isinstance(body, CompletionRequest) else 1) * body.n)
        except Exception as err:
            raise api_error(err) from err
        loop = asyncio.get_running_loop()
        try:
            prompts, stop_ids = await loop.run_in_executor(tokenizing, encode, adapter)
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
        return await generation(body, request, CompletionShape(), lambda _: (
            [_encode(tokenizer, p, engine.input_vocab) for p in body.prompts()], frozenset()))

    def chat_for(adapter: str | None) -> ChatPrompts:
        """The template the requested model was trained with: its adapter's ``chat_template.jinja`` (saved by
        ``lorakit train --chat-template``), else the server's. Runs on the tokenizing thread, which owns
        ``tokenizer``."""
        if adapter is None:
            return chat
        with adapter_chats_lock:
            if adapter in adapter_chats:
                return adapter_chats[adapter] or chat
        text = engine.registry.chat_template(adapter)  # a file that cannot be used: a 400, nothing kept
        try:
            prompts = None if text is None else ChatPrompts(tokenizer, None, engine.eos, template=text)
        except ValueError as err:
            raise AdapterRefused(f"adapter {adapter!r}: {CHAT_TEMPLATE_NAME}: {err}") from err
        with adapter_chats_lock:
            adapter_chats[adapter] = prompts
        return prompts or chat

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        try:
            messages = checked_messages(body.messages)
        except MessageError as err:
            raise api_error(err) from err

        def encode(adapter: str | None) -> tuple[list[list[int]], frozenset[int]]:
            rendering = chat_for(adapter)
            return [_encode(tokenizer, rendering.render(tokenizer, messages), engine.input_vocab)], rendering.stop_ids

        return await generation(body, request, ChatShape(), encode, prompt_param="messages")

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


def _not_json(request: Request, errors: list[dict[str, Any]]) -> str | None:
    """The 400 message for a body that is not a JSON object sent as JSON (None: it is one): FastAPI reports
    both as a validation error of field "body" or "0"."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and kind != "application/json" and not kind.endswith("+json"):
        return f"send the body as JSON with Content-Type: application/json (got {kind or 'no Content-Type'})"
    bad = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad is not None:
        where = bad.get("ctx", {}).get("error", "") if isinstance(bad.get("ctx"), dict) else ""
        return f"the body is not valid JSON{': ' + str(where)[:200] if where else ''}"
    return None


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
                yield f"data: {json.dumps(error_body(err.message, err.kind, err.param, err.code))}\n\n"
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
