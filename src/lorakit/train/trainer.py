"""The training loop shared by every task: LoRA or full fine-tuning on the same code, one process or many
(``torchrun``, PyTorch DDP), resumable from the last checkpoint as if never stopped.

The trainer knows nothing of tasks, files or model registries: ``lorakit.recipes.finetune`` builds the
model (with its adapter), the samples, the loss and the evaluation from a ``TrainConfig`` and hands them
over. Read top to bottom: set up (processes, optimizer), maybe resume, then one optimizer step per planned
global batch, logging, evaluating and checkpointing as it goes.

Whatever state a killed run is in, ``lorakit train --config RUN/run_config.json --resume`` continues it (from
its last complete checkpoint, or from step 0 when it has none) and a plain rerun's error names that command.
A time budget stops the loop after the step that spends it, and so does Ctrl-C or SIGTERM (a scheduler's
warning, ``kill``; the second one stops at once); the lr schedule stays planned for the whole run (max_steps
or epochs), so a stopped run resumes on exactly the curve an unstopped one follows.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..adapters import save_adapter
from ..files import atomic_folder, atomic_write, folder_bytes
from ..hardware import resolve_device
from ..quant import describe as describe_quantized
from ..quant import quant_mode
from . import checkpoint as ckpt
from .batching import ClassificationSample, Sample, collate, plan_batches, shard
from .config import RENAMED, TrainConfig, read_settings
from .evaluation import BestSoFar, Evaluation
from .logs import MetricsLog, plot_loss


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Processes:
    """Where this process stands in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Processes:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


def pick_device() -> torch.device:
    """``hardware.resolve_device``'s choice (the GPU when there is one: this process's under torchrun), made the
    current CUDA device so that NCCL and unplaced tensors use it too."""
    device = resolve_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU that has it ('auto'), never on the CPU unless asked."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: GPU tensors on CUDA, the whole process's resident set (weights, activations,
    optimizer state and Python itself) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on biases and norms)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def make_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak, then linear decay to zero at the last step."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_command(output: Path, world_size: int = 1) -> str:
    """The one command that continues the run in ``output``, whatever state it is in."""
    saved = output / "run_config.json"
    if not saved.is_file():
        return "the same command with --resume"
    command = ["lorakit", "train", "--config", str(saved)]
    try:
        if Path(json.loads(saved.read_text()).get("output", "")) != output:  # the folder was moved
            command += ["--output", str(output)]
    except (ValueError, AttributeError):
        pass
    prefix = "torchrun ... " if world_size > 1 else ""
    return prefix + shlex.join([*command, "--resume"])


