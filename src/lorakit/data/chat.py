"""Chat conversations (OpenAI ``messages``) rendered with a tokenizer's chat template, and which tokens learn.

Why a module of its own: training, ``generate`` and the server's ``/v1/chat/completions`` must render a
conversation exactly the same way, and the loss mask must be right for any template, not only ones that
mark assistant text with ``{% generation %}`` (SmolLM2's does not).

The mask is found by rendering prefixes and diffing: the assistant turn ``i`` spans from the end of
``render(messages[:i], add_generation_prompt=True)`` to the end of ``render(messages[:i + 1])`` (where each
agrees with the whole conversation's rendering), and its content is located inside that span. The whole
conversation is tokenized once (so merges at turn boundaries are the real ones) and a token learns when its
characters overlap the span from the content's start through the first special token after the content (the
end-of-turn token, e.g. ``<|im_end|>``); a role header and whatever follows the end-of-turn token (a
newline, the next turn's BOS) do not. A template with no special token after the content learns the turn's
whole rendered tail (e.g. ``\n\n``), so the model still learns where a turn ends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..train.batching import IGNORE

ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE_NAME = "chat_template.jinja"  # saved beside an adapter trained with --chat-template
MAX_TEMPLATE_BYTES = 1 << 20

Message = dict[str, str]


class MessageError(ValueError):
    """A malformed conversation; ``key`` names the offending field (``messages[2].role``) so a file reader
    can add the file and line, and the server can answer 422 naming the field."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"key {key!r}: {message}")


class ChatTemplateError(ValueError):
    """The chat template refused a conversation; ``index`` says which, so a reader can name the line."""

    def __init__(self, index: int, error: Exception):
        self.index = index
        self.error = error
        super().__init__(f"the chat template cannot render conversation {index}: {error}")


def check_messages(messages: Any, *, require_assistant: bool = True, generation: bool = False,
                   key: str = "messages") -> list[Message]:
    """The conversation as ``[{"role", "content"}]`` (other keys dropped), or ``MessageError``.

    ``require_assistant``: training needs at least one assistant turn to learn from. ``generation``: the
    conversation must end with a user turn (what ``render_generation_prompt`` continues).
    """
    if not isinstance(messages, list):
        raise MessageError(key, f"expected a list of messages, got {type_name(messages)}")
    if not messages:
        raise MessageError(key, "empty conversation")
    checked: list[Message] = []
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(message, Mapping):
            raise MessageError(where, f"expected an object with role and content, got {type_name(message)}")
        for field in ("role", "content"):
            if field not in message:
                raise MessageError(f"{where}.{field}", f"missing (message keys: {', '.join(map(str, message))})")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise MessageError(f"{where}.role", f"role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise MessageError(f"{where}.content", f"content must be a string, got {type_name(content)}")
        if role == "assistant" and not content.strip():
            raise MessageError(f"{where}.content", "empty assistant content")
        checked.append({"role": role, "content": content})
    if require_assistant and not any(m["role"] == "assistant" for m in checked):
        raise MessageError(key, "conversation has no assistant turn (nothing to learn)")
    if generation and checked[-1]["role"] != "user":
        raise MessageError(f"{key}[{len(checked) - 1}].role",
                           f"a prompt for generation must end with a user turn, not {checked[-1]['role']!r}")
    return checked


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def load_chat_template(spec: str | os.PathLike[str] | None) -> str | None:
    """A template override: Jinja text as it is, or the contents of a file (``--chat-template FILE``)."""
    if spec is None:
        return None
    text = str(spec)
    if isinstance(spec, str) and ("{%" in text or "{{" in text):
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"chat template {text!r} is neither Jinja text nor an existing file")
    return path.read_text(encoding="utf-8")


def adapter_chat_template(folder: str | os.PathLike[str]) -> str | None:
    """The chat template saved beside an adapter (``chat_template.jinja``, written by ``lorakit train
    --chat-template``), or None; the text is the template itself, never a path to follow."""
    path = Path(folder) / CHAT_TEMPLATE_NAME
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        data = handle.read(MAX_TEMPLATE_BYTES + 1)  # never more, however the file grows meanwhile
    if len(data) > MAX_TEMPLATE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_TEMPLATE_BYTES} bytes, not a chat template")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    check_template_text(text, str(path))
    return text


def check_template_text(text: str, where: str) -> None:
    """A template given as text must look like one: a text without ``{{``/``{%`` renders no messages, and
    ``load_chat_template`` would take it for a file name."""
    if "{{" not in text and "{%" not in text:
        raise ValueError(f"{where}: not a chat template (no {{{{ }}}} or {{% %}} in it)")


def resolve_chat_template(tokenizer, override: str | os.PathLike[str] | None = None) -> str:
    """The template to render with: the override, else the tokenizer's own; an error if there is neither."""
    template = load_chat_template(override) or getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # some tokenizers keep named templates; "default" is the chat one
        template = template.get("default")
    if not template:
        raise ValueError(f"{type(tokenizer).__name__} has no chat template: pass chat_template= (a Jinja file "
                         "or text, --chat-template FILE) to train a base model on conversations")
    return template


