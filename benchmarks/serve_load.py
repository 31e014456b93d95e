"""Load test of ``lorakit serve``: many clients, many adapters, adapters loaded and unloaded meanwhile.

Starts the real server (``python -m lorakit serve``) as a subprocess on
127.0.0.1 with SmolLM2-135M and --adapters random r=4/r=8 q,v adapters (non-zero B), then:

1. sequential: one client, --sequential requests one at a time (requests/s baseline);
2. concurrent: --clients client threads (official ``openai`` client) send --requests completions spread
   round-robin over the base and the first --adapters - 1 adapters, one in four streamed (SSE); after a
   third of the requests the last adapter is loaded (``POST /v1/adapters/load``) and joins the rotation,
   after two thirds the first adapter is loaded (so that it is in memory) and unloaded
   (``POST /v1/adapters/unload``; its later requests read it again). Every request is greedy with
   --max-tokens new tokens; a failed load or unload counts as a failed request.

Reports failed requests (the goal is zero), p50/p99 latency, requests/s of both phases and their ratio
(goal: at least 3x), and the server's own /metrics counters. With ``--quantize none int8 ...`` the whole
test runs once per mode (``lorakit serve --quantize``, the same adapters and requests), one after the
other, and each quantized server's concurrent throughput is also given as a ratio to the fp32 one's.

    .venv/bin/python benchmarks/serve_load.py --clients 16 --requests 500 --adapters 6 --max-loaded 4
    .venv/bin/python benchmarks/serve_load.py --requests 160 --sequential 16 --quantize none int8 bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import torch

import lorakit
from lorakit.hardware import describe
from lorakit.models import load_model
from lorakit.quant import QUANT_MODES

FOODS = ["Chinese", "English", "French", "Indian", "Italian", "Japanese", "fast food"]
AREAS = ["city centre", "riverside"]


def prompts(count: int) -> list[str]:
    """E2E-style meaning representations (synthetic, varied lengths)."""
    out = []
    for i in range(count):
        parts = [f"name : The Place {i % 37}", f"food : {FOODS[i % len(FOODS)]}"]
        if i % 2:
            parts.append(f"area : {AREAS[i % 2]}")
        if i % 3 == 0:
            parts.append(f"customer rating : {['low', 'average', 'high'][i % 3]}")
        out.append(" | ".join(parts) + "\n")
    return out


def make_adapters(folder: Path, count: int, model_name: str) -> list[str]:
    torch.manual_seed(0)
    model, _ = load_model(model_name)
    names = []
    for i in range(count):
        name = f"task{i}"
        rank = 4 if i % 2 == 0 else 8
        lorakit.add_adapter(model, lorakit.LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False), name)
        lorakit.save_adapter(model, folder / name, name)
        lorakit.delete_adapter(model, name)
        names.append(name)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--sequential", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--max-loaded", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--quantize", nargs="+", default=["none"], choices=QUANT_MODES,
                        help="serve the base in each of these modes in turn (default: none, i.e. fp32)")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"machine: {describe()}", flush=True)
    if args.adapters < 5:
        raise SystemExit("--adapters must be at least 5 (4 served from the start, one loaded during the run)")

    folder = Path(tempfile.mkdtemp(prefix="serve-load-"))
    names = make_adapters(folder, args.adapters, args.model)
    results = {}
    for mode in args.quantize:
        print(f"--- lorakit serve --quantize {mode}", flush=True)
        results[mode] = serve_and_run(args, folder, names, mode)
        result = results[mode]
        print(json.dumps({k: v for k, v in result.items() if k != "latencies_s"}, indent=2))
        print(f"ratio ({mode}): concurrent / one-at-a-time throughput {result['throughput_ratio']:.2f}x, "
              f"{result['failed']} failed of {result['requests']}", flush=True)
    fp32 = results.get("none")
    for mode, result in results.items():
        if fp32 is not None and mode != "none":
            concurrent = result["concurrent_requests_per_s"] / fp32["concurrent_requests_per_s"]
            one = result["sequential_requests_per_s"] / fp32["sequential_requests_per_s"]
            print(f"ratio: served throughput --quantize {mode} / fp32 {concurrent:.2f}x (one at a time: {one:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results if len(results) > 1 else results[args.quantize[0]], indent=2))


def serve_and_run(args: argparse.Namespace, folder: Path, names: list[str], mode: str) -> dict:
    """Start ``lorakit serve`` over ``folder`` with ``--quantize mode``, run the test, stop the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lorakit", "serve", "--model", args.model, "--adapters", str(folder),
               "--max-loaded", str(args.max_loaded), "--max-batch", str(args.clients), "--port", str(port),
               "--quantize", mode]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        result = run(url, args, names)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # never leave a server behind to skew the next measurement
            server.kill()
            server.wait()
            raise SystemExit("the server did not stop within 60 s of SIGTERM; killed") from None
    return {"quantize": mode, **result}


