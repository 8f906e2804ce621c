"""The one execution engine: forms batches, runs the model, finishes jobs.

Every front door reaches the model through an :class:`Engine` and nothing else: ``Predictor.predict`` /
``embed`` (windows and multi-head included), ``headreg serve``'s cross-request queue (which keeps only its
queueing policy and hands its chosen batches to :meth:`Engine.execute`), Ray Data, Ray Serve, Spark,
``headreg bench``, the benchmarks, and verification: export, ``headreg verify`` and int8/bf16 acceptance run
their onnxruntime side *and* their PyTorch reference through an engine (PyTorch plugs in as a backend), so what
is verified is what production runs — the same padding, the same slicing, the same postprocess.

The steps:

1. **prepare** (the Predictor: check and tokenize one call's inputs into a :class:`Job` of :class:`Row`);
2. **plan**: group rows into batches (length-sorted, capped by rows and a token budget; rows of equal length
   only for a bundle recorded as ``batch_padding: false``);
3. **run**: pad one batch the way the variant needs, run the backend, cut each row's own outputs out (the only
   place that knows about padding), and check them finite;
4. **finish**: per job, merge windows and give each head's postprocess the rows' own outputs.

A failure is the failing job's alone: a batch that fails with rows of several jobs runs again job by job, a
row with non-finite outputs fails its job only, and a postprocess that raises fails its job only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import HeadregError, PredictionError
from . import windows as _windows
from .batching import pad_batch, plan_batches, real_span
from .embedding import embedding
from .heads import graph_outputs

Text = str | tuple[str, str]


@dataclass
class Row:
    """One model row: an input, or one window of a long input."""

    item: int  # index of the input within its job
    encoding: Any  # tokenizers.Encoding (or anything with ids, type_ids and len), unpadded
    window: int = 0  # window number within its input
    overlap: int = 0  # tokens this input's neighbouring windows share (long_text="window")


@dataclass(eq=False)
class Job:
    """One call's worth of work: the inputs, their rows, and how to turn the rows' outputs into results.

    Rows of many jobs may share a batch; a job's results are computed in :meth:`Engine.finish` from its own rows'
    outputs only, so they never depend on batchmates. ``config``: the heads' postprocess configs by head name,
    merged with the call's options (only the heads that answer); ``options``: the call's runtime options.
    """

    inputs: list[Text]
    rows: list[Row]
    config: dict[str, dict[str, Any]]
    kind: str = "predict"  # "predict" | "embed"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """How a bundle's model takes rows and gives outputs: what padding and slicing need to know."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    output_axes: Mapping[str, str]  # output -> "token" ([batch, sequence, ...]) | "row" ([batch, ...]) | "shared"
    pad_id: int = 0
    padding_side: str = "right"
    pad_to_multiple_of: int = 1  # a variant whose kernels change with the padded length (OpenVINO bf16)
    input_dtype: Any = np.int64
    batch_padding: bool = True  # False: the model's rows change with padding, so batch equal lengths only


Backend = Any  # anything with run(feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]


