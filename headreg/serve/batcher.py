"""Cross-request batching: one queue and its model threads per bundle, in front of the runtime engine.

This module is the server's queueing policy only; the engine (runtime/engine.py) runs and finishes the work,
as it does for ``Predictor.predict``. A request is tokenized on its own (``Predictor.prepare``: on the event
loop when small, else in a thread pool); its rows join the bundle's queue. A free model thread takes
queued rows with the requests taking turns (one row from each queued request, in rotation order, then a second
from each, ...) up to the token budget and the row cap, orders them by length with ``Engine.plan``, runs the
planned batch that holds the first of them with ``Engine.execute`` (the plan's other rows stay queued and lead
the next batch) and hands each row's output to its request; a request the
engine failed (its batchmates are not affected) gets its error. A request whose rows are all back is finished
(``Engine.finish``: the head's postprocess on that request's rows alone) while the model thread already runs
its next batch.

Why a thread per bundle and not the event loop: a thread that takes the next batch the moment the previous one
returns keeps the model busy without an event-loop round trip. ``workers=N`` (``headreg serve
--model-workers``) runs N such threads on one queue. By default (``workers=None``, :func:`auto_workers`) an
onnxruntime bundle gets two that share the session's intra-op threads: a lone batch still runs on all of
them, and two batches at once each keep computing when the other holds a core, where one batch's threads would
wait for each other at every operator. There is no waiting for a batch to fill: an idle model runs whatever is
queued at once, and while it runs, the rows of new requests gather into the next batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import PredictionError
from ..runtime import windows as _windows
from ..runtime.cpus import available_cpus
from ..runtime.inputs import InputError
from .errors import RequestError
from .memory import ATTENTION_CELLS, TRIM_AT, Trimmer
from .metrics import ServeMetrics


# Small requests are tokenized and postprocessed right on the event loop: for them the work (tens of
# microseconds) is smaller than a hop to a pool thread and back, and on a busy machine every hop waits for
# a core. Bigger ones go to the thread pool so the loop keeps answering other requests meanwhile.
INLINE_CHARS = 2048  # characters of input per request
INLINE_TOKENS = 512  # tokens of a job's rows, for its postprocess
# A request of this many characters or more owes a trim when it ends: its tokenized job held ~16 MB or more (more
# in windows), freed in the tokenizing threads' heaps, which no batch's trim would otherwise hand back when no
# batch of it ran. Smaller ones leave too little to be worth a trim (12-55 ms, memory.py).
TRIM_AFTER_CHARS = 262_144
# The fixed cost of one model call, in tokens of work: MiniLM fp32 on 2 threads takes 6.1 ms for 1 x 16 tokens
# and 14.7 ms for 1 x 128 (docs/performance.md), about 5 ms + 0.08 ms per token, so a call costs as much as
# ~60 tokens. A few queued rows of very different lengths run cheaper as two calls than as one padded to the
# longest; offline, sorting thousands of inputs makes neighbours alike, the server sees a handful at a time.
CALL_COST_TOKENS = 60


def _chars(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    return sum(len(side) for side in item if isinstance(side, str)) if isinstance(item, (tuple, list)) else 0


# Measured with MiniLM fp32 on 2 cores, one text per request, interleaved (docs/serving.md): two batches on one
# shared pool of 2 threads answered 1.07-1.27x the req/s of one batch at 8 and 32 clients, at the same latency for
# a lone client (0.95-1.09x). Splitting the threads instead (2 batches x 1 thread, --model-workers 2) answers
# more under load but makes a lone request ~25% slower, so it stays a choice.
AUTO_WORKERS = 2


def auto_workers(predictor: Any) -> int:
    """Batches of ``predictor`` that run at once when ``headreg serve`` is given no ``--model-workers``.

    Two on an onnxruntime session with more than one intra-op thread; one otherwise: an OpenVINO variant's
    streams split its threads (a lone request would get half of them), and a one-thread session has none to share.
    """
    backend = getattr(predictor, "backend", None)
    session = getattr(backend, "session", None)
    if getattr(backend, "name", None) != "onnxruntime" or session is None:
        return 1
    threads = session.get_session_options().intra_op_num_threads or available_cpus()  # 0: onnxruntime's own choice
    return AUTO_WORKERS if threads > 1 else 1


class InferenceError(PredictionError):
    """Running the model (or the head's postprocess) failed for one request; the server keeps serving."""


@dataclass(eq=False)
class _Request:
    job: Any
    future: asyncio.Future
    outputs: list[Any] = field(default_factory=list)
    remaining: int = 0
    done: bool = False  # answered or failed: its rows still queued are skipped (model threads: under Batcher._counts)

    def deliver(self, index: int, output: Any) -> bool:
        """Store one row's output; True when that was the request's last row."""
        if self.done:
            return False
        self.outputs[index] = output
        self.remaining -= 1
        if self.remaining == 0:
            self.done = True
            return True
        return False

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.done = True
            self.future.get_loop().call_soon_threadsafe(_resolve, [(self, exc)])


def _resolve(answers: list[tuple[_Request, BaseException | None]]) -> None:
    """On the event loop: wake the requests of one batch (one cross-thread call per batch, not per request)."""
    for request, exc in answers:
        if request.future.done():  # the client went away and its handler was cancelled
            continue
        if exc is not None:
            request.future.set_exception(exc)
        else:
            request.future.set_result(request.outputs)


def split_padding(batch: list[int], lengths: Sequence[int], call_cost: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Split a length-sorted batch where that costs less than the padding it saves.

    Cost of a batch: ``call_cost + rows x longest row`` (tokens of work); the split with the least total cost
    is found exactly (a 1-D partition over at most ``max_batch_size`` rows, so quadratic is cheap).

    >>> split_padding([0, 1, 2, 3], [10, 12, 11, 120])
    [[0, 2, 1], [3]]
    """
    order = sorted(batch, key=lambda i: lengths[i])
    sizes = [max(int(lengths[i]), 1) for i in order]
    best, cut = [0] + [0] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        best[end], cut[end] = min((best[start] + call_cost + (end - start) * sizes[end - 1], start)
                                  for start in range(end))
    parts, end = [], len(order)
    while end:
        parts.append(order[cut[end]:end])
        end = cut[end]
    return parts[::-1]


def cap_attention(batch: list[int], lengths: Sequence[int], cells: int = ATTENTION_CELLS) -> list[list[int]]:
    """Cut a length-sorted batch into runs of at most ``cells`` attention cells (rows x longest row squared;
    a row longer than that runs alone).

    >>> cap_attention([0, 1, 2, 3], [100, 200, 256, 256], cells=2 * 256 * 256)
    [[0, 1], [2, 3]]
    """
    parts: list[list[int]] = []
    for index in batch:
        if parts and (len(parts[-1]) + 1) * max(max(int(lengths[index]), 1), int(lengths[parts[-1][-1]])) ** 2 <= cells:
            parts[-1].append(index)
        else:
            parts.append([index])
    return parts


class TokenBudget:
    """The tokens of the requests a server holds at once, across its models: a request's tokenized job (its rows'
    encodings, windows included: ~100-270 bytes per token) lives until its answer is sent, so this bounds the
    memory admitted requests hold however many slots are free. ``take`` refuses a request that would pass it:
    413 when it alone would (it can never run here), else 429 until others finish. Used on the event loop only."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.held = 0

    def take(self, tokens: int) -> None:
        self.check(tokens)
        self.held += tokens

    def check(self, tokens: int, at_least: bool = False) -> None:
        """RequestError when ``tokens`` (``at_least``: a lower bound, known before tokenizing) cannot be held now."""
        needs = f"{'at least ' if at_least else ''}{tokens}"
        if tokens > self.limit:
            raise RequestError(
                413, f"this request tokenizes to {needs} tokens (windows included), more than the {self.limit} the "
                "server holds at once (--max-tokens-in-flight); send fewer or shorter texts, or fewer windows "
                "(max_windows, a smaller window_stride)")
        if self.held + tokens > self.limit:
            raise RequestError(
                429, f"the server holds {self.held} tokens of requests already and this one needs {needs} more, past "
                f"its limit of {self.limit} (--max-tokens-in-flight); retry shortly", {"Retry-After": "1"})

    def give_back(self, tokens: int) -> None:
        self.held -= tokens


class Batcher:
    """The queue and model thread of one bundle. ``await submit(inputs, ...)`` answers one request.

    ``max_batch_tokens``: tokens (without padding) taken from the queue per batch; the plan then also keeps
    ``rows x longest row`` within it (the Predictor's own rule). ``max_batch_size``: rows per batch.
    ``max_batch_cells``: rows x longest row squared per batch (see ``ATTENTION_CELLS``).
    """

    def __init__(self, name: str, predictor: Any, *, max_batch_tokens: int, max_batch_size: int,
                 metrics: ServeMetrics | None = None, trim_memory: bool = False,
                 max_batch_cells: int = ATTENTION_CELLS, workers: int | None = None, budget: TokenBudget | None = None):
        self.name = name
        self.predictor = predictor
        self.engine = predictor.engine
        workers = auto_workers(predictor) if workers is None else workers
        self.workers = max(int(workers), 1)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        # batches running at once share the attention budget: together they hold what one batch may
        self.max_batch_cells = max(int(max_batch_cells) // self.workers, 1)
        self.metrics = metrics or ServeMetrics()
        # Each queued request's rows still to run, in rotation order (see _take); _rows counts them all.
        self._queue: OrderedDict[_Request, deque[int]] = OrderedDict()
        self._rows = 0
        self._queued_rows = self.metrics.queue_rows.labels(name)
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"headreg-model-{name}-{index}", daemon=True)
                         for index in range(self.workers)]
        self._counts = threading.Lock()  # the workers' shared counters and deliveries
        self.batches = 0
        self.rows = 0
        # a full batch, at this batcher's cap, makes a trim owed (with N workers each batch holds 1/N of it)
        self.trimmer = Trimmer(trim_memory, threshold=min(TRIM_AT, self.max_batch_cells))
        self.budget = budget
        self._tokenizing = concurrent.futures.ThreadPoolExecutor(available_cpus(), f"headreg-tokenize-{name}")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        """Run what is queued, then stop the model thread (requests still in flight get their answers)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._tokenizing.shutdown(wait=False, cancel_futures=True)

    @property
    def mean_batch_size(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    async def submit(self, inputs: Sequence[Any], *, kind: str = "predict", parameters: dict[str, Any] | None = None,
                     stats: dict[str, Any] | None = None) -> Any:
        """Tokenize, queue, wait for the rows, postprocess: ``Predictor.predict``/``embed``'s result for ``inputs``.

        Raises ``InputError`` for inputs or parameters the Predictor refuses, ``InferenceError`` when the
        model or the postprocess fails for this request. ``stats["rows"]`` gets the number of model rows,
        ``stats["tokens"]`` their tokens (special tokens included, no padding).
        """
        parameters = dict(parameters or {})
        inputs = list(inputs)
        chars = sum(map(_chars, inputs))
        if chars <= INLINE_CHARS:
            return await self._answer(self.predictor.prepare(inputs, kind, **parameters), stats)
        big = chars >= TRIM_AFTER_CHARS
        if self.budget is not None:  # a windowed request that cannot fit is refused before its windows are cut
            options = _windows.window_options(parameters)
            if options.windowed:
                special = self.predictor.tokenizer.num_special_tokens_to_add(False)
                at_least = _windows.window_tokens_at_least(inputs, self.predictor.max_length, special, options.overlap)
                self.budget.check(at_least, at_least=True)
        try:
            return await self._answer(await self._prepare_apart(inputs, kind, parameters, big), stats)
        finally:
            if big:  # what tokenizing it took is freed once it ends: hand it back when the model idles
                self._owe_trim()

    async def _prepare_apart(self, inputs: list[Any], kind: str, parameters: dict[str, Any], big: bool) -> Any:
        """A big request's job, tokenized in this bundle's tokenizing threads (one per CPU) while the event loop
        goes on answering. Tokenizing is CPU-bound and a job holds its windows' encodings (2 MB of windowed text
        at the smallest window step: ~30,000 windows, ~1.8 GB), so more at once would only add memory. A
        request abandoned meanwhile (hang-up, timeout) frees its job where it was made and owes a trim: no batch
        of it runs, so nothing else would hand that memory back."""
        abandoned = threading.Event()

        def prepare() -> Any:
            job = self.predictor.prepare(inputs, kind, **parameters)
            if abandoned.is_set():
                del job
                if big:
                    self._owe_trim()
                return None
            return job

        try:
            return await asyncio.get_running_loop().run_in_executor(self._tokenizing, prepare)
        except asyncio.CancelledError:
            abandoned.set()  # a task not started yet never runs: the pool drops it
            raise

    def _owe_trim(self) -> None:
        with self._cond:
            if self.trimmer.owe():
                self._cond.notify()  # an idle model thread waits for the trim's time

    async def _answer(self, job: Any, stats: dict[str, Any] | None) -> Any:
        """A prepared job's tokens held in the server's budget (413/429 past it) while it is answered."""
        tokens = sum(len(row.encoding) for row in job.rows)
        if stats is not None:
            stats["rows"] = len(job.rows)
            stats["tokens"] = tokens  # OpenAI's usage, TEI's headers
        if self.budget is None:
            return await self._queue_and_finish(job, tokens)
        self.budget.take(tokens)
        try:
            return await self._queue_and_finish(job, tokens)
        finally:
            self.budget.give_back(tokens)

    async def _queue_and_finish(self, job: Any, tokens: int) -> Any:
        """Queue a job's rows, wait for their outputs, finish it."""
        loop = asyncio.get_running_loop()
        request = _Request(job, loop.create_future(), [None] * len(job.rows), len(job.rows))
        if job.rows:
            with self._cond:
                if self._closed:
                    raise InferenceError(f"model {self.name!r} is shutting down")
                self._queue[request] = deque(range(len(job.rows)))
                self._rows += len(job.rows)
                self._queued_rows.set(self._rows)
                self._cond.notify()
            try:
                outputs = await request.future
            except asyncio.CancelledError:
                request.done = True  # the client is gone: its rows still queued are skipped
                self._drop(request)
                raise
        else:
            outputs = []
        try:
            if tokens <= INLINE_TOKENS:
                return self.engine.finish(job, outputs)
            return await loop.run_in_executor(None, self.engine.finish, job, outputs)
        except InputError:
            raise
        except Exception as exc:
            raise InferenceError(f"postprocess failed: {type(exc).__name__}: {exc}") from exc

    def _drop(self, request: _Request) -> None:
        """Remove a cancelled request's queued rows now: behind a busy model they would hold its tokenized job
        (windows: megabytes) until they reached the head of the queue."""
        with self._cond:
            rows = self._queue.pop(request, None)
            if rows:
                self._rows -= len(rows)
                self._queued_rows.set(self._rows)

    # --- the model thread -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch: list[tuple[_Request, int]] = []
            with self._cond:
                while not self._queue and not self._closed and self.trimmer.due_in() != 0:
                    self._cond.wait(self.trimmer.due_in())
                if self._queue:
                    batch = self._take()
                    self._queued_rows.set(self._rows)
                    if self._queue:  # rows the plan left for another batch: an idle worker may run them now
                        self._cond.notify()
                elif self._closed:
                    return
            if batch:
                self._run(batch)
            elif not self._closed:
                self.trimmer.idle()  # idle with freed memory still held: hand it back (outside the lock: ms)

    def _take(self) -> list[tuple[_Request, int]]:
        """The next batch. Queued requests take turns: one row from each, in rotation order, then a second from
        each that has more, ..., up to the caps; of the length plan of those rows, the batch that holds the first
        one runs. A request that had a row in it moves to the back of the rotation; the others keep their place
        and their rows, so they lead the next batch. A request of many rows (a long document's windows) thus
        shares the model with every request queued behind it instead of making them wait for all its rows."""
        taken: list[tuple[_Request, int]] = []
        tokens = 0
        for request in [request for request in self._queue if request.done]:  # failed or abandoned
            self._rows -= len(self._queue.pop(request))
        depth, full = 0, False
        while not full and len(taken) < self.max_batch_size:
            before = len(taken)
            for request, rows in self._queue.items():
                if depth >= len(rows):
                    continue
                index = rows[depth]
                length = max(len(request.job.rows[index].encoding), 1)
                if len(taken) >= self.max_batch_size or (taken and tokens + length > self.max_batch_tokens):
                    full = True
                    break
                taken.append((request, index))
                tokens += length
            if len(taken) == before:
                break
            depth += 1
        if len(taken) <= 1:
            chosen = list(range(len(taken)))
        else:
            lengths = self.engine.widths([len(request.job.rows[index].encoding) for request, index in taken])
            plan = [capped for batch in self.engine.plan(lengths, batch_size=self.max_batch_size)
                    for part in split_padding(batch, lengths)
                    for capped in cap_attention(part, lengths, self.max_batch_cells)]
            chosen = next(batch for batch in plan if 0 in batch)
        batch = [taken[i] for i in sorted(chosen)]
        for request, index in batch:
            self._queue[request].remove(index)
        self._rows -= len(batch)
        for request in dict.fromkeys(request for request, _ in batch):
            if self._queue[request]:
                self._queue.move_to_end(request)
            else:
                del self._queue[request]
        return batch

    def _run(self, batch: list[tuple[_Request, int]]) -> None:
        rows = [request.job.rows[index] for request, index in batch]
        start = time.perf_counter()
        outputs, failed = self.engine.execute([(request.job, index) for request, index in batch])
        self._record(rows, time.perf_counter() - start)
        self.trimmer.after_batch(len(rows), max(len(row.encoding) for row in rows))
        with self._counts:  # a request's rows may run in two workers' batches at once: one delivers at a time
            for request in dict.fromkeys(request for request, _ in batch):
                if request.job in failed:
                    request.fail(InferenceError(str(failed[request.job])))
            finished = [(request, None) for (request, index), output in zip(batch, outputs)
                        if request.job not in failed and request.deliver(index, output)]
        if finished:
            finished[0][0].future.get_loop().call_soon_threadsafe(_resolve, finished)

    def _record(self, rows: list[Any], seconds: float) -> None:
        lengths = [len(row.encoding) for row in rows]
        metrics, name = self.metrics, self.name
        metrics.batch_rows.labels(name).observe(len(rows))
        metrics.batch_tokens.labels(name).observe(len(rows) * max(lengths + [1]))
        metrics.inference_seconds.labels(name).observe(seconds)
        metrics.rows.labels(name).inc(len(rows))
        metrics.tokens.labels(name).inc(sum(lengths))
        with self._counts:
            self.batches += 1
            self.rows += len(rows)