def render_chat(tokenizer, messages: Sequence[Message], *, chat_template: str | None = None,
                add_generation_prompt: bool = False) -> str:
    """The conversation as the template writes it (special tokens as text, tokenized without adding any)."""
    template = resolve_chat_template(tokenizer, chat_template)
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def render_generation_prompt(tokenizer, messages: Any, *, chat_template: str | None = None) -> str:
    """A conversation ending with a user turn, rendered with the generation prompt (``generate``, serving)."""
    checked = check_messages(messages, require_assistant=False, generation=True)
    return render_chat(tokenizer, checked, chat_template=chat_template, add_generation_prompt=True)


def encode_generation_prompt(tokenizer, messages: Any, *, chat_template: str | None = None) -> list[int]:
    """Token ids of ``render_generation_prompt``: the template writes the special tokens, none are added."""
    text = render_generation_prompt(tokenizer, messages, chat_template=chat_template)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


_PROBES = ([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}],
           [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there"}])


def end_of_turn_id(tokenizer, chat_template: str | os.PathLike[str] | None = None) -> int | None:
    """The special token the template closes an assistant turn with (``<|im_end|>``), or None (a turn that
    ends in plain text). Found as the loss mask finds it: the first special token after the content, so
    generation stops exactly where training taught the model to end a turn."""
    template = resolve_chat_template(tokenizer, chat_template)
    special = special_token_ids(tokenizer)
    for probe in _PROBES:  # some templates insist on a system turn first
        try:
            text, [(_, content_end, _)] = assistant_spans(tokenizer, probe, template)
        except Exception:
            continue
        tail = tokenizer(text[content_end:], add_special_tokens=False)["input_ids"]
        return next((token for token in tail if token in special), None)
    return None


def special_token_ids(tokenizer) -> set[int]:
    """Ids that can end a turn: the special tokens and added tokens marked special (``<|im_end|>``)."""
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, token in decoder.items() if getattr(token, "special", False))
    return ids


Span = tuple[int, int, int]  # (start of the assistant content, end of the content, end of the rendered turn)


def assistant_spans(tokenizer, messages: Sequence[Message], template: str) -> tuple[str, list[Span]]:
    """The rendered conversation and, per assistant turn, its character span (see the module docstring)."""
    def render(part: Sequence[Message], generation: bool) -> str | None:
        try:
            return tokenizer.apply_chat_template(list(part), chat_template=template, tokenize=False,
                                                 add_generation_prompt=generation)
        except Exception:  # e.g. a template that reads messages[0] of an empty prefix
            return None

    text = render(messages, False)
    if text is None:  # render again, letting the template's own error through
        text = tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False)
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(messages[:i], True)
        start = 0 if head is None else _common_prefix(text, head)
        if head is None or start < len(head):  # no generation prompt (Llama-2 style) or not a prefix
            plain = render(messages[:i], False)
            start = max(start, 0 if plain is None else _common_prefix(text, plain))
        whole = text if i == len(messages) - 1 else render(messages[:i + 1], False)
        end = len(text) if whole is None else _common_prefix(text, whole)
        found = _locate(text, message["content"], start, end)
        if found is None:  # the turn is not where prefixes put it: learn its content alone, found in order
            found = _locate(text, message["content"], start, len(text)) or (start, start)
            end = found[1]
        spans.append((*found, max(end, found[1])))
    return text, spans


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix: exact when the template renders prefixes as prefixes of the whole, and
    still right up to the first difference when it does not (an EOS written only at the very end)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


def _locate(text: str, content: str, start: int, end: int) -> tuple[int, int] | None:
    """The content's characters inside its turn (templates may strip it; a role header written by the
    assistant turn itself, in templates without a generation prompt, is skipped)."""
    for needle in (content, content.strip()):
        at = text.find(needle, start, end)
        if needle and at >= 0:
            return at, at + len(needle)
    return None


def learned_mask(offsets: Sequence[tuple[int, int]], ids: Sequence[int], spans: Sequence[Span],
                 special: set[int]) -> list[bool]:
    """Per token: does it carry loss? Tokens overlapping a turn's span, through the first special token at
    or after the content's end."""
    mask = [False] * len(ids)
    j = 0
    for start, content_end, end in spans:
        while j < len(ids) and offsets[j][1] <= start:
            j += 1
        while j < len(ids) and offsets[j][0] < end:
            mask[j] = True
            j += 1
            if offsets[j - 1][0] >= content_end and ids[j - 1] in special:
                break
    return mask


def encode_chats(tokenizer, conversations: Sequence[Sequence[Message]], template: str
                 ) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` per conversation, labels -100 except on assistant contents and end-of-turn
    tokens. Rendered one by one (Jinja), tokenized in one batch with character offsets."""
    rendered = []
    for index, messages in enumerate(conversations):
        try:
            rendered.append(assistant_spans(tokenizer, messages, template))
        except Exception as err:  # the template's own raise_exception ("roles must alternate") or a Jinja error
            raise ChatTemplateError(index, err) from err
    texts = [text for text, _ in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)  # the wrapper's conversion is slow
        pairs = [(e.ids, e.offsets) for e in encodings]
    else:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        pairs = list(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True))
    special = special_token_ids(tokenizer)
    out = []
    for (ids, offsets), (_, spans) in zip(pairs, rendered, strict=True):
        mask = learned_mask(offsets, ids, spans, special)
        out.append((ids, [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]))
    return out
