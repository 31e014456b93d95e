"""``/v1/chat/completions``: a conversation rendered with the base's chat template, and replies in OpenAI's
chat shape.

Why apart from ``app.py``: generation itself is the completions path (same engine rows, sampling, seeds, stop
strings, limits and errors); only two things differ, and they live here. The prompt is the conversation
rendered by ``lorakit.data.chat`` (the code that renders training conversations, so a served adapter sees
its turns exactly as it learned them), and each row also stops at the template's end-of-turn token
(``<|im_end|>``), which the model learned to write at the end of a turn. Replies are ``chat.completion``
objects, or ``chat.completion.chunk`` events whose ``delta`` carries the role first and the text after.
"""

from __future__ import annotations

import os
from typing import Any

from jinja2 import TemplateSyntaxError

from ..data.chat import (
    ChatTemplateError,
    check_messages,
    check_template_text,
    end_of_turn_id,
    render_chat,
    render_generation_prompt,
    resolve_chat_template,
)


class NoChatTemplate(ValueError):
    """The served base has no chat template and the server was started without ``--chat-template``."""


class ChatPrompts:
    """A chat template (the served base's, resolved once at start-up, or one an adapter was trained with) and
    the token ids that end a turn."""

    def __init__(self, tokenizer, override: str | os.PathLike[str] | None, eos: set[int], *,
                 template: str | None = None) -> None:
        """``override``: ``--chat-template`` (Jinja text or a file; a missing file fails here, at start-up).
        ``template``: Jinja text used as it is (an adapter's ``chat_template.jinja``), never read as a path."""
        if template is not None:
            check_template_text(template, "the chat template")  # text, never a file name to follow
        try:
            self.template: str | None = template if template is not None else resolve_chat_template(tokenizer,
                                                                                                     override)
        except ValueError:  # no template at all: the server runs, chat requests get a 400 saying why
            self.template = None
        if self.template is not None:
            try:
                render_chat(tokenizer, [{"role": "user", "content": "Hello"}], chat_template=self.template)
            except TemplateSyntaxError as err:  # not a template at all: fail at start-up, not on every request
                raise ValueError(f"the chat template is not valid Jinja: {err}") from err
            except Exception:  # a template may refuse this conversation (one that wants a system turn first)
                pass
        end = None if self.template is None else end_of_turn_id(tokenizer, self.template)
        self.stop_ids = frozenset() if end is None or end in eos else frozenset({end})

    def render(self, tokenizer, messages: list[dict[str, str]]) -> str:
        """The generation prompt for checked ``messages``; ``ChatTemplateError`` when the template refuses
        them (its own ``raise_exception``, e.g. roles that must alternate)."""
        if self.template is None:
            raise NoChatTemplate("the served model has no chat template, so /v1/chat/completions cannot render "
                                 "messages: restart lorakit serve with --chat-template FILE (a Jinja chat "
                                 "template), or use /v1/completions with a prompt")
        try:
            return render_generation_prompt(tokenizer, messages, chat_template=self.template)
        except Exception as err:
            raise ChatTemplateError(0, err) from err


def checked_messages(messages: Any) -> list[dict[str, str]]:
    """A conversation to continue: roles, contents and a final user turn checked as for training files;
    ``MessageError`` names the field (``messages[2].role``)."""
    return check_messages(messages, require_assistant=False, generation=True)


class ChatShape:
    """Choices as OpenAI's chat endpoint writes them (``app.CompletionShape`` is the completions one)."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

    @staticmethod
    def opening(index: int) -> dict[str, Any] | None:
        """A stream's first chunk for a choice: the role, as OpenAI sends it."""
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    @staticmethod
    def piece(index: int, text: str) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}

    @staticmethod
    def ending(index: int, finish_reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
