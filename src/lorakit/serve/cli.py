"""``lorakit serve``: one base model, every adapter in a folder, an OpenAI-compatible HTTP API.

Wire it in with ``add_serve_parser(subparsers)``; the handler is ``args.func``. Requests name an adapter
(a sub-folder of --adapters) or the base model (its --model name) in the ``model`` field.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from ..quant import add_quantize_flag

MIB = 1024 * 1024


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "serve", help="serve many LoRA adapters over one base model (OpenAI-compatible HTTP API)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="short name (smollm2-135m, minilm-l6, ...), model folder or hub id")
    p.add_argument("--adapters", required=True, metavar="FOLDER",
                   help="folder whose sub-folders are adapters (PEFT format); read when first requested")
    p.add_argument("--max-loaded", type=int, default=8, metavar="N",
                   help="adapters kept in memory at once; the least recently used leaves first (default: 8)")
    p.add_argument("--max-batch", type=int, default=16, help="rows per forward pass (default: 16)")
    p.add_argument("--max-queue", type=int, default=256, help="rows waiting before requests get 503 (default: 256)")
    p.add_argument("--kind", choices=("auto", "causal-lm", "sequence-classification"), default="auto",
                   help="the base's head: generation or classification (auto: classification for encoder-only "
                        "short names)")
    p.add_argument("--num-labels", type=int, help="classification base: outputs of the head (default: the model's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; set --api-key before "
                        "listening on other addresses)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    add_quantize_flag(p)
    p.add_argument("--api-key", default=os.environ.get("LORAKIT_API_KEY") or None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' (the openai client's api_key) on /v1/completions, "
                        "/v1/chat/completions, /v1/classify and /v1/models, and on adapter loading when there is "
                        "no --admin-token (default: $LORAKIT_API_KEY; prefer the variable: arguments show in "
                        "process lists)")
    p.add_argument("--admin-token", default=os.environ.get("LORAKIT_ADMIN_TOKEN") or None, metavar="TOKEN",
                   help="require 'Authorization: Bearer TOKEN' on /v1/adapters/load and /unload "
                        "(default: $LORAKIT_ADMIN_TOKEN)")
    p.add_argument("--max-body-bytes", type=int, default=MIB, metavar="N",
                   help=f"larger request bodies get 413, unread (default: {MIB}, 1 MiB)")
    p.add_argument("--chat-template", metavar="FILE",
                   help="Jinja chat template for /v1/chat/completions, for a base whose tokenizer has none (or "
                        "to replace its own); without one, such a base answers chat requests with 400")
    p.set_defaults(func=run_serve)
    return p


def _kind(args: argparse.Namespace) -> str:
    from ..models import MODELS

    if args.kind != "auto":
        return args.kind
    info = MODELS.get(args.model)
    return "sequence-classification" if info is not None and "causal-lm" not in info.kinds else "causal-lm"


def run_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from ..hardware import resolve_device
    from ..models import load_model
    from ..quant import describe
    from .app import create_app
    from .server import build_engine

    for flag in ("max_loaded", "max_batch", "max_queue", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    if not args.api_key and not _loopback(args.host):
        print(f"warning: listening on {args.host} with no --api-key: anyone who can reach this port can use the "
              "models" + ("" if args.admin_token else " and load or unload adapters"), file=sys.stderr)
    kind = _kind(args)
    extra = {"num_labels": args.num_labels} if args.num_labels else {}
    device = resolve_device(args.device, quantize=args.quantize)
    model, tokenizer = load_model(args.model, kind, padding_side="left" if kind == "causal-lm" else "right",
                                  dtype=getattr(torch, args.dtype), quantize=args.quantize, device=device, **extra)
    if args.quantize != "none":
        print(f"--quantize {args.quantize}: {describe(model)}", file=sys.stderr)
    model = model.to(device).eval()
    engine = build_engine(model, tokenizer, args.adapters, max_loaded=args.max_loaded, max_batch=args.max_batch,
                          max_queue=args.max_queue)
    print(f"serving {args.model} ({kind}) with adapters from {engine.registry.root} "
          f"({len(engine.registry.names())} found) on http://{args.host}:{args.port}", file=sys.stderr)
    engine.start()
    try:
        app = create_app(engine, args.model, api_key=args.api_key, admin_token=args.admin_token,
                         max_body_bytes=args.max_body_bytes, chat_template=args.chat_template)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                    timeout_graceful_shutdown=30)  # then open requests are cut rather than waited on for ever
    finally:
        engine.stop()
    return 0


def _loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

