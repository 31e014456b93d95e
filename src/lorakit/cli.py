"""``lorakit`` command line: thin sub-commands over the library."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank,
             output=args.output, data=args.data, seed=args.seed)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .adapters import read_adapter

    config, tensors, meta = read_adapter(args.adapter)
    params = sum(t.numel() for t in tensors.values())
    print(f"{args.adapter}: r={config.r} alpha={config.lora_alpha} targets={config.target_modules} "
          f"bias={config.bias} modules_to_save={config.modules_to_save}")
    print(f"{len(tensors)} tensors, {params:,} parameters; made by {'lorakit' if meta else 'PEFT or another tool'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fine-tune SmolLM2-135M with LoRA on E2E, save, reload, merge, generate")
    demo.add_argument("--model", default="smollm2-135m")
    demo.add_argument("--steps", type=int, default=60)
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--rank", type=int, default=8)
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--data", default=None, help="dataset root (default: $LORAKIT_DATA)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    info = sub.add_parser("info", help="describe an adapter folder (lorakit or PEFT)")
    info.add_argument("adapter")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"lorakit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
