"""The library end to end on a real model, offline: wrap SmolLM2-135M with LoRA, fine-tune it for a few
minutes on E2E NLG, save the adapter, reload it into a fresh base, merge it, and generate.

Each step checks what it claims (reloaded and merged outputs equal the trained model's) and says so.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import lora
from .adapters import load_adapter, save_adapter
from .data import load_e2e, training_pairs
from .models import load_model
from .report import parameter_report


def _batch(tokenizer, pairs: list[tuple[str, str]], max_len: int = 128) -> dict[str, torch.Tensor]:
    """Prompt + target + EOS, right-padded; loss only on target tokens (labels -100 elsewhere)."""
    rows, labels = [], []
    for source, target in pairs:
        prompt = tokenizer(f"{source}\n", add_special_tokens=False)["input_ids"]
        answer = tokenizer(f"{target}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + answer)[:max_len]
        rows.append(ids)
        labels.append(([-100] * len(prompt) + answer)[:max_len])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


def run_demo(model_name: str = "smollm2-135m", steps: int = 60, batch_size: int = 8, lr: float = 1e-3,
             rank: int = 8, output: str | Path = "runs/demo", data: str | None = None, seed: int = 0,
             samples: int = 3) -> dict[str, float]:
    """Fine-tune, save, reload, merge, generate; returns the measured numbers."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_name)
    print(f"loaded {model_name} in {time.perf_counter() - t0:.1f} s")

    train = training_pairs(load_e2e("train", data))
    dev = load_e2e("dev", data)
    rng.shuffle(train)

    lora.add_adapter(model, lora.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05), name="e2e")
    print(parameter_report(model))

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10) * (1 - s / steps))
    tokens, start, losses = 0, time.perf_counter(), []
    bar = tqdm(range(steps), desc="LoRA fine-tune on E2E", unit="step")
    for step in bar:
        batch = _batch(tokenizer, train[step * batch_size:(step + 1) * batch_size])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    model.eval()
    train_s = time.perf_counter() - start

    folder = save_adapter(model, Path(output) / "adapter", name="e2e")
    print(f"saved adapter to {folder} ({sum(p.stat().st_size for p in folder.iterdir()) / 1024:.0f} KB)")

    probe = _batch(tokenizer, [(ex.source, ex.references[0]) for ex in dev[:4]])
    probe = {k: v for k, v in probe.items() if k != "labels"}
    with torch.no_grad():
        trained_logits = model(**probe).logits
    fresh, _ = load_model(model_name)
    base_weights = lora.base_state_dict(fresh)
    load_adapter(fresh, folder, name="e2e")
    with torch.no_grad():
        reload_diff = (fresh(**probe).logits - trained_logits).abs().max().item()
        lora.merge_adapters(fresh)
        merge_diff = (fresh(**probe).logits - trained_logits).abs().max().item()
    print(f"reloaded adapter: max |logit diff| vs trained model = {reload_diff:.2e}")
    print(f"merged adapter:   max |logit diff| vs trained model = {merge_diff:.2e}")

    tokenizer.padding_side = "left"
    print("\ngreedy generations on E2E dev (merged model):")
    for ex in dev[:samples]:
        inputs = tokenizer(f"{ex.source}\n", return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = fresh.generate(**inputs, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        print(f"  input:     {ex.source}\n  generated: {text}\n  reference: {ex.references[0]}\n")
    lora.unmerge_adapters(fresh)
    unmerge_diff = lora.max_weight_change(fresh, base_weights)
    print(f"unmerged: max |weight diff| vs base = {unmerge_diff:.2e}")
    first, last = sum(losses[:5]) / len(losses[:5]), sum(losses[-5:]) / len(losses[-5:])
    print(f"loss {first:.3f} -> {last:.3f} over {steps} steps in {train_s:.0f} s "
          f"({tokens / train_s:.0f} tokens/s incl. padding)")
    return {"loss_first": first, "loss_last": last, "reload_diff": reload_diff, "merge_diff": merge_diff,
            "unmerge_diff": unmerge_diff, "train_seconds": train_s}
