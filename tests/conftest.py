"""Small randomly initialised models of each architecture lorakit targets (coverage, not quality)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
# one thread per pytest-xdist worker (``make test`` runs one worker per core), all cores otherwise
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

VOCAB = 96
REPO = Path(__file__).resolve().parents[1]


def tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tiny_roberta(num_labels: int = 3) -> RobertaForSequenceClassification:
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, max_position_embeddings=72, num_labels=num_labels,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return RobertaForSequenceClassification(config).eval()


def tiny_bert(num_labels: int = 2) -> BertForSequenceClassification:
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


FACTORIES = {"gpt2": tiny_gpt2, "roberta": tiny_roberta, "llama": tiny_llama, "bert": tiny_bert}


def make(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FACTORIES[arch]()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def shared_data_dir() -> Path | None:
    """The read-only datasets beside the checkout (or LORAKIT_DATA), if present."""
    path = Path(os.environ.get("LORAKIT_DATA", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None
