"""A user's own data file, from disk to token ids: read, detect the format, validate, tokenize, cache.

Why: training on one's own JSONL/CSV/Parquet file must not need Python, and a mistake in row 48,113 must
be an error naming the file, the line and the key before a run starts, not a crash an hour in.

Formats (detected from the keys, or forced with ``format=``); ``columns=`` maps other names onto these keys
(``{"prompt": "question"}`` or the command-line string ``prompt=question,completion=answer``):

- ``text``: plain language modelling, loss on every token and the EOS appended;
- ``prompt-completion``: ``prompt`` + ``completion``, loss on the completion and its EOS only, joined
  exactly as the built-in data-to-text tasks join them (``lorakit.train.batching.tokenize_pairs``);
- ``messages``: OpenAI chat (``system``/``user``/``assistant``), rendered with the chat template, loss on
  every assistant content and its end-of-turn token (see ``lorakit.data.chat``);
- ``classification``: ``text`` (+ ``text_pair``) + ``label``; string or integer labels are classes
  (``id2label`` sorted), float labels mean regression (one output).

JSON and JSONL are parsed here, line by line, so errors name the line and nothing is silently changed
(``datasets`` unifies a column's schema: a key missing in one row becomes null, an int becomes a float);
CSV/TSV, Parquet and hub datasets are read through Hugging Face ``datasets`` (CSV cells as strings, so
``007`` stays text; TSV unquoted, like GLUE's files). Tokenized samples are cached as safetensors, keyed
by the files' content, the tokenizer and every setting, so a rerun or resume does not tokenize again.

Layout: ``formats`` (formats, keys, column mapping, detection), ``tables`` (reading files), ``load``
(validated ``UserData``, labels, prompts and references), ``encode`` (token ids, truncation),
``prepare`` (``prepare_data``) and ``cache`` (the safetensors cache). Everything public is re-exported here.
"""

from __future__ import annotations

from .cache import CACHE_VERSION, tokenizer_fingerprint
from .encode import (
    TRUNCATION,
    PreparedData,
    SplitStats,
    Truncation,
    encode_classification,
    encode_conversations,
    encode_pairs,
    encode_texts,
    token_ids,
)
from .formats import (
    FORMATS,
    KEYS,
    OPTIONAL_KEYS,
    UserDataError,
    detect_format,
    formats_help,
    normalize_format,
    parse_columns,
)
from .load import LabelSet, UserData, generation_prompts, load_user_data, references
from .prepare import prepare_data, split_indices

__all__ = [
    "CACHE_VERSION",
    "FORMATS",
    "KEYS",
    "OPTIONAL_KEYS",
    "TRUNCATION",
    "LabelSet",
    "PreparedData",
    "SplitStats",
    "Truncation",
    "UserData",
    "UserDataError",
    "detect_format",
    "encode_classification",
    "encode_conversations",
    "encode_pairs",
    "encode_texts",
    "formats_help",
    "generation_prompts",
    "load_user_data",
    "normalize_format",
    "parse_columns",
    "prepare_data",
    "references",
    "split_indices",
    "token_ids",
    "tokenizer_fingerprint",
]
