"""Request bodies of the HTTP API, checked by pydantic (FastAPI answers 422 naming the field and reason).

The completion and chat fields follow OpenAI's ``/v1/completions`` and ``/v1/chat/completions`` (their
sampling fields shared, checked once); fields OpenAI defines that this server does not implement are
accepted only at their neutral value, so a request never silently means something else.
Every request refuses what would otherwise fail deep inside with a 500: NaN and infinite numbers (JSON
as Python parses it allows ``NaN`` and ``Infinity``), text that is not valid unicode (a lone surrogate
such as ``"\ud800"`` cannot be tokenized or encoded), integers the engine cannot hold (seeds beyond 64
bits), and empty prompts or inputs. Types are strict, as OpenAI's API is: ``"5"`` is not the number 5
and ``"yes"`` is not ``true``. Lists that may hold several kinds of items (a prompt: texts, token ids or
lists of ids) are checked item by item before pydantic sees them, so a long mixed list costs one error,
not one per item and per alternative.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..data.common import invalid_unicode
from .registry import MAX_PATH_CHARS

MAX_STOPS = 4
MAX_STOP_CHARS = 1000  # stop strings are matched on the engine thread after every token: keep that cheap
MAX_INPUTS = 2048  # texts per /v1/classify request (OpenAI's limit for embeddings inputs)
DEFAULT_CHAT_MAX_TOKENS = 512  # a chat request without max_tokens: at most this, or what the context leaves


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits ``bool`` anywhere (``bool``, ``bool | None``, ``list[bool]``, ``Any``:
    a field checked by its own code, as chat ``messages`` are)."""
    return annotation is bool or annotation is Any or any(_accepts_bool(arg) for arg in typing.get_args(annotation))


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(_has_bool(v) for v in value)


def _item_kind(item: Any) -> str:
    if isinstance(item, str):
        return "text"
    if isinstance(item, int) and not isinstance(item, bool):
        return "token id"
    if isinstance(item, list):
        return "list"
    return "null" if item is None else type(item).__name__  # a JSON object is a dict, true a bool, ...


def _uniform_list(value: Any, field: str, allowed: tuple[str, ...], inner: str | None = None) -> Any:
    """``value`` unchanged if it is not a list, or a list whose items are all of one allowed kind (lists
    holding only ``inner`` items); else a ValueError naming the first item that differs. Runs before
    pydantic, which would otherwise report every item against every alternative of the field's type."""
    if not isinstance(value, list) or not value:
        return value
    first = _item_kind(value[0])
    for i, item in enumerate(value):
        kind = _item_kind(item)
        if kind not in allowed:
            kinds = " or ".join(f"{a}s" for a in allowed)
            raise ValueError(f"{field}[{i}] is a {kind}: a list here holds only {kinds}")
        if kind != first:
            raise ValueError(f"{field}[{i}] is a {kind} but {field}[0] is a {first}: one kind of item per list")
        if kind == "list" and inner is not None:
            bad = next((j for j, x in enumerate(item) if _item_kind(x) != inner), None)
            if bad is not None:
                raise ValueError(f"{field}[{i}][{bad}] is a {_item_kind(item[bad])}: a list here holds only "
                                 f"{inner}s")
    return value


class _Request(BaseModel):
    """What every request body shares: unknown fields, non-finite numbers and invalid unicode are 422s."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON ``true`` is not the number 1, though pydantic's lax mode would read it so."""
        if _has_bool(value) and not _accepts_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number or text, got a boolean")
        return value

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        bad = invalid_unicode(value)
        if bad is not None:
            shown = bad.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:40]
            raise ValueError(f"invalid unicode (a lone surrogate) in '{shown}': send UTF-8 text")
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI adds options now and then: unknown ones do nothing

    include_usage: bool = False


