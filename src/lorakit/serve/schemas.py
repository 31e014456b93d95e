"""Request bodies of the HTTP API, checked by pydantic (FastAPI answers 422 naming the field and reason).

The completion fields follow OpenAI's ``/v1/completions``; fields it defines that this server does not
implement are accepted only at their neutral value, so a request never silently means something else.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOPS = 4


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="an adapter name, or the base model's name for no adapter")
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    seed: int | None = None
    user: str | None = None
    # OpenAI fields without an implementation here: only their neutral values are accepted
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        for name, neutral in (("echo", False), ("logprobs", None), ("presence_penalty", 0.0),
                              ("frequency_penalty", 0.0), ("suffix", None)):
            if getattr(self, name) != neutral:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported by this server")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: texts, or token id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


Pair = Annotated[list[str], Field(min_length=2, max_length=2)]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[str | Pair] = Field(description='a text, or a list of texts and ["text", "text"] pairs')

    def inputs(self) -> list[str | list[str]]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    path: str | None = Field(None, description="folder relative to the adapter folder (default: the name)")