def check_fresh_start(output: str | os.PathLike, world_size: int = 1) -> None:
    """A fresh start never overwrites a run: FileExistsError naming what is there and the command that
    continues it. Checked again before loading anything (``lorakit train``), so the answer is immediate."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file: name a folder for the run")
    earlier = [p.name for p in (output / "log.jsonl", output / "checkpoints", output / "adapter", output / "model")
               if p.exists()]
    if earlier:
        point = ckpt.resume_point(output)
        state = f"last checkpoint at step {ckpt.step_of(point)}" if point else "no complete checkpoint yet"
        raise FileExistsError(f"{output} already holds a run ({', '.join(earlier)}; {state}); to continue it: "
                              f"{resume_command(output, world_size)}; to start afresh remove {output} or choose "
                              "another --output")


def stopped_part_way(summary: dict) -> bool:
    """Whether a run's ``summary.json`` is of a run that a time budget or a signal stopped before its last
    step: it is not finished, and resumes."""
    return bool(summary.get("stopped_by") or summary.get("stopped_on_time_budget"))  # the latter: older runs


class Trainer:
    """One run: ``Trainer(config, model, tokenizer, samples, loss).fit(resume=False)`` writes the run folder
    and returns a summary. ``model`` carries its adapter already (or is trained whole with
    ``full_finetune``); ``loss(**batch) -> (sum, count)`` wraps it; ``evaluation`` runs every
    ``config.eval_every`` steps; ``result_files`` (name -> bytes) are saved beside the adapter, e.g. label
    names. Most callers build all of this with ``lorakit.recipes.build_trainer(config)``."""

    clock: Callable[[], float] = staticmethod(time.perf_counter)  # elapsed time and the budget (tests replace it)
    signalled: str | None = None  # the signal (SIGINT, SIGTERM) that asked the run to stop after its current step

    def __init__(self, config: TrainConfig, model: nn.Module, tokenizer, samples: list[Sample] |
                 list[ClassificationSample], loss: nn.Module, *, evaluation: Evaluation | None = None,
                 result_files: dict[str, bytes] | None = None, title: str | None = None) -> None:
        self.config = config
        self.title = title or config.name
        self.procs = Processes.from_env()
        self.device = pick_device()
        self.tokenizer = tokenizer
        self.model = model.to(self.device)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.samples = samples
        if config.batch_size < self.procs.world_size:
            raise ValueError(f"batch_size {config.batch_size} is smaller than the {self.procs.world_size} processes")
        self.steps_per_epoch = len(self.samples) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.samples)} training examples do not fill one batch of {config.batch_size}")
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        if self.procs.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            loss = nn.parallel.DistributedDataParallel(loss, device_ids=device_ids)
        self.loss = loss
        self.evaluation = evaluation if config.eval_every else None
        self.result_files = dict(result_files or {})
        self.optimizer = make_optimizer(self.model, config)
        self.schedule = make_schedule(self.optimizer, config.warmup_steps, self.total_steps)
        self.amp = autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.output = Path(config.output)
        self.log = MetricsLog(self.output / "log.jsonl")
        self.best = BestSoFar()
        self._plans: dict[int, list[list[int]]] = {}

    # --- data
    @cached_property
    def mean_batch_tokens(self) -> float:
        """What token_weighting "uniform" divides every batch's loss sum by, the same for the whole run (read
        only then: it counts every example's targets)."""
        return self.config.batch_size * sum(s.target_tokens for s in self.samples) / len(self.samples)

    def global_batch(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch not in self._plans:
            self._plans = {epoch: plan_batches([len(s.input_ids) for s in self.samples], self.config.batch_size,
                                               self.config.seed, epoch, self.config.group_by_length)}
        return self._plans[epoch][position]

    def micro_batches(self, batch: list[int]) -> list[list[int]]:
        mine = shard(batch, self.procs.rank, self.procs.world_size)
        size = self.config.micro_batch_size or len(mine)
        return [mine[i:i + size] for i in range(0, len(mine), size)]

    # --- one optimizer step
    def step(self, step: int) -> tuple[float, int]:
        """Forward/backward over this step's global batch; returns (mean target-token loss, its non-padding
        tokens over all processes)."""
        batch = self.global_batch(step)
        # every process knows the whole batch, so the normaliser needs no communication
        target_tokens = sum(self.samples[i].target_tokens for i in batch)
        real_tokens = sum(len(self.samples[i].input_ids) for i in batch)
        normaliser = target_tokens if self.config.token_weighting == "batch" else self.mean_batch_tokens
        scale = self.procs.world_size / normaliser  # DDP averages gradients over processes
        loss_sum = torch.zeros((), device=self.device)
        chunks = self.micro_batches(batch)
        for k, chunk in enumerate(chunks):
            inputs = {key: t.to(self.device) for key, t in collate([self.samples[i] for i in chunk],
                                                                   self.tokenizer.pad_token_id).items()}
            sync = k == len(chunks) - 1 or not isinstance(self.loss, nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else self.loss.no_sync()), \
                    torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                summed, _ = self.loss(**inputs)
            self.scaler.scale(summed * scale).backward()
            loss_sum += summed.detach().float()
        mean_loss = (self.procs.sum(loss_sum) / target_tokens).item()
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"loss became {mean_loss} at step {step + 1}")
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if not torch.isfinite(norm) and not self.scaler.is_enabled():  # fp16's scaler skips such steps itself
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"gradient norm became {norm.item()} at step {step + 1}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, real_tokens

    # --- checkpoints
    def save_checkpoint(self, step: int) -> None:
        staging = ckpt.staging_dir(self.output, step)
        if self.procs.main:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        self.procs.barrier()
        ckpt.write_rank_state(staging, self.procs.rank)
        if self.procs.main:
            ckpt.write_main_state(staging, self.model, self.optimizer, self.schedule, self.scaler, step)
        self.procs.barrier()
        if self.procs.main:
            ckpt.publish(self.output, step, self.config.keep_checkpoints)
            plot_loss(self.log.read(), self.output / "loss.png", f"{self.title}: {self.config.model}")
        self.procs.barrier()

    def resume_command(self) -> str:
        """The one command that continues this run, whatever state it is in."""
        return resume_command(self.output, self.procs.world_size)

    def resume_step(self, resume: bool) -> int:
        """Where this session starts. A fresh start refuses a folder that holds a run and names the command
        that continues it; ``resume`` continues from the last complete checkpoint, or from step 0 (and says
        so) when there is none, after removing what killed processes left half-written."""
        if not resume:
            check_fresh_start(self.output, self.procs.world_size)
            return 0
        if self.procs.main:
            for path in ckpt.clean_stale(self.output):
                print(f"removed {path}: left half-written by a stopped process")
        self.procs.barrier()
        point = ckpt.resume_point(self.output)
        self.check_same_settings()
        if point is None:
            self.check_nothing_to_lose()
            if self.procs.main:
                self.log.truncate_after(0)
                print(f"--resume: no complete checkpoint in {ckpt.checkpoint_root(self.output)}: "
                      "starting from step 0")
            return 0
        named = ckpt.latest_checkpoint(self.output)
        if self.procs.main and named != point:
            print(f"--resume: {ckpt.checkpoint_root(self.output) / ckpt.LATEST} does not name a complete checkpoint; "
                  f"using the newest complete one, {point.name}")
        step = ckpt.step_of(point)
        if step > self.total_steps:
            raise ValueError(f"{point} is at step {step}, past this run's {self.total_steps} steps; resume with "
                             f"--max-steps {step} or more ({self.resume_command()} --max-steps {step})")
        step = ckpt.restore(point, self.model, self.optimizer, self.schedule, self.procs.rank, self.scaler)
        if self.procs.main:
            self.log.truncate_after(step)
            print(f"resumed from {point} (step {step})")
        return step

    # settings a resumed run may change: how long it runs and what it prints
    RESUMABLE_CHANGES = ("output", "max_steps", "epochs", "time_budget", "samples", "log_every", "save_every",
                         "keep_checkpoints")

    def check_nothing_to_lose(self) -> None:
        """Starting a resumed run from step 0 is for runs stopped before their first checkpoint. A folder
        with checkpoints that are all incomplete (damaged, or from another version) or with a finished result
        is refused instead: training again would overwrite that result."""
        root = ckpt.checkpoint_root(self.output)
        damaged = sorted(p.name for p in root.glob("step-*")) if root.is_dir() else []
        results = [p.name for p in (self.output / "adapter", self.output / "model", self.output / "summary.json")
                   if p.exists()]
        if damaged or results:
            what = (f"{root} holds only incomplete checkpoints ({', '.join(damaged)}; each needs "
                    f"{', '.join(ckpt.CHECKPOINT_FILES)})" if damaged else f"{root} holds no checkpoint")
            raise ValueError(f"--resume: {what}, and starting again from step 0 would overwrite "
                             f"{', '.join(results) or 'the run'} in {self.output}; to start afresh remove the folder "
                             "or choose another --output")

    def check_same_settings(self) -> None:
        """Resuming is exact only with the settings the run started with (batch plan, schedule, model)."""
        saved_path = self.output / "run_config.json"
        if not saved_path.is_file():
            return
        now = self.config.to_dict()
        saved = {RENAMED.get(k, k): v for k, v in read_settings(saved_path).items()}  # by an earlier version too
        changed = [k for k in now if k not in self.RESUMABLE_CHANGES and saved.get(k, now[k]) != now[k]]
        if changed:
            raise ValueError(f"--resume with other settings than {saved_path}: {changed[0]} was "
                             f"{saved.get(changed[0])!r}, now {now[changed[0]]!r}; to continue the run as it "
                             f"was: {self.resume_command()}")

    # --- the run
    def stop_reason(self, started: float) -> str | None:
        """``"time_budget"`` once the budget is used up (rank 0's clock decides), ``"signal"`` once any process
        got Ctrl-C or SIGTERM, else None; every process gets the same answer."""
        spent = self.config.time_budget is not None and self.clock() - started >= self.config.time_budget
        flags = [float(spent and self.procs.main), float(self.signalled is not None)]
        if self.procs.world_size > 1:
            tensor = torch.tensor(flags, device=self.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flags = tensor.tolist()
        return "time_budget" if flags[0] else "signal" if flags[1] else None

    @contextlib.contextmanager
    def stop_on_signals(self):
        """While training: the first Ctrl-C or SIGTERM asks for a stop after the current step (checkpoint and
        result saved, as a time budget does); the handlers before it are back for a second one, which stops
        at once. Only the main thread may set handlers: elsewhere (a notebook's worker) nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        def ask_to_stop(signum: int, frame) -> None:
            self.signalled = signal.Signals(signum).name
            restore()
            if self.procs.main:
                print(f"\n{self.signalled} received: stopping after this step (again to stop at once)", flush=True)

        for sig in previous:
            signal.signal(sig, ask_to_stop)
        try:
            yield
        finally:
            restore()

    def finished_before(self, start_step: int) -> bool:
        """A resumed run that had already trained every step (or stopped early, its evaluations no longer
        improving) and saved its result; not one that a time budget stopped at what is now its last step:
        that one still writes its result and summary anew."""
        done = self.output / "summary.json"
        if not done.is_file() or not self.result_dir().is_dir():
            return False
        summary = json.loads(done.read_text())
        if summary.get("steps") != start_step:
            return False
        return bool(summary.get("stopped_early")) or (start_step == self.total_steps
                                                       and not stopped_part_way(summary))

    # --- evaluation
    def evaluate(self, step: int) -> bool:
        """Validate (on the main process), log it, keep the best result in ``best/``; whether to stop early.
        Every process gets the same answer."""
        assert self.evaluation is not None
        stop = False
        if self.procs.main:
            results = self.evaluation.run(self.model, self.tokenizer.pad_token_id, self.device, self.amp)
            metric = self.evaluation.metric
            improved = self.best.update(step, results[metric], self.evaluation)
            self.log.append({"step": step, "eval": results, "best": improved})
            if improved:
                self.save_result(self.best_dir())
                atomic_write(self.output / "best.json", (json.dumps(
                    {"step": step, "metric": metric, "value": results[metric], "eval": results}, indent=2)
                    + "\n").encode())
            patience = self.config.early_stopping_patience
            stop = patience is not None and self.best.since >= patience
            shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items())
            tqdm.write(f"eval at step {step}: {shown}" + (" (best so far)" if improved else
                       f" (best {metric} {self.best.value:.4g} at step {self.best.step})"))
            if stop:
                tqdm.write(f"early stopping: {metric} has not improved for {patience} evaluations")
        if self.procs.world_size > 1:
            flag = torch.tensor(float(stop), device=self.device)
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        return stop

    def fit(self, resume: bool = False) -> dict:
        config, procs = self.config, self.procs
        if procs.main:
            self.output.mkdir(parents=True, exist_ok=True)
        procs.barrier()
        start_step = self.resume_step(resume)
        if self.finished_before(start_step):
            procs.barrier()
            if procs.main:
                print(f"{self.output} already finished: {start_step} of {self.total_steps} steps, result in "
                      f"{self.result_dir()}; nothing to train. To train longer: {self.resume_command()} "
                      f"--max-steps {start_step * 2}")
            return json.loads((self.output / "summary.json").read_text())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        if procs.main:
            atomic_write(self.output / "run_config.json", (json.dumps(config.to_dict(), indent=2) + "\n").encode())
            budget = f"; time budget {config.time_budget:g} s" if config.time_budget is not None else ""
            base = (f"; base --quantize {config.quantize}: {describe_quantized(self.model)}"
                    if config.quantize != "none" else "")  # what auto resolved to, before the first step
            print(f"{self.title}: {len(self.samples):,} examples, {self.total_steps} steps of {config.batch_size} on "
                  f"{procs.world_size} process(es), {self.device}; trainable {trainable:,} / {total:,}{budget}{base}")
        self.model.train()
        bar = tqdm(range(start_step, self.total_steps), initial=start_step, total=self.total_steps,
                   desc=f"train {self.title}", unit="step", disable=not procs.main)
        started, tokens_seen = self.clock(), 0
        records = self.log.read() if procs.main else []
        if self.evaluation is not None:
            self.best = BestSoFar.from_log(records, self.evaluation)
        last = ([r for r in records if "loss" in r] or [{}])[-1]  # a resumed, finished run trains no step
        last.pop("stopped", None)
        reached, stopped, stopped_early = start_step, None, False
        with self.stop_on_signals():
            for step in bar:
                try:
                    loss, tokens = self.step(step)
                except TrainingDiverged as err:
                    latest = ckpt.latest_checkpoint(self.output)
                    raise TrainingDiverged(f"{err}; stopped. Last good checkpoint: {latest or 'none yet'}") from None
                reached = step + 1
                tokens_seen += tokens
                elapsed = max(self.clock() - started, 1e-9)
                stopped = self.stop_reason(started) if reached < self.total_steps else None
                last = {"step": reached, "epoch": reached / self.steps_per_epoch, "loss": loss,
                        "lr": self.schedule.get_last_lr()[0], "tokens": tokens,
                        "tokens_per_s": tokens_seen / elapsed, "elapsed_s": elapsed,
                        "peak_mem_mb": peak_memory_mb(self.device)}
                if stopped:
                    last["stopped"] = stopped
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{last['lr']:.1e}", tok_s=f"{last['tokens_per_s']:.0f}")
                end = reached == self.total_steps or stopped is not None
                if procs.main and (reached % config.log_every == 0 or end):
                    self.log.append(last)
                if self.evaluation is not None and (reached % config.eval_every == 0 or end):
                    stopped_early = self.evaluate(reached) and reached < self.total_steps
                    end = end or stopped_early
                if reached % config.save_every == 0 or end:
                    self.save_checkpoint(reached)
                if end:
                    break
            bar.close()
            if stopped and procs.main:
                why = (f"time budget of {config.time_budget:g} s spent" if stopped == "time_budget"
                       else f"{self.signalled or 'a signal'} received")
                print(f"{why}: stopped after step {reached} of {self.total_steps} (checkpoint and result saved); "
                      f"to continue: {self.resume_command()}")
        self.model.eval()
        return self._finish(reached, start_step, stopped, stopped_early, last, started, trainable, total)

    def _finish(self, reached: int, start_step: int, stopped: str | None, stopped_early: bool, last: dict,
                started: float, trainable: int, total: int) -> dict:
        """Save the result and write the summary (the main process), then wait for every process."""
        procs = self.procs
        summary = {"steps": reached, "planned_steps": self.total_steps,
                   "stopped_on_time_budget": stopped == "time_budget", "stopped_by": stopped,
                   "steps_this_session": reached - start_step,
                   "final_loss": last.get("loss"), "seconds": self.clock() - started,
                   "tokens_per_s": last.get("tokens_per_s"), "peak_mem_mb": peak_memory_mb(self.device),
                   "trainable_params": trainable, "total_params": total,
                   "device": str(self.device), "processes": procs.world_size, "output": str(self.output),
                   "stopped_early": stopped_early,
                   "quantized_base": quant_mode(self.model) or "none"}  # what quantize = "auto" resolved to
        if self.evaluation is not None and self.best.step is not None:
            summary.update(best_step=self.best.step, best_metric=self.evaluation.metric, best_value=self.best.value)
        if procs.main:
            self.save_result()
            summary["saved_bytes"] = folder_bytes(self.result_dir())
            atomic_write(self.output / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        procs.barrier()
        return summary

    def result_dir(self) -> Path:
        return self.output / ("model" if self.config.full_finetune else "adapter")

    def best_dir(self) -> Path:
        return self.output / "best"

    def save_result(self, folder: Path | None = None) -> None:
        """The adapter (or the whole model) and the result files, built aside and renamed into ``folder``
        (default ``result_dir()``): a reader never sees half of one, and saving again replaces it."""
        with atomic_folder(folder or self.result_dir()) as staging:
            if self.config.full_finetune:
                self.model.save_pretrained(staging, safe_serialization=True)
                self.tokenizer.save_pretrained(staging)
            else:
                save_adapter(self.model, staging, name=self.config.name)
            for name, data in self.result_files.items():
                (staging / name).write_bytes(data)
