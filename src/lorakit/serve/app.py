"""The HTTP API (FastAPI): OpenAI-compatible completions, classification, adapter loading, health, metrics.

Handlers only check and tokenize requests and wait for the engine (``engine.py``), which runs the model on
its own thread; they never block the event loop on a forward pass. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` so the official client raises with the message.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from .engine import Engine, GenerationRow, QueueFull
from .registry import AdapterNotFound, AdapterRefused
from .schemas import AdapterRequest, ClassifyRequest, CompletionRequest


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def _error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def api_error(err: BaseException) -> ApiError:
    """The HTTP status and message for an error raised while serving a request."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, AdapterNotFound):
        return ApiError(404, str(err), code="model_not_found", param="model")
    if isinstance(err, AdapterRefused):
        return ApiError(400, str(err), param="model")
    if isinstance(err, QueueFull):
        return ApiError(503, str(err), kind="server_overloaded")
    return ApiError(500, f"{type(err).__name__}: {err}", kind="server_error")


def _endpoint(path: str) -> str:
    """A bounded label for metrics (unknown paths must not create one series each)."""
    known = ("/v1/completions", "/v1/classify", "/v1/models", "/v1/adapters/load", "/v1/adapters/unload",
             "/health", "/metrics")
    return path if path in known else "other"


def create_app(engine: Engine, base_name: str) -> FastAPI:
    """The API over a running ``engine`` whose base model is called ``base_name`` in requests."""
    app = FastAPI(title="lorakit serve", version="0.1.0")
    metrics = engine.metrics
    tokenizer = copy.deepcopy(engine.tokenizer)  # the event loop's own (the engine thread uses another)
    metrics.gauge("lorakit_queue_rows", "Rows waiting for a batch slot.", engine.queued)
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

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(err.message, err.kind, err.param, err.code), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                    for e in err.errors()]
        first = err.errors()[0].get("loc", ()) if err.errors() else ()
        param = ".".join(str(x) for x in first if x != "body") or None
        body = _error_body("; ".join(problems), "invalid_request_error", param)
        body["detail"] = json.loads(json.dumps(err.errors(), default=str))
        return JSONResponse(body, status_code=422)

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
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

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
        try:
            if body.path is not None:
                engine.registry.register(body.name, body.path)
            else:
                engine.registry.folder(body.name)
            await asyncio.wrap_future(engine.load(body.name))
        except Exception as err:
            raise api_error(err) from err
        return {"name": body.name, "loaded": True}

    @app.post("/v1/adapters/unload")
    async def unload(body: AdapterRequest) -> dict[str, Any]:
        try:
            engine.registry.folder(body.name)
            was_loaded = await asyncio.wrap_future(engine.unload(body.name))
        except Exception as err:
            raise api_error(err) from err
        return {"name": body.name, "unloaded": bool(was_loaded)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        if engine.classifier:
            raise ApiError(400, f"{base_name} is a classification model: use /v1/classify", param="model")
        try:
            adapter = resolve(body.model)
        except Exception as err:
            raise api_error(err) from err
        prompts = [_encode(tokenizer, p) for p in body.prompts()]
        max_tokens = body.max_tokens or 16
        _check_lengths(prompts, max_tokens, engine.context_length)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, data: dict[str, Any]) -> None:  # engine thread -> event loop
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        rows = [GenerationRow(adapter, prompt, max_tokens, body.temperature, body.top_p, list(body.stop or []), emit,
                              index=i * body.n + c, seed=None if body.seed is None else body.seed + i * body.n + c)
                for i, prompt in enumerate(prompts) for c in range(body.n)]
        try:
            engine.generate(rows)
        except Exception as err:
            raise api_error(err) from err
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        usage = {"prompt_tokens": sum(len(p) for p in prompts) * body.n}
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(rows, events, reply, usage, include_usage), media_type="text/event-stream")
        return await _collect(rows, events, reply, usage)

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
        limit = engine.context_length or tokenizer.model_max_length
        encoded = tokenizer([x if isinstance(x, str) else x[0] for x in inputs],
                            [x[1] for x in inputs] if all(not isinstance(x, str) for x in inputs) else None,
                            truncation=True, max_length=limit) if _same_kind(inputs) else None
        if encoded is None:
            raise ApiError(400, "input mixes single texts and pairs; send one kind per request", param="input")
        try:
            probs, labels = await asyncio.wrap_future(engine.classify(adapter, encoded["input_ids"],
                                                                      encoded.get("token_type_ids")))
        except Exception as err:
            raise api_error(err) from err
        return _classification(body.model, probs, labels, engine)

    return app


def _same_kind(inputs: list[str | list[str]]) -> bool:
    return len({isinstance(x, str) for x in inputs}) == 1


def _encode(tokenizer, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, list):
        vocab = len(tokenizer)
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})",
                           param="prompt")
        ids = prompt
    else:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as lorakit's training and generate see it
    if not ids:
        raise ApiError(400, "prompt is empty: at least one token is needed", param="prompt")
    return ids


def _check_lengths(prompts: list[list[int]], max_tokens: int, context: int | None) -> None:
    if context is None:
        return
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise ApiError(400, f"prompt is {longest} tokens, longer than the model's context of {context} tokens "
                            "(which must also leave room for at least one new token)", param="prompt",
                       code="context_length_exceeded")
    if longest + max_tokens > context:
        raise ApiError(400, f"prompt ({longest} tokens) + max_tokens ({max_tokens}) = {longest + max_tokens} "
                            f"exceeds the model's context of {context} tokens; lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")


async def _collect(rows: list[GenerationRow], events: asyncio.Queue, reply: dict[str, Any],
                   usage: dict[str, int]) -> dict[str, Any]:
    texts = {r.index: [] for r in rows}
    finish: dict[int, str] = {}
    completion_tokens = 0
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
        for row in rows:  # a cancelled or failed request frees its batch slots
            row.cancelled = True
    choices = [{"text": "".join(texts[i]), "index": i, "logprobs": None, "finish_reason": finish[i]}
               for i in sorted(texts)]
    usage = {**usage, "completion_tokens": completion_tokens,
             "total_tokens": usage["prompt_tokens"] + completion_tokens}
    return {**reply, "object": "text_completion", "choices": choices, "usage": usage}


async def _stream(rows: list[GenerationRow], events: asyncio.Queue, reply: dict[str, Any], usage: dict[str, int],
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them: one chunk per piece of text, ``[DONE]`` at the end."""
    done, completion_tokens = 0, 0

    def chunk(index: int, text: str, finish_reason: str | None) -> str:
        body = {**reply, "object": "text_completion",
                "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}
        return f"data: {json.dumps(body)}\n\n"

    try:
        while done < len(rows):
            kind, data = await events.get()
            if kind == "text":
                yield chunk(data["index"], data["text"], None)
            elif kind == "done":
                done += 1
                completion_tokens += data["tokens"]
                yield chunk(data["index"], "", data["finish_reason"])
            else:
                err = api_error(data["error"])
                yield f"data: {json.dumps(_error_body(err.message, err.kind, err.param, err.code))}\n\n"
                return
        if include_usage:
            body = {**reply, "object": "text_completion", "choices": [],
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
            data.append({"index": i, "label": None, "score": float(row[0]), "scores": None})
            continue
        probs = row.softmax(-1)
        best = int(probs.argmax())
        data.append({"index": i, "label": labels[best], "score": float(probs[best]),
                     "scores": {label: float(p) for label, p in zip(labels, probs, strict=True)}})
    return {"object": "list", "model": model, "data": data}