def run(url: str, args: argparse.Namespace, names: list[str]) -> dict:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    texts = prompts(args.requests + args.sequential)
    base = args.model
    # warm-up: every starting adapter once (first reads, first gathers)
    for model in [base, *names[:-1]]:
        client.completions.create(model=model, prompt=texts[0], max_tokens=2, temperature=0)

    start = time.perf_counter()
    for i in range(args.sequential):
        client.completions.create(model=[base, *names[:4]][i % 5], prompt=texts[i], max_tokens=args.max_tokens,
                                  temperature=0)
    sequential_s = time.perf_counter() - start

    rotation = [base, *names[:-1]]
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    latencies: list[float] = []
    failures: list[str] = []
    events: list[str] = []

    def one(i: int) -> None:
        with lock:
            pool = list(rotation)
        model = pool[i % len(pool)]
        prompt = texts[args.sequential + i]
        t0 = time.perf_counter()
        try:
            if i % 4 == 3:
                text = "".join(c.choices[0].text for c in client.completions.create(
                    model=model, prompt=prompt, max_tokens=args.max_tokens, temperature=0, stream=True))
            else:
                text = client.completions.create(model=model, prompt=prompt, max_tokens=args.max_tokens,
                                                 temperature=0).choices[0].text
            if not text:
                raise RuntimeError("empty completion")
        except Exception as err:  # counted and reported
            with lock:
                failures.append(f"{model}: {type(err).__name__}: {err}")
            return
        with lock:
            latencies.append(time.perf_counter() - t0)

    def worker() -> None:
        while True:
            with lock:
                i = state["next"]
                if i >= args.requests:
                    return
                state["next"] += 1
            one(i)
            with lock:
                state["done"] += 1
                done = state["done"]
            if done == args.requests // 3:
                event(done, "load", names[-1])
                with lock:
                    rotation.append(names[-1])
            if done == 2 * args.requests // 3:  # make sure it is in memory, so the unload has something to do
                event(done, "load", names[0])
                event(done, "unload", names[0])

    def event(done: int, action: str, name: str) -> None:
        """Load or unload an adapter mid-run; an error or a non-200 answer counts as a failed request."""
        try:
            r = httpx.post(url + f"/v1/adapters/{action}", json={"name": name}, timeout=120)
            answer, ok = f"{r.status_code} {r.text}", r.status_code == 200
        except httpx.HTTPError as err:
            answer, ok = f"{type(err).__name__}: {err}", False
        with lock:
            events.append(f"after {done} requests: {action} {name} -> {answer}")
            if not ok:
                failures.append(f"{action} {name}: {answer}")

    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    concurrent_s = time.perf_counter() - start
    metrics = httpx.get(url + "/metrics").text
    counters = [line for line in metrics.splitlines() if line.startswith(("lorakit_requests_total",
                                                                          "lorakit_adapter_", "lorakit_generated"))]
    sequential_rps = args.sequential / sequential_s
    concurrent_rps = args.requests / concurrent_s
    return {
        "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
        "adapters": names, "max_loaded": args.max_loaded, "failed": len(failures), "failures": failures[:10],
        "events": events,
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p99_s": percentile(latencies, 99) if latencies else None,
        "concurrent_s": concurrent_s, "concurrent_requests_per_s": concurrent_rps,
        "sequential_requests": args.sequential, "sequential_s": sequential_s,
        "sequential_requests_per_s": sequential_rps, "throughput_ratio": concurrent_rps / sequential_rps,
        "server_metrics": counters, "torch_threads": torch.get_num_threads(), "latencies_s": latencies,
    }


if __name__ == "__main__":
    main()
