"""The inference engine: one thread owns the model and runs every request through mixed-adapter batches.

Why one thread: a forward pass cannot share the model with another one or with an adapter being attached,
so the engine thread alone runs the model; other threads only put work in (a bounded queue) and receive
events. Generation is continuously batched: after every decoding step finished rows leave, and waiting
requests are prefilled and join the running batch, each row routed to its own adapter (``RowRouting``).
The batch and the sampler are ``lorakit generate``'s (``decode.batch.LiveBatch``, ``decode.sampling``), so a
request gives the same tokens as the command line for the same prompt, seed and settings.
An adapter that is not in memory is read on a loader thread while the batch keeps running; its requests
join once it is attached.

Whatever raises where, every request gets exactly one answer and gives its adapter back. A failure that
belongs to one row ends that row only: scores that are not finite, a prompt whose prefill fails (the rows
started with it are retried in smaller groups, so only the one at fault fails), a client that went away.
A forward pass that fails for the whole running batch fails that batch's rows. The engine thread itself
never stops on an error: it logs it (logger ``lorakit.serve``) and goes on.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..decode.api import context_length, eos_ids
from ..decode.batch import LiveBatch, take_token
from ..decode.cache import growable, new_cache
from ..decode.runner import CausalLM
from ..decode.sampling import GREEDY, Sampling, is_sampled, row_generator
from .metrics import Metrics
from .pool import AdapterPool, PoolFull
from .registry import AdapterRefused, AdapterRegistry, ReadAdapter
from .stops import StopText

log = logging.getLogger("lorakit.serve")


class QueueFull(RuntimeError):
    """The bounded request queue is full (HTTP 503): the client should retry later."""


class RequestRejected(ValueError):
    """A request the engine can never run as sent, whatever the load: HTTP ``status`` (400, or 413 when it
    needs more room than the queue has), ``param`` naming the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status


Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class GenerationRow:
    """One sequence being generated (a request with ``n`` choices has ``n`` of them)."""

    adapter: str | None
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    emit: Emit  # ("text", {"index", "text"}) per piece; ("done", {"index", "finish_reason", "tokens"}) at the end
    index: int = 0
    seed: int | None = None  # this row's stream (``decode.sampling.row_seed``); None: drawn from the OS
    top_k: int = 0
    stop_ids: frozenset[int] = frozenset()  # token ids that end this row besides EOS (a chat's end-of-turn)
    tokens: list[int] = field(default_factory=list)
    sampling: Sampling = GREEDY  # set when queued: the row's settings and generator
    stop_text: StopText | None = None
    cancelled: bool = False  # set by the client's side (it went away): the engine drops the row
    answered: bool = field(default=False, repr=False)  # "done" or "error" was emitted; nothing comes after
    holds_adapter: bool = field(default=False, repr=False)  # counted in its adapter's refs until answered


@dataclass
class ClassifyJob:
    adapter: str | None
    encodings: list[list[int]]
    token_type_ids: list[list[int]] | None
    future: Future
    holds_adapter: bool = field(default=False, repr=False)


