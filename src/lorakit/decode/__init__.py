"""Decoding for causal LMs with or without LoRA adapters: greedy, beam search and sampling, batched, with a
KV cache (``lorakit generate`` on the command line)."""

from .api import eos_ids, generate, generate_hypotheses, generate_ids, length_batches
from .config import E2E_PAPER, PRESETS, STRATEGIES, DecodeConfig, preset
from .runner import CausalLM
from .search import beam_hypotheses, beam_search, stream_decode

__all__ = ["E2E_PAPER", "PRESETS", "STRATEGIES", "CausalLM", "DecodeConfig", "beam_hypotheses", "beam_search",
           "eos_ids", "generate", "generate_hypotheses", "generate_ids", "length_batches", "preset", "stream_decode"]