class _GenerationRequest(_Request):
    """The sampling fields ``/v1/completions`` and ``/v1/chat/completions`` share, checked one way for both."""

    model: str = Field(min_length=1, description="an adapter name, or the base model's name for no adapter")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=2**31 - 1, description="sample from the k most likely tokens only (an "
                       "extra field, as vLLM's); 0 or -1: all tokens")
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="any 64-bit integer, signed or not")
    user: str | None = None
    # OpenAI fields without an implementation here: only their neutral values are accepted
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    # field -> the values that mean "not used", the only ones accepted (checked per field, so a 422 names it)
    NEUTRAL: typing.ClassVar[dict[str, tuple[Any, ...]]] = {"presence_penalty": (0.0,), "frequency_penalty": (0.0,),
                                                             "logit_bias": (None, {})}

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        return max(value, 0)  # vLLM's -1 for "off" is lorakit's 0

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(value)}")
        return _uniform_list(value, "stop", ("text",))

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])  # at most MAX_STOPS: ``_stop_list``
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop sequences are at most {MAX_STOP_CHARS} characters, got "
                             f"{max(len(s) for s in stops)}")
        return stops

    @field_validator("*")
    @classmethod
    def _neutral_only(cls, value: Any, info: ValidationInfo) -> Any:
        accepted = cls.NEUTRAL.get(info.field_name)
        if accepted is not None and value not in accepted:  # the types are strict: 0 is never False here
            raise ValueError(f"{info.field_name}={value!r} is not supported by this server (accepted: "
                             f"{', '.join('null' if a is None else repr(a) for a in accepted)})")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def new_tokens(self, longest_prompt: int, context: int | None) -> int:
        """How many tokens each row may generate, before the context check."""
        raise NotImplementedError


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1, le=2**31 - 1)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    NEUTRAL = {**_GenerationRequest.NEUTRAL, "echo": (False,), "logprobs": (None,), "suffix": (None, ""),
               "best_of": (None, 1)}

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_items(cls, value: Any) -> Any:
        return _uniform_list(value, "prompt", ("text", "token id", "list"), inner="token id")

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value: str | list) -> str | list:
        if isinstance(value, list) and not value:
            raise ValueError("prompt is an empty list: send a text, a list of texts or token ids")
        return value

    def new_tokens(self, longest_prompt: int, context: int | None) -> int:
        return self.max_tokens or 16  # OpenAI's default for completions

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: texts, or token id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ChatRequest(_GenerationRequest):
    """OpenAI's ``/v1/chat/completions``. ``messages`` is checked by ``lorakit.data.chat.check_messages`` (the
    check training files get), so its 422s name the field (``messages[2].role``), not pydantic's loc."""

    messages: Any
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="OpenAI's newer name for "
                                              "max_tokens; wins when both are given")
    logprobs: bool | None = None
    top_logprobs: int | None = None

    NEUTRAL = {**_GenerationRequest.NEUTRAL, "logprobs": (None, False), "top_logprobs": (None,)}

    def new_tokens(self, longest_prompt: int, context: int | None) -> int:
        """The limit asked for, else as much as the context leaves, at most ``DEFAULT_CHAT_MAX_TOKENS`` (the
        KV cache is reserved for the whole limit up front, so "unlimited" must not mean the context)."""
        asked = self.max_completion_tokens or self.max_tokens
        if asked:
            return asked
        room = DEFAULT_CHAT_MAX_TOKENS if context is None else context - longest_prompt
        return max(1, min(DEFAULT_CHAT_MAX_TOKENS, room))


Pair = Annotated[list[str], Field(min_length=2, max_length=2)]


class ClassifyRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str | Pair] = Field(description='a text, or a list of texts and ["text", "text"] pairs')

    @field_validator("input", mode="before")
    @classmethod
    def _input_items(cls, value: Any) -> Any:
        """At most ``MAX_INPUTS`` items in a list (a single text of any length is truncated to the context, as
        each text of a list is); texts and pairs may mix, and anything else is refused at its index."""
        if isinstance(value, list):
            if len(value) > MAX_INPUTS:
                raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(value)}")
            for i, item in enumerate(value):
                if not isinstance(item, (str, list)):
                    raise ValueError(f"input[{i}] is a {_item_kind(item)}: send texts or [text, text] pairs")
        return value

    @field_validator("input")
    @classmethod
    def _no_empty_text(cls, value: str | list[str | list[str]]) -> str | list[str | list[str]]:
        """An empty text gives no tokens with some tokenizers: nothing to classify."""
        items = [value] if isinstance(value, str) else value
        for i, item in enumerate(items):
            if any(not text for text in ([item] if isinstance(item, str) else item)):
                raise ValueError("input is an empty text" if isinstance(value, str) else f"input[{i}] has an empty "
                                 "text")
        return value

    def inputs(self) -> list[str | list[str]]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class AdapterRequest(_Request):
    name: str = Field(min_length=1)
    path: str | None = Field(None, min_length=1, max_length=MAX_PATH_CHARS,
                             description="folder relative to the adapter folder (default: the name)")


class UnloadRequest(_Request):
    """Only a name: a ``path`` would suggest a folder is unloaded, while names are what is loaded."""

    name: str = Field(min_length=1)