class Engine:
    """Runs generation (causal LM base) or classification (sequence-classification base) requests for any
    adapter in ``registry``, at most ``max_batch`` rows per forward pass and ``max_queue`` rows waiting."""

    def __init__(self, model: nn.Module, tokenizer, registry: AdapterRegistry, *, max_loaded: int = 8,
                 max_batch: int = 16, max_queue: int = 256, metrics: Metrics | None = None) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        self.model = model.eval()
        self.tokenizer = copy.deepcopy(tokenizer)  # the engine thread's own: fast tokenizers are not thread-safe
        self.registry = registry
        self.max_batch, self.max_queue = max_batch, max_queue
        self.metrics = metrics or Metrics()
        self.classifier = "ForSequenceClassification" in type(model).__name__
        self.pool = AdapterPool(model, max_loaded, resize_heads=self.classifier)
        self.lm = None if self.classifier else CausalLM(model)
        self.input_vocab = input_rows(model)
        if self.input_vocab is not None and len(tokenizer) > self.input_vocab:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's input embedding has only "
                             f"{self.input_vocab} rows: ids {self.input_vocab}..{len(tokenizer) - 1} would crash "
                             "the model; serve the model with the tokenizer it was trained with")
        # several prefills can join one running batch only when the cache grows in place
        self._stackable = self.lm is not None and growable(new_cache(model, 1))
        self.eos = set(eos_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(self.eos) if self.eos
                                                                                          else 0)
        self._cond = threading.Condition()
        self._waiting: deque[GenerationRow | ClassifyJob] = deque()
        self._commands: deque[Callable[[], None]] = deque()  # each one guarded (see ``_command``)
        self._reading: set[str] = set()
        self._ready: dict[str, ReadAdapter] = {}
        self._failed: dict[str, BaseException] = {}
        self._live: LiveBatch[GenerationRow] | None = None
        self._load_futures: dict[str, list[Future]] = {}
        self._unload_futures: dict[str, list[Future]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lorakit-engine", daemon=True)

    # --- life cycle
    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.registry.close()

    @property
    def context_length(self) -> int | None:
        return context_length(self.model)

    def loaded(self) -> list[str]:
        return list(self.pool.loaded)

    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)

    # --- submitting work (any thread)
    def check_size(self, rows: int) -> None:
        """413 (``RequestRejected``) for a request of ``rows`` queue rows that could never fit: retrying later
        cannot help. The server checks this before tokenizing, ``_put`` again when queueing."""
        if rows > self.max_queue:
            raise RequestRejected(f"the request needs {rows} queue rows (prompts x n) but the queue holds at "
                                  f"most {self.max_queue} (the server's --max-queue); send fewer prompts or a "
                                  "smaller n", status=413)

    def _put(self, items: list[GenerationRow | ClassifyJob]) -> None:
        self.check_size(len(items))
        with self._cond:
            if self._stop:
                raise RuntimeError("the engine is stopped")
            if len(self._waiting) + len(items) > self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} rows waiting); retry later")
            self._waiting.extend(items)
            self._cond.notify_all()

    def generate(self, rows: list[GenerationRow]) -> None:
        """Queue the rows of one request (all or none); results arrive through each row's ``emit``."""
        if self.classifier:
            raise ValueError("the served base model is a classifier: use /v1/classify")
        for prompt in {id(r.prompt): r.prompt for r in rows}.values():  # n choices share their prompt
            self._check_prompt(prompt)
        for row in rows:
            if is_sampled(row.temperature):  # below the floor: greedy (see ``decode.sampling.GREEDY_BELOW``)
                row.sampling = Sampling(row.temperature, row.top_k, row.top_p, row_generator(row.seed))
            row.stop_text = StopText(row.stops)
        self._put(list(rows))

    def _check_prompt(self, prompt: list[int]) -> None:
        """Token ids the model can take: a bad one would fail the prefill of every row started with it."""
        if not prompt:
            raise RequestRejected("prompt is empty: at least one token is needed", param="prompt")
        limit = self.input_vocab
        bad = [t for t in prompt if not isinstance(t, int) or t < 0 or (limit is not None and t >= limit)]
        if bad:
            allowed = "ids are never negative" if limit is None else f"0..{limit - 1}"
            raise RequestRejected(f"prompt token ids {bad[:5]} are outside the model's vocabulary ({allowed})",
                                  param="prompt")

    def classify(self, adapter: str | None, encodings: list[list[int]],
                 token_type_ids: list[list[int]] | None = None) -> Future:
        """Queue inputs for a classification adapter; the future gives (logits rows x labels, labels): the head's
        raw outputs, since a one-output (regression) head has no probabilities."""
        if not self.classifier:
            raise ValueError("the served base model generates text: use /v1/completions")
        if not encodings:
            raise RequestRejected("input is empty: nothing to classify", param="input")
        for i, ids in enumerate(encodings):  # checked here: in a batch, a bad input would fail others' pass too
            if not ids:
                raise RequestRejected(f"input[{i}] has no tokens once tokenized; it cannot be classified",
                                      param="input")
            if self.input_vocab is not None and not all(0 <= t < self.input_vocab for t in ids):
                raise RequestRejected(f"input[{i}] has token ids outside the model's vocabulary "
                                      f"(0..{self.input_vocab - 1})", param="input")
        job = ClassifyJob(adapter, encodings, token_type_ids, Future())
        self._put([job])
        return job.future

    def load(self, name: str) -> Future:
        """Read and attach ``name`` now; the future gives its labels (None) or the error."""
        future: Future = Future()

        def command() -> None:
            if name in self.pool:
                self.pool.loaded[name].unload_requested = False
                for pending in self._unload_futures.pop(name, []):  # the load cancels them: it stays
                    _settle(pending, False)
                _settle(future, self.pool.loaded[name].labels)
                return
            self._request_read(name, future)

        self._command(command, future)
        return future

    def unload(self, name: str) -> Future:
        """Take ``name`` out of memory once its running rows are done (later requests read it again)."""
        future: Future = Future()

        def command() -> None:
            if name not in self.pool:
                _settle(future, False)
                return
            self.pool.loaded[name].unload_requested = True
            self._unload_futures.setdefault(name, []).append(future)

        self._command(command, future)
        return future

    def _command(self, command: Callable[[], None], future: Future | None = None) -> None:
        """Run ``command`` on the engine thread; once the engine is stopped, ``future`` fails instead."""
        with self._cond:
            if not self._stop:
                self._commands.append(functools.partial(self._guarded, command, future))
                self._cond.notify_all()
                return
        if future is not None:
            _settle(future, error=RuntimeError("the server is shutting down"))

    @staticmethod
    def _guarded(action: Callable[[], None], future: Future | None = None) -> None:
        """Run ``action`` on the engine thread; an error is logged (and given to ``future``), never raised:
        the thread that runs every request must not die of one."""
        try:
            action()
        except Exception as err:
            log.exception("engine: %s failed", getattr(action, "__qualname__", action))
            if future is not None:
                _settle(future, error=err)

    # --- the engine thread
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not (self._stop or self._commands or self._live or self._admissible()):
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    break
                commands = list(self._commands)
                self._commands.clear()
            for command in commands:
                command()
            self._guarded(self._finish_unloads)  # before attaching, which may evict an adapter whose unload waits
            self._guarded(self._attach_ready)
            try:
                with torch.inference_mode():
                    if self.classifier:
                        self._classify_step()
                    else:
                        self._generation_step()
            except Exception as err:  # a forward pass of the whole batch failed: its rows fail, the server goes on
                log.exception("engine: a batch step failed; its %d running rows get the error",
                              len(self._live.rows) if self._live is not None else 0)
                self._fail_live(err)
        stopping = RuntimeError("the server is shutting down")
        self._fail_live(stopping)
        with self._cond:  # nobody may wait for ever on a stopped engine
            waiting, self._waiting = list(self._waiting), deque()
            commands = list(self._commands)
            self._commands.clear()
        for command in commands:  # load/unload requests that came too late register their futures here
            command()
        for item in waiting:
            self._fail_item(item, stopping)
        for futures in [*self._load_futures.values(), *self._unload_futures.values()]:
            for future in futures:
                _settle(future, error=stopping)

    def _admissible(self) -> bool:
        """Whether a waiting item could start now (its adapter is attached or being read)."""
        for item in self._waiting:
            name = item.adapter
            if name is None or name in self.pool or name in self._ready or name in self._failed:
                return True
            if name not in self._reading:
                return True  # starting its read is work too
        return False

    def _request_read(self, name: str, future: Future | None = None) -> None:
        if future is not None:
            self._load_futures.setdefault(name, []).append(future)
        if name in self._reading or name in self._ready:
            return
        self._reading.add(name)
        self._failed.pop(name, None)

        def done(result: ReadAdapter | BaseException) -> None:  # on a loader thread
            def command() -> None:
                self._reading.discard(name)
                if isinstance(result, BaseException):
                    self._failed[name] = result
                    self._resolve_load(name, error=result)
                else:
                    self._ready[name] = result
            self._command(command)

        try:
            self.registry.read_async(name, done)
        except Exception as err:  # the read never started: its requests fail now instead of waiting for ever
            log.exception("engine: reading adapter %r could not start", name)
            self._reading.discard(name)
            self._failed[name] = err
            self._resolve_load(name, error=err)

    def _resolve_load(self, name: str, labels: Any = None, error: BaseException | None = None) -> None:
        for future in self._load_futures.pop(name, []):
            _settle(future, labels, error)

    def _attach_ready(self) -> None:
        for name, adapter in list(self._ready.items()):
            try:
                loaded = self.pool.attach(adapter)
            except PoolFull:
                continue  # retried after rows finish
            except Exception as err:  # refused, or failed (e.g. out of memory): its requests fail, others go on
                if not isinstance(err, AdapterRefused):
                    err = RuntimeError(f"adapter {name!r} could not be attached: {type(err).__name__}: {err}")
                del self._ready[name]
                self._failed[name] = err
                self._resolve_load(name, error=err)
                continue
            del self._ready[name]
            self.metrics.adapter_loaded()
            self._resolve_load(name, labels=loaded.labels)

    def _finish_unloads(self) -> None:
        for name, loaded in list(self.pool.loaded.items()):
            if loaded.unload_requested and loaded.refs == 0:
                self.pool.detach(name)
                self.metrics.adapter_unloaded()
        for name in [n for n in self._unload_futures if n not in self.pool]:  # unloaded (or evicted meanwhile)
            for future in self._unload_futures.pop(name):
                _settle(future, True)

    def _take(self, limit: int, kind: type) -> list[Any]:
        """Waiting items of ``kind`` whose adapter is attached, first come first served, at most ``limit``;
        starts reads for adapters not in memory and fails items whose adapter cannot be served."""
        taken: list[Any] = []
        with self._cond:
            waiting = list(self._waiting)
        keep: list[Any] = []
        for item in waiting:
            name = item.adapter
            if len(taken) >= limit or not isinstance(item, kind):
                keep.append(item)
                continue
            if name is not None and name in self._failed:
                self._fail_item(item, self._failed[name])
                continue
            if name is not None and (name not in self.pool or self.pool.loaded[name].unload_requested):
                if name not in self.pool and name not in self._reading and name not in self._ready:
                    self._request_read(name)
                keep.append(item)
                continue
            self.pool.use(name)
            item.holds_adapter = name is not None
            taken.append(item)
        with self._cond:
            gone = {id(i) for i in waiting if not any(i is k for k in keep)}
            self._waiting = deque(i for i in self._waiting if id(i) not in gone)
        # failures for adapters whose read failed are reported once; later requests read again
        for name in [n for n in self._failed if not any(i.adapter == n for i in keep)]:
            del self._failed[name]
        return taken

    def _release(self, item: GenerationRow | ClassifyJob) -> None:
        """Give back the item's use of its adapter (once, however often this is called)."""
        if item.holds_adapter:
            item.holds_adapter = False
            self.pool.release(item.adapter)

    def _emit(self, row: GenerationRow, kind: str, data: dict[str, Any]) -> None:
        """Hand an event to the row's request; a client side that cannot take it any more (its event loop
        is closed) cancels the row rather than failing the batch."""
        try:
            row.emit(kind, data)
        except Exception as err:
            row.cancelled = True
            log.warning("engine: a %r event for row %d could not be delivered (%s: %s); dropping the row",
                        kind, row.index, type(err).__name__, err)

    def _fail_item(self, item: GenerationRow | ClassifyJob, error: BaseException) -> None:
        """Answer ``item`` with ``error`` (unless it was answered already) and give back its adapter."""
        self._release(item)
        if isinstance(item, ClassifyJob):
            _settle(item.future, error=error)
        elif not item.answered:
            item.answered = True
            self._emit(item, "error", {"index": item.index, "error": error})

    def _finish_row(self, row: GenerationRow, reason: str) -> None:
        self._release(row)
        if not row.answered:
            row.answered = True
            self._emit(row, "done", {"index": row.index, "finish_reason": reason, "tokens": len(row.tokens)})

    def _fail_live(self, error: BaseException) -> None:
        live, self._live = self._live, None
        if live is not None:
            for row in live.rows:
                self._fail_item(row, error)

    # --- generation
    def _generation_step(self) -> None:
        live = self._live
        free = self.max_batch - (len(live.rows) if live is not None else 0)
        if free > 0 and (live is None or live.growable):
            new = []
            for row in self._take(free, GenerationRow):
                if row.cancelled:  # the client went away while it waited
                    self._finish_row(row, "cancelled")
                else:
                    new.append(row)
            try:
                for batch in self._prefill(new):
                    self._join(batch)
            except Exception as err:  # unforeseen: no row taken from the queue may be left without an answer
                for row in new:
                    self._fail_item(row, err)  # (once: rows that already got an answer are skipped)
                raise
            live = self._live
        if live is None or not live.rows:
            self._live = None
            return
        tokens, broken = live.choose()
        unusable = set(broken)
        keep: list[int] = []
        for j, (row, token) in enumerate(zip(live.rows, tokens, strict=True)):
            if j in unusable and not row.cancelled:
                self._fail_item(row, RuntimeError(
                    f"the model's next-token scores for this request are not finite (NaN or infinite) after "
                    f"{len(row.tokens)} generated tokens"
                    + (f"; adapter {row.adapter!r} may hold weights that overflow" if row.adapter else "")))
                continue
            try:
                finish = self._advance(row, token)
            except Exception as err:  # this row's own bookkeeping (decoding, stop strings): only it fails
                log.exception("engine: generation row %d (adapter %r) failed", row.index, row.adapter)
                self._fail_item(row, err)
                continue
            if finish is None:
                keep.append(j)
                continue
            self._finish_row(row, finish)
        self.metrics.generated(len(live.rows))
        live.keep(keep)
        if not live.rows:
            self._live = None
            return
        self.pool.routing.set_rows([self.pool.routed_name(r.adapter) for r in live.rows])
        live.step()

    def _prefill(self, rows: list[GenerationRow]) -> list[LiveBatch[GenerationRow]]:
        """Start ``rows`` (one batch when that works). If the prefill raises, smaller groups are tried, so the
        error reaches only the rows it belongs to (a row that fails alone); they get it, and their adapter back."""
        if not rows:
            return []
        try:
            self.pool.routing.set_rows([self.pool.routed_name(r.adapter) for r in rows])
            batch = LiveBatch(self.lm, [r.prompt for r in rows], rows, [r.sampling for r in rows], self.pad_id,
                              headroom=max(r.max_tokens for r in rows))
        except Exception as err:
            error = err
        else:
            self.metrics.prefill(sum(len(r.prompt) for r in rows))
            return [batch]
        if len(rows) > 1 and self._stackable:  # (outside the except block: no chained tracebacks in the log)
            log.warning("engine: prefill of %d rows failed (%s: %s); trying smaller groups", len(rows),
                        type(error).__name__, error)
            half = len(rows) // 2
            return self._prefill(rows[:half]) + self._prefill(rows[half:])
        log.error("engine: prefill failed for %d row(s) (adapters %s); their requests get the error",
                  len(rows), sorted({str(r.adapter) for r in rows}), exc_info=error)
        for row in rows:
            self._fail_item(row, error)
        return []

    def _join(self, batch: LiveBatch[GenerationRow]) -> None:
        """Make ``batch`` (just prefilled) part of the running one."""
        if self._live is None:
            self._live = batch
            return
        try:
            self._live = self._live.stack(batch)
        except Exception as err:  # the running cache may be half extended: neither batch can go on
            log.exception("engine: adding %d rows to the running batch failed", len(batch.rows))
            for row in batch.rows:
                self._fail_item(row, err)
            self._fail_live(err)

    def _advance(self, row: GenerationRow, token: int) -> str | None:
        """Take ``token`` into ``row``; the finish reason when the row is done."""
        if row.cancelled:
            return "cancelled"
        eos = self.eos | row.stop_ids if row.stop_ids else self.eos
        end = take_token(token, row.tokens, row.max_tokens, eos)  # EOS and max tokens as in ``generate``
        if end == "stop":
            self._flush(row)
            return "stop"
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        piece, stopped = row.stop_text.update(text)
        if piece:
            self._emit(row, "text", {"index": row.index, "text": piece})
        if stopped:
            return "stop"
        if end == "length":
            self._flush(row, text)
        return end

    def _flush(self, row: GenerationRow, text: str | None = None) -> None:
        if text is None:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        piece = row.stop_text.finish(text)
        if piece:
            self._emit(row, "text", {"index": row.index, "text": piece})

    # --- classification
    def _classify_step(self) -> None:
        jobs = self._take(self.max_batch, ClassifyJob)
        if not jobs:
            return
        try:
            out: dict[int, list[torch.Tensor]] = {id(job): [] for job in jobs}
            rows = [(job, i) for job in jobs for i in range(len(job.encodings))]
            size = self.max_batch * 4
            for start in range(0, len(rows), size):  # a job may span several forward passes
                self._classify_chunk([r for r in rows[start:start + size] if not r[0].future.done()], out)
            for job in jobs:
                if not job.future.done():
                    try:
                        labels = self.pool.loaded[job.adapter].labels if job.adapter is not None else None
                        _settle(job.future, (torch.stack(out[id(job)]).cpu(), labels))
                    except Exception as err:  # this job's own result: only it fails
                        log.exception("engine: classification result of one job failed")
                        self._fail_item(job, err)
        except Exception as err:
            log.exception("engine: a classification step failed; its %d jobs get the error", len(jobs))
            for job in jobs:
                self._fail_item(job, err)
        finally:
            for job in jobs:
                self._release(job)

    def _classify_chunk(self, rows: list[tuple[ClassifyJob, int]], out: dict[int, list[torch.Tensor]]) -> None:
        """Classify ``rows``, adding each row's scores to ``out``; when the forward pass raises, each job is
        retried alone so that only the job at fault gets the error."""
        if not rows:
            return
        try:
            scores = self._classify_rows(rows)
        except Exception as err:
            error = err
        else:
            for (job, _), value in zip(rows, scores, strict=True):
                out[id(job)].append(value)
            return
        jobs = list({id(job): job for job, _ in rows}.values())
        if len(jobs) > 1:
            log.warning("engine: classification of %d jobs failed (%s: %s); trying each alone", len(jobs),
                        type(error).__name__, error)
            for job in jobs:
                self._classify_chunk([r for r in rows if r[0] is job], out)
            return
        log.error("engine: classification job failed (adapter %r)", jobs[0].adapter, exc_info=error)
        self._fail_item(jobs[0], error)

    def _classify_rows(self, rows: list[tuple[ClassifyJob, int]]) -> list[torch.Tensor]:
        width = max(len(job.encodings[i]) for job, i in rows)
        device = next(self.model.parameters()).device
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        has_types = any(job.token_type_ids is not None for job, _ in rows)
        for k, (job, i) in enumerate(rows):  # right padding: what the classification heads were trained with
            seq = job.encodings[i]
            ids[k, :len(seq)] = torch.tensor(seq)
            mask[k, :len(seq)] = 1
            if job.token_type_ids is not None:
                types[k, :len(seq)] = torch.tensor(job.token_type_ids[i])
        self.pool.routing.set_rows([self.pool.routed_name(job.adapter) for job, _ in rows])
        kwargs = {"token_type_ids": types.to(device)} if has_types else {}
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits.float()
        self.metrics.prefill(int(mask.sum()))
        base_width = getattr(self.model.config, "num_labels", logits.shape[-1])
        out = []
        for k, (job, _) in enumerate(rows):  # heads of other widths come back NaN-padded to the widest
            width = (self.pool.loaded[job.adapter].width if job.adapter is not None else None) or base_width
            out.append(logits[k, :width])
        return out


def input_rows(model: nn.Module) -> int | None:
    """How many token ids the model takes (its input embedding's rows; may exceed the tokenizer's)."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embedding = None
    for module in (embedding, getattr(embedding, "base_layer", None)):
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding) or (isinstance(weight, torch.Tensor) and weight.dim() == 2):
            return int(module.num_embeddings if isinstance(module, nn.Embedding) else weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Give ``future`` its result or error unless it has one: a client that went away cancels the future it
    awaited (``asyncio.wrap_future``), and setting a cancelled one would raise on the engine thread."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
