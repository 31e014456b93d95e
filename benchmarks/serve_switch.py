"""Loading an adapter and switching between adapters: the serving engine against PEFT.

Model: SmolLM2-135M. Adapters: r=--rank LoRAs (non-zero B) on q,v and on all seven projections, saved to a
temporary folder and read once before timing (so their files are in the page cache).

- lorakit load+switch: ``AdapterRegistry.read`` (safetensors, checks) + ``AdapterPool.attach`` (checked
  against the model and copied into the routing banks; no modules are created) + routing a 1-row batch to
  it and gathering its factors for every layer (``RowRouting.prepare``, which the first forward pass
  would otherwise do layer by layer); the three parts are timed apart and summed per repeat;
- lorakit switch: routing the batch to another adapter already in memory, with the same gathering (and
  ``switch_cached``: to a batch composition seen among the last four, whose gathered factors are kept);
- a check that nothing was left for the forward pass: the forward right after a switch against the same
  forward again (medians of both printed);
- PEFT: ``load_adapter`` + ``set_adapter``, and ``set_adapter`` between loaded adapters.

Medians of --repeats; one run, one machine:

    .venv/bin/python benchmarks/serve_switch.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import lorakit
from lorakit.hardware import describe
from lorakit.models import load_model
from lorakit.serve.pool import AdapterPool
from lorakit.serve.registry import AdapterRegistry

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _time_two_forwards(model, ids, first: list[float], second: list[float]) -> None:
    """Time a forward right after a switch and the same forward again: equal when the switch did it all."""
    for times in (first, second):
        start = time.perf_counter()
        model(input_ids=ids)
        times.append(time.perf_counter() - start)


def _ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"machine: {describe()}", flush=True)
    from peft import PeftModel

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="serve-switch-"))
    maker, _ = load_model(args.model)
    for kind, targets in (("qv", None), ("all7", ALL7)):
        for i in range(4):
            name = f"{kind}{i}"
            config = lorakit.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets,
                                        init_lora_weights=False)
            lorakit.add_adapter(maker, config, name)
            lorakit.save_adapter(maker, folder / name, name)
            lorakit.delete_adapter(maker, name)
    del maker
    for path in folder.glob("*/*"):
        path.read_bytes()  # page cache

    model, _ = load_model(args.model)
    model.eval()
    registry = AdapterRegistry(folder)
    pool = AdapterPool(model, max_loaded=4)
    ids = torch.randint(0, 1000, (1, 1))
    results: dict[str, float] = {}
    with torch.inference_mode():
        for kind in ("qv", "all7"):
            # load + switch: read from disk, attach (evicting), route a 1-row batch and gather its factors
            parts: dict[str, list[float]] = {"read": [], "attach": [], "route": [], "total": []}
            forward_new, forward_same = [], []
            for r in range(args.repeats):
                for name in list(pool.loaded):
                    pool.detach(name)
                name = f"{kind}{r % 4}"
                t0 = time.perf_counter()
                adapter = registry.read(name)
                t1 = time.perf_counter()
                pool.attach(adapter)
                t2 = time.perf_counter()
                pool.routing.set_rows([pool.routed_name(name)])
                pool.routing.prepare()
                t3 = time.perf_counter()
                for key, value in (("read", t1 - t0), ("attach", t2 - t1), ("route", t3 - t2), ("total", t3 - t0)):
                    parts[key].append(value)
                _time_two_forwards(model, ids, forward_new, forward_same)
            for key, values in parts.items():
                results[f"lorakit_load_switch_{kind}_{key}_ms"] = _ms(values)
            results[f"forward_after_load_{kind}_ms"] = _ms(forward_new)
            results[f"forward_again_{kind}_ms"] = _ms(forward_same)
            # switch between loaded adapters
            for i in range(4):
                pool.attach(registry.read(f"{kind}{i}"))
            for keep, label in ((1, "switch"), (4, "switch_cached")):  # 1: every switch gathers anew
                pool.routing.keep_compositions = keep
                switch_s, forward_new, forward_same = [], [], []
                for r in range(args.repeats):
                    name = f"{kind}{r % 4}"
                    start = time.perf_counter()
                    pool.routing.set_rows([pool.routed_name(name)])
                    pool.routing.prepare()
                    switch_s.append(time.perf_counter() - start)
                    _time_two_forwards(model, ids, forward_new, forward_same)
                results[f"lorakit_{label}_{kind}_ms"] = _ms(switch_s)
            results[f"forward_after_switch_{kind}_ms"] = _ms(forward_new)
            results[f"forward_again_after_switch_{kind}_ms"] = _ms(forward_same)
            for name in list(pool.loaded):
                pool.detach(name)

    lorakit.set_row_routing(model, None)
    del model, pool
    peft_base, _ = load_model(args.model)
    for kind in ("qv", "all7"):
        peft_model = PeftModel.from_pretrained(peft_base, str(folder / f"{kind}0"), adapter_name="first")
        load_s = []
        for r in range(args.repeats):
            name = f"x{r}"
            start = time.perf_counter()
            peft_model.load_adapter(str(folder / f"{kind}{r % 4}"), adapter_name=name)
            peft_model.set_adapter(name)
            load_s.append(time.perf_counter() - start)
            peft_model.set_adapter("first")
            peft_model.delete_adapter(name)
        for i in range(1, 4):
            peft_model.load_adapter(str(folder / f"{kind}{i}"), adapter_name=f"{kind}{i}")
        switch_s = []
        for r in range(args.repeats):
            start = time.perf_counter()
            peft_model.set_adapter(f"{kind}{1 + r % 3}")
            switch_s.append(time.perf_counter() - start)
        results[f"peft_load_set_adapter_{kind}_ms"] = _ms(load_s)
        results[f"peft_set_adapter_{kind}_ms"] = _ms(switch_s)
        peft_base = peft_model.unload()
    for key, value in results.items():
        print(f"{key:52} {value:9.3f} ms")
    for kind in ("qv", "all7"):  # the side-by-side ratios (below 1: lorakit faster)
        load = results[f"lorakit_load_switch_{kind}_total_ms"] / results[f"peft_load_set_adapter_{kind}_ms"]
        switch = results[f"lorakit_switch_{kind}_ms"] / results[f"peft_set_adapter_{kind}_ms"]
        print(f"ratio {kind}: load+switch lorakit/PEFT {load:.3f}x, switch lorakit/PEFT {switch:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rank": args.rank, "repeats": args.repeats, "torch": torch.__version__,
                                               "threads": torch.get_num_threads(), **results}, indent=2))


if __name__ == "__main__":
    main()
