"""``lorakit generate``: decode a dataset split, a file of inputs, or your own data file (``--data``: prompts, or
conversations rendered with the chat template) with a base model plus adapter(s), or a merged/full model
folder; one prediction per line, in input order.

Wire it in with ``add_generate_parser(subparsers)``; the handler is ``args.func``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.common import read_lines
from ..files import atomic_write
from ..flags import int_at_least, output_file
from ..quant import add_quantize_flag
from .config import PRESETS, STRATEGIES, DecodeConfig, preset
from .rerank import REPAIR_SAMPLES, RERANKERS, rerank_by_slots

if TYPE_CHECKING:
    from ..data.user import UserData

_DECODE_FLAGS = ("strategy", "max_new_tokens", "num_beams", "length_penalty", "no_repeat_ngram_size",
                 "early_stopping", "temperature", "top_k", "top_p", "seed")


def _early_stopping(value: str) -> bool | str:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    if lowered == "never":
        return "never"
    raise argparse.ArgumentTypeError("expected true, false or never")


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``generate`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "generate", help="decode inputs with a model (+ LoRA adapters): greedy, beam search or sampling",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="short name (smollm2-135m, gpt2, ...), model folder or hub id")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="adapter folder (PEFT format); repeat to stack several (they are never merged)")
    p.add_argument("--no-merge", dest="merge", action="store_false",
                   help="keep a single adapter unmerged (default: merged into the weights, same outputs, faster)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--split", help="decode this split of --task (train, dev, test)")
    source.add_argument("--input", help="text file, one input source per line")
    p.add_argument("--task", help="task whose prompt format (and, with --split, data) to use; also picks the "
                                  "default decoding preset (e2e, webnlg, dart: the paper's beam search)")
    p.add_argument("--data", help="your own file (JSONL, JSON, CSV, TSV, Parquet) of prompts (a prompt column) or "
                                  "conversations (messages ending with a user turn, rendered with the chat "
                                  "template and its generation prompt); with --split: the data folder "
                                  "(default: $LORAKIT_DATA)")
    p.add_argument("--format", choices=("prompt-completion", "messages"),
                   help="force --data's format (default: detected from its columns)")
    p.add_argument("--columns", help="map --data's column names, e.g. prompt=question or messages=conversation")
    p.add_argument("--chat-template", metavar="FILE",
                   help="Jinja chat template for --data conversations, for a base whose tokenizer has none")
    p.add_argument("--raw", action="store_true", help="with --input: use each line as the prompt as it is")
    p.add_argument("--limit", type=int_at_least(1), help="decode only the first N inputs")
    p.add_argument("--output", required=True, type=output_file, help="file to write, one prediction per line")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="decoding settings to start from (default: the task's, else greedy)")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--no-repeat-ngram-size", type=int)
    p.add_argument("--early-stopping", type=_early_stopping, help="true, false or never (HF's meanings)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--rerank", choices=RERANKERS,
                   help="slots (E2E): with beam search, of each input's hypotheses keep the most likely one with "
                        "the fewest slot errors against its MR (semantic reranking, as the E2E challenge systems "
                        "did); with greedy decoding or sampling, each output with a slot error is compared with "
                        "beam search's n-best and --rerank-samples samples and the least wrong is kept")
    p.add_argument("--rerank-samples", type=int_at_least(0),
                   help="with --rerank slots after greedy decoding or sampling: samples drawn (temperature 0.7) "
                        f"for each output with a slot error, beside beam search's n-best (default: {REPAIR_SAMPLES})")
    p.add_argument("--batch-size", type=int_at_least(1), default=16,
                   help="inputs per batch (beam search: x num_beams rows)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="weights' dtype; bfloat16 is ~2x faster on CPUs with AMX/AVX512-BF16, outputs may differ")
    add_quantize_flag(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_generate)
    return p


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """The preset (explicit, else the task's, else greedy) with the flags given on top."""
    name = args.preset or (args.task if args.task in PRESETS else "greedy")
    changes = {f: getattr(args, f) for f in _DECODE_FLAGS if getattr(args, f, None) is not None}
    if "num_beams" in changes and "strategy" not in changes and changes["num_beams"] > 1:
        changes["strategy"] = "beam"
    return preset(name, **changes)


def read_user_data(args: argparse.Namespace) -> UserData | None:
    """``--data FILE`` read and checked before any model loads (errors name the file, line and key); None
    when the inputs come from ``--split`` or ``--input``."""
    if args.input is not None and args.data:
        raise ValueError("--input and --data are two sources of inputs: give one")
    if args.split is not None or args.input is not None:
        given = [flag for flag, value in (("--format", args.format), ("--columns", args.columns),
                                          ("--chat-template", args.chat_template)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to your own --data file, not to --split or --input")
        return None
    if not args.data:
        raise ValueError("give --data FILE (your own prompts or conversations), --input FILE (one input per line) "
                         "or --split with --task")
    for flag, value in (("--task", args.task), ("--raw", args.raw or None)):
        if value is not None:
            raise ValueError(f"{flag} applies to --split and --input; --data FILE prompts are used as they are "
                             "(pick decoding settings with --preset)")
    from ..data.user import UserDataError, load_user_data

    data = load_user_data(args.data, format=args.format, columns=args.columns, require_targets=False)
    if data.format not in ("prompt-completion", "messages"):
        raise UserDataError(f"lorakit generate reads prompts (a prompt column) or conversations (messages), not "
                            f"format {data.format}; map other names with --columns, e.g. prompt=question",
                            data.path)
    return data.select(range(min(len(data), args.limit))) if args.limit is not None else data


def user_prompts(data: UserData, model, tokenizer, chat_template: str | None) -> list[str]:
    """The file's prompts, conversations rendered as training renders them (``lorakit.data.chat``); for
    conversations the model also stops at the template's end-of-turn token (``<|im_end|>``), where training
    taught it to end a turn, added to the stop tokens of this run's (freshly loaded) model."""
    from ..data.chat import end_of_turn_id, resolve_chat_template
    from ..data.user import UserDataError, generation_prompts
    from .api import eos_ids

    if data.format != "messages":
        return generation_prompts(data, tokenizer)
    try:
        template = resolve_chat_template(tokenizer, chat_template)
    except ValueError:
        raise ValueError(f"{data.path} holds conversations but the model's tokenizer has no chat template to "
                         "render them with: pass --chat-template FILE (a Jinja chat template)") from None
    prompts = []
    for i in range(len(data)):  # one by one, so that a conversation the template refuses is named
        try:
            prompts += generation_prompts(data.select([i]), tokenizer, template)
        except UserDataError:
            raise
        except Exception as err:  # the template's own raise_exception ("roles must alternate") or a Jinja error
            raise UserDataError(f"the chat template cannot render this conversation: {err}", data.path,
                                data.where(i), "messages") from err
    end, stops = end_of_turn_id(tokenizer, template), eos_ids(model, tokenizer)
    if end is not None and end not in stops:
        model.generation_config.eos_token_id = [*stops, end]
    return prompts


def read_sources(args: argparse.Namespace) -> list[str]:
    """The inputs to decode before prompt formatting (E2E: the MRs): a split's sources or the input file's
    lines, the first ``--limit``."""
    from ..tasks import get_task

    if args.split is not None and args.task is None:
        raise ValueError("--split needs --task (e2e, webnlg, dart)")
    task = get_task(args.task or "e2e")
    if task.model_kind != "causal-lm":
        raise ValueError(f"{task.name} is a classification task: use `lorakit predict --task {task.name}`")
    if args.split is not None:
        sources = [ex.source for ex in task.examples(args.split, args.data)]
    else:
        sources = read_lines(args.input)  # "\n" ends a line, not a form feed or U+2028 inside one
        if sources and not any(s.strip() for s in sources):
            raise ValueError(f"{args.input}: no non-empty lines")
    return list(sources[:args.limit] if args.limit is not None else sources)


def read_prompts(args: argparse.Namespace, sources: list[str]) -> list[str]:
    """The sources in the task's prompt format (``--raw``: as they are). For E2E an input line written as an
    MR (``name[X], eatType[pub]``) is first linearized as training linearizes the data set's MRs (``name : X |
    Type : pub``): the model never saw the bracket form."""
    from ..data.e2e import linearize_e2e, parse_mr
    from ..tasks import get_task

    if args.raw:
        return sources
    task = get_task(args.task or "e2e")

    def model_input(source: str) -> str:
        if task.name == "e2e" and args.split is None:
            try:
                parse_mr(source)
            except ValueError:
                return source
            return linearize_e2e(source)
        return source

    return [task.prompt(model_input(s)) for s in sources]


def rerank_mrs(args: argparse.Namespace, sources: list[str]) -> list[str]:
    """With ``--rerank slots``: the MR behind each input (a split's linearized sources, or an --input file's
    MRs in either form), checked before any model loads; else nothing."""
    from ..data.e2e import mr_of
    from ..metrics.ser import checked_mr

    if args.rerank is None:
        return []
    mrs = []
    for line, source in enumerate(sources, 1):
        try:
            mrs.append(mr_of(source))
            checked_mr(mrs[-1])  # a slot named twice or left empty is refused now, not after decoding
        except ValueError as err:
            where = f"{args.input}, line {line}" if args.input else f"{args.task} {args.split}, input {line}"
            raise ValueError(f"{where}: {err}") from None
    return mrs


def check_rerank(args: argparse.Namespace, config: DecodeConfig) -> None:
    """``--rerank slots`` needs E2E MRs (and, after beam search, n-best lists); refused before any model loads."""
    if args.rerank_samples is not None and (args.rerank is None or config.strategy == "beam"):
        raise ValueError("--rerank-samples is for --rerank slots after greedy decoding or sampling (beam search "
                         "reranks its own hypotheses)")
    if args.rerank is None:
        return
    if (args.task or "e2e") != "e2e" or (args.data is not None and args.split is None) or args.raw:
        raise ValueError("--rerank slots checks outputs against E2E MRs: use it with --task e2e and --split or "
                         "an --input file of MRs (not a --data file of your own, nor --raw)")
    if config.strategy == "beam" and config.num_beams < 2:
        raise ValueError(f"--rerank picks among beam search's hypotheses: use --num-beams 2 or more (or "
                         f"--preset e2e, or greedy decoding), not {config.summary()}")
    if config.strategy != "beam":  # the repair breaks ties by sentence BLEU: refuse now, not after decoding
        from ..metrics import require_metrics

        require_metrics("--rerank slots after greedy decoding or sampling", ("sacrebleu",))


def load_for_generation(model_name: str, adapters: list[str], merge: bool, device: str | None,
                        dtype: str = "float32", quantize: str = "none"):
    """(model, tokenizer) with the adapters loaded, a single one merged unless ``merge`` is off (or the base
    is quantized, which cannot take a merge)."""
    import torch

    import lorakit

    from ..hardware import resolve_device
    from ..models import load_model
    from ..quant import describe, quant_mode

    target = resolve_device(device, quantize=quantize)
    model, tokenizer = load_model(model_name, padding_side="left", dtype=getattr(torch, dtype), quantize=quantize,
                                  device=target)
    if quantize != "none":
        print(f"--quantize {quantize}: {describe(model)}", file=sys.stderr)
    names = [f"adapter{i}" if len(adapters) > 1 else "default" for i in range(len(adapters))]
    for name, folder in zip(names, adapters, strict=True):
        lorakit.load_adapter(model, folder, name)
    if len(names) > 1:
        lorakit.set_active_adapters(model, names)
    elif names and merge and quant_mode(model) is None:
        try:
            lorakit.merge_adapters(model)
        except RuntimeError as err:  # a weight shared with another module (tied) cannot take a merge
            print(f"not merging: {err}", file=sys.stderr)
    return model.to(target).eval(), tokenizer


def _write_lines(path: Path, lines: list[str]) -> None:
    """Written aside and renamed: an interrupted run never leaves a short prediction file behind."""
    atomic_write(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def _adapters_chat_template(adapters: list[str]) -> str | None:
    """The chat template the adapters were trained with (``chat_template.jinja`` beside them), if they have
    one; adapters with different templates need ``--chat-template`` to say which."""
    from ..data.chat import CHAT_TEMPLATE_NAME, adapter_chat_template

    found = {folder: text for folder in adapters if (text := adapter_chat_template(folder)) is not None}
    if len(set(found.values())) > 1:
        raise ValueError(f"the adapters {', '.join(found)} were trained with different chat templates: pass "
                         "--chat-template FILE to choose one")
    if found:
        print(f"chat template: {Path(next(iter(found))) / CHAT_TEMPLATE_NAME}", file=sys.stderr)
    return next(iter(found.values()), None)


def run_generate(args: argparse.Namespace) -> int:
    from ..data.chat import load_chat_template
    from .api import generate, generate_hypotheses
    from .rerank import repair_by_slots

    config = decode_config(args)
    check_rerank(args, config)
    data = read_user_data(args)
    sources = read_sources(args) if data is None else []
    prompts = read_prompts(args, sources)
    mrs = rerank_mrs(args, sources)
    template = load_chat_template(args.chat_template)  # a missing file fails before the model loads
    if template is None and data is not None and data.format == "messages":
        template = _adapters_chat_template(args.adapter or [])
    model, tokenizer = load_for_generation(args.model, args.adapter, args.merge, args.device, args.dtype,
                                           args.quantize)
    if data is not None:
        prompts = user_prompts(data, model, tokenizer, template)
        print(f"{data.path}: {len(data)} {data.unit}s, format {data.format}"
              f"{' (detected)' if data.detected else ''}", file=sys.stderr)
    print(f"decoding {len(prompts)} inputs: {config.summary()}", file=sys.stderr)
    start = time.perf_counter()
    if args.rerank is not None and config.strategy == "beam":  # rerank beam search's own n-best lists
        hypotheses = generate_hypotheses(model, tokenizer, prompts, config, batch_size=args.batch_size,
                                         progress=args.progress)
        texts, summary = rerank_by_slots(mrs, hypotheses)
        print(summary, file=sys.stderr)
    else:
        texts = generate(model, tokenizer, prompts, config, batch_size=args.batch_size, progress=args.progress)
        if args.rerank is not None:  # after greedy decoding or sampling: repair the outputs with slot errors
            samples = REPAIR_SAMPLES if args.rerank_samples is None else args.rerank_samples
            texts, summary = repair_by_slots(model, tokenizer, mrs, prompts, texts, config, samples=samples,
                                             batch_size=args.batch_size, progress=args.progress)
            print(summary, file=sys.stderr)
    seconds = time.perf_counter() - start
    _write_lines(Path(args.output), [" ".join(t.split()) for t in texts])  # one line per prediction
    print(f"wrote {len(texts)} predictions to {args.output} in {seconds:.1f} s", file=sys.stderr)
    return 0