class Engine:
    """Batches, runs and finishes jobs for one model (a backend) and its heads.

    ``heads``: the bundle's :class:`headreg.runtime.heads.RuntimeHead` list (a single-head bundle is the
    one-member case). ``by_head``: results are dicts by head name (a multi-head bundle, whatever its number of
    heads); otherwise the only head's result itself. ``batch_size`` / ``max_batch_tokens``: the plan's caps.
    """

    def __init__(self, backend: Backend, layout: Layout, heads: Sequence[Any], *, batch_size: int,
                 max_batch_tokens: int | None, by_head: bool = False):
        self.backend = backend
        self.layout = layout
        self.heads = list(heads)
        self.by_head = by_head
        self.batch_size = int(batch_size)
        self.max_batch_tokens = max_batch_tokens

    def with_backend(self, backend: Backend) -> "Engine":
        """The same engine over another backend (verification runs PyTorch through the engine this way)."""
        return Engine(backend, self.layout, self.heads, batch_size=self.batch_size,
                      max_batch_tokens=self.max_batch_tokens, by_head=self.by_head)

    def with_layout(self, **changes: Any) -> "Engine":
        """The same engine with some layout fields changed (checks and benchmarks: another padding side, equal-length
        batches), e.g. ``engine.with_layout(padding_side="right")``."""
        return Engine(self.backend, replace(self.layout, **changes), self.heads, batch_size=self.batch_size,
                      max_batch_tokens=self.max_batch_tokens, by_head=self.by_head)

    # --- plan -----------------------------------------------------------------------------------------------

    def plan(self, lengths: Sequence[int], *, batch_size: int | None = None, bucket: bool = True) -> list[list[int]]:
        """Row indices per batch for rows of these token ``lengths`` (length-sorted, capped; see batching.py).

        ``bucket=False``: chunks of ``batch_size`` rows in arrival order, each padded to its own longest row, no
        token budget — the baseline benchmarks compare bucketing with (same engine, same run and finish).
        """
        return plan_batches(self.widths(lengths), int(batch_size or self.batch_size),
                            self.max_batch_tokens if bucket else None, sort=bucket,
                            equal_lengths=not self.layout.batch_padding)

    def widths(self, lengths: Sequence[int]) -> list[int]:
        """Each row's padded width: its length rounded up to the variant's multiple (rows of one block cost alike,
        so plans and cost models see what runs). Lengths as they are for a bundle that batches equal lengths only."""
        multiple = self.layout.pad_to_multiple_of
        if multiple <= 1 or not self.layout.batch_padding:
            return list(lengths)
        return [-(-max(int(n), 1) // multiple) * multiple for n in lengths]

    # --- run ------------------------------------------------------------------------------------------------

    def pad(self, encodings: Sequence[Any], width: int | None = None) -> dict[str, np.ndarray]:
        """Model inputs for one batch, padded the way this variant needs (``width``: pad further, as a check)."""
        layout = self.layout
        return pad_batch(encodings, layout.input_names, layout.pad_id, layout.padding_side, layout.input_dtype,
                         width=width, multiple=layout.pad_to_multiple_of)

    def run_rows(self, rows: Sequence[Row], names: Sequence[str] | None = None, *,
                 width: int | None = None) -> list[dict[str, np.ndarray]]:
        """Run one batch of rows (any jobs) and return each row's own outputs, padding cut away.

        Token-level outputs keep the row's real positions only; outputs without a batch axis (a CRF's transition
        matrix) are shared by every row. Raises :class:`NonFiniteRows` when some rows' outputs are NaN/Inf
        (the others' outputs ride along, so only the culprits' jobs fail).
        """
        if not rows:
            return []
        names = list(names) if names is not None else list(self.layout.output_names)
        feed = self.pad([row.encoding for row in rows], width)
        values = self.backend.run(feed, names)
        per_row = self.cut(feed["attention_mask"], [values[name] for name in names], names)
        bad = [index for index, out in enumerate(per_row)
               if not all(np.isfinite(value).all() for value in out.values() if np.issubdtype(np.asarray(value).dtype, np.floating))]
        if bad:
            raise NonFiniteRows(bad, per_row)
        return per_row

    def cut(self, mask: np.ndarray, values: Sequence[np.ndarray], names: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """Each row's own outputs from batch outputs padded as ``mask`` says (:func:`cut_rows` with this layout)."""
        return cut_rows(mask, dict(zip(names, values)), self.layout.output_axes, self.layout.padding_side)

    def execute(self, batch: Sequence[tuple[Job, int]]) -> tuple[list[dict[str, np.ndarray] | None], dict[Job, BaseException]]:
        """Run one batch of ``(job, row index)`` entries: each entry's outputs, and the jobs that failed.

        A batch that fails with rows of several jobs runs again job by job, so only the culprit fails; a row
        whose outputs are not finite fails its own job. A failed job's entries get ``None``.
        """
        outputs: list[dict[str, np.ndarray] | None] = [None] * len(batch)
        failed: dict[Job, BaseException] = {}
        names = self.output_names_for([job for job, _ in batch])
        try:
            results = self.run_rows([job.rows[index] for job, index in batch], names)
        except NonFiniteRows as exc:
            results = exc.outputs
            for position in exc.rows:
                job, index = batch[position]
                failed.setdefault(job, PredictionError(
                    f"the model gave NaN or Inf for input {job.rows[index].item}: the bundle is broken or does not fit "
                    "this backend; run headreg verify on it, or export it again"))
        except Exception as exc:  # noqa: BLE001 - a model failure is answered per job, never kills the caller
            jobs = list(dict.fromkeys(job for job, _ in batch))
            if len(jobs) == 1:
                return outputs, {jobs[0]: PredictionError(f"the model failed: {type(exc).__name__}: {exc}")}
            for job in jobs:
                mine = [position for position, (owner, _) in enumerate(batch) if owner is job]
                sub, sub_failed = self.execute([batch[position] for position in mine])
                failed.update(sub_failed)
                for position, out in zip(mine, sub):
                    outputs[position] = out
            return outputs, failed
        for position, out in enumerate(results):
            if batch[position][0] not in failed:
                outputs[position] = out
        return outputs, failed

    def output_names_for(self, jobs: Sequence[Job]) -> list[str]:
        """The graph outputs these jobs need (a multi-head predict call fetches only its heads' outputs:
        onnxruntime then skips the other heads' layers and poolings)."""
        if any(job.kind == "embed" for job in jobs) or len(self.heads) == 1:
            return list(self.layout.output_names)
        wanted = {name for job in jobs for name in job.config}
        names = set(graph_outputs([head for head in self.heads if head.name in wanted]))
        return [name for name in self.layout.output_names if name in names]

    # --- finish ---------------------------------------------------------------------------------------------

    def finish(self, job: Job, outputs: Sequence[Mapping[str, np.ndarray]]) -> list[Any]:
        """One result per input, in order, from the outputs of the job's rows (aligned with ``job.rows``).

        Each head's postprocess gets the rows' own outputs under the head's names; a single-head bundle's
        result is that head's, a multi-head bundle's a dict by head name (decided here, once).
        """
        if len(outputs) != len(job.rows):
            raise HeadregError(f"finish got {len(outputs)} row outputs for a job of {len(job.rows)} rows")
        if not job.rows:
            return []
        rows, outputs = self._merge_windows(job, outputs) if len(job.rows) != len(job.inputs) else (job.rows, outputs)
        if job.kind == "embed":
            return [embedding(out["pooled_output"], job.options) for out in outputs]
        encodings = [row.encoding for row in rows]
        texts = [job.inputs[row.item] for row in rows]
        answers = {head.name: head.run(outputs, encodings, texts, job.config[head.name])
                   for head in self.heads if head.name in job.config}
        if not self.by_head:  # the one place a single-head bundle's bare result is decided
            results = answers[self.heads[0].name]
            if job.options.get("return_logits"):  # the raw scores some protocols ask for (sequence heads)
                logits = self.heads[0].outputs["logits"]
                results = [{**result, "logits": np.asarray(out[logits], dtype=np.float32).tolist()}
                           for result, out in zip(results, outputs)]
            return results
        return [{name: results[i] for name, results in answers.items()} for i in range(len(rows))]

    def _merge_windows(self, job: Job, outputs: Sequence[Mapping[str, np.ndarray]]) -> tuple[list[Row], list[dict]]:
        """One row per input: its windows merged over the whole text (see runtime/windows.py)."""
        reduce = _windows.window_options(job.options).reduce
        # each token head's labels, so the merge can see where each window's entities are
        labels = {head.outputs["logits"]: head.labels for head in self.heads if head.level == "token" and head.labels}
        by_item: dict[int, list[int]] = {}
        for index, row in enumerate(job.rows):
            by_item.setdefault(row.item, []).append(index)
        rows: list[Row] = []
        merged: list[dict[str, np.ndarray]] = []
        for item in range(len(job.inputs)):
            members = sorted(by_item.get(item, []), key=lambda i: job.rows[i].window)
            if not members:
                raise HeadregError(f"finish got no rows for input {item}")
            sequence = 0 if isinstance(job.inputs[item], str) else 1
            whole, out = _windows.merge_windows(
                [job.rows[i].encoding for i in members], [outputs[i] for i in members], self.layout.output_axes,
                job.rows[members[0]].overlap, sequence, reduce, labels,
            )
            rows.append(Row(item, whole))
            merged.append(out)
        return rows, merged

    # --- the whole path, for callers that hold every job at once ----------------------------------------------

    def run(self, jobs: Sequence[Job], *, batch_size: int | None = None, bucket: bool = True,
            on_batch: Callable[[int, float], None] | None = None) -> list[list[Any] | BaseException]:
        """plan -> execute -> finish over the rows of ``jobs``: per job its results, or the exception that failed it.

        Rows of all jobs are planned together (so many small jobs still make full batches). ``on_batch(rows,
        seconds)`` is called after each batch (benchmarks time batches with it).
        """
        outputs, failed = self.compute(jobs, batch_size=batch_size, bucket=bucket, on_batch=on_batch)
        return [failed[job] if job in failed else self.finish_safely(job, outputs[job]) for job in jobs]

    def compute(self, jobs: Sequence[Job], *, batch_size: int | None = None, bucket: bool = True,
                on_batch: Callable[[int, float], None] | None = None,
                ) -> tuple[dict[Job, list[dict[str, np.ndarray]]], dict[Job, BaseException]]:
        """plan -> execute over the rows of ``jobs``: each job's row outputs (aligned with ``job.rows``), and the
        jobs that failed. What :meth:`run` finishes; verification compares these row by row."""
        import time

        entries = [(job, index) for job in jobs for index in range(len(job.rows))]
        outputs: dict[Job, list[Any]] = {job: [None] * len(job.rows) for job in jobs}
        failed: dict[Job, BaseException] = {}
        lengths = [len(job.rows[index].encoding) for job, index in entries]
        for batch in self.plan(lengths, batch_size=batch_size, bucket=bucket):
            chosen = [entries[position] for position in batch if entries[position][0] not in failed]
            if not chosen:
                continue
            start = time.perf_counter()
            results, batch_failed = self.execute(chosen)
            if on_batch is not None:
                on_batch(len(chosen), time.perf_counter() - start)
            failed.update(batch_failed)
            for (job, index), out in zip(chosen, results):
                outputs[job][index] = out
        return outputs, failed

    def finish_safely(self, job: Job, outputs: Sequence[Mapping[str, np.ndarray]]) -> list[Any] | BaseException:
        """:meth:`finish`, with a failure returned as the job's exception (a head's postprocess is plugin code)."""
        try:
            return self.finish(job, outputs)
        except HeadregError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a postprocess failing fails its job only
            return PredictionError(f"postprocess failed: {type(exc).__name__}: {exc}")


def cut_rows(mask: np.ndarray, values: Mapping[str, np.ndarray], axes: Mapping[str, str],
             padding_side: str) -> list[dict[str, np.ndarray]]:
    """Each row's own outputs from batch outputs padded as ``mask`` says: the one place slicing is done.

    ``axes`` per output: ``token`` keeps the row's real positions, ``shared`` (no batch axis, e.g. a CRF's
    transition matrix) goes to every row whole, anything else is the row's own entry.
    """
    attended = mask.sum(axis=1)
    width = mask.shape[1]
    per_row: list[dict[str, np.ndarray]] = [{} for _ in range(mask.shape[0])]
    for name, value in values.items():
        kind = axes.get(name, "row")
        for index, out in enumerate(per_row):
            out[name] = (value if kind == "shared" else value[index] if kind != "token"
                         else value[index, real_span(width, int(attended[index]), padding_side)])
    return per_row


class NonFiniteRows(HeadregError):
    """Rows whose outputs hold NaN or Inf (``rows``: their positions in the batch; ``outputs``: every row's)."""

    def __init__(self, rows: list[int], outputs: list[dict[str, np.ndarray]]):
        super().__init__(f"the model gave NaN or Inf for rows {rows}")
        self.rows = rows
        self.outputs = outputs

