"""The HTTP edge of the server: OpenAI-shaped errors, and two ASGI layers that act before a body is read.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so the official client raises
with the message; ``api_error`` maps what the engine, registry and chat code raise to a status. ``Guard``
checks bearer tokens (an API key for the model endpoints, an admin token for loading and unloading
adapters) and ``BodyLimit`` answers 413 to bodies over the limit, so a huge body is never parsed on the
event loop (which would hold up every other request, ``/health`` included).
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any

from fastapi.responses import JSONResponse

from ..data.chat import ChatTemplateError, MessageError
from .chat import NoChatTemplate
from .engine import QueueFull, RequestRejected
from .registry import AdapterConflict, AdapterNotFound, AdapterRefused

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
ADMIN_PATHS = ("/v1/adapters/",)  # loading and unloading: what every client then gets served
OPEN_PATHS = ("/health", "/metrics")  # probes and scrapers send no token


class ApiError(Exception):
    """An error answered in OpenAI's shape: HTTP ``status``, ``message``, ``kind`` (its ``type``), the request
    field at fault (``param``) and a machine-readable ``code``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can carry it: error bodies echo client input, which may hold NaN, infinities
    or lone surrogates (Python's JSON parser accepts all three), and must never fail to serialise."""
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
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
    return json_safe(str(value))


class SafeJSONResponse(JSONResponse):
    """A JSON response whose content is made strict JSON first (see ``json_safe``)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(json_safe(content), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                    code: str | None = None, headers: dict[str, str] | None = None) -> SafeJSONResponse:
    """``error_body`` as a response with ``status``."""
    return SafeJSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


def api_error(err: BaseException, param: str = "model") -> ApiError:
    """The HTTP status and message for an error raised while serving a request; ``param``: the request field
    that named the adapter."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, AdapterNotFound):
        return ApiError(404, str(err), code="model_not_found", param=getattr(err, "param", None) or param)
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


class Guard:
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
            response = error_response(401, message, code="invalid_admin_token" if admin else "invalid_api_key",
                                       headers={"WWW-Authenticate": 'Bearer realm="lorakit"'})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


CLIENT_CLOSED = 499  # the status nginx logs for a client that closed the connection before the answer


class BodyLimit:
    """413 for request bodies over ``limit`` bytes, decided before the body is parsed (ASGI middleware).

    A declared ``Content-Length`` over the limit is refused unread; a chunked body is read up to the
    limit and refused as soon as it passes it. Bodies within the limit are handed on as they came."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def _too_large(self) -> SafeJSONResponse:
        return error_response(413, f"request body is over this server's limit of {self.limit} bytes "
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
            if message["type"] != "http.request":
                # the client went away: an answer all the same (the server drops it), which the metrics count
                gone = error_response(CLIENT_CLOSED, "the client left before its body arrived")
                return await gone(scope, receive, send)
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
