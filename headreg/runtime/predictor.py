"""Predictor: an exported bundle served with onnxruntime + tokenizers + numpy (no torch, no transformers).

>>> from headreg.runtime import Predictor
>>> p = Predictor("bundle/", threads=2)                                # doctest: +SKIP
>>> p.predict(["I loved it", "meh"])                                   # doctest: +SKIP
[{'label': 'pos', 'score': 0.98, 'scores': {...}}, {'label': 'neg', ...}]
>>> p.predict([("A man plays.", "Someone plays music.")])             # sentence pairs  # doctest: +SKIP
>>> p.embed(["I loved it"]).shape                                      # pooled_output   # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import BundleError, HeadregError
from . import heads as _heads
from ..manifest import (
    bundle_heads, head_output_problems, is_multi_head, SMALL_FILE_BYTES, TOKENIZER_FILE, TOKENIZER_MAX_BYTES, bundle_path, read_bounded, read_manifest, sha256_file,
)
from . import postprocess as _post
from .batching import pad_batch, plan_batches
from . import windows as _windows
from .embedding import EMBED_OPTIONS, check_embed_options, embedding
from .backends import open_backend
from .inputs import (
    InputError, OptionContext, as_input_list, char_limit, check_inputs, check_options, cut, valid_options,
)
from .variants import select_variant, variant_records

DEFAULT_BATCH_SIZE = 32
# Measured on MiniLM (CPU): rows/s is flat from 4 to 32 rows of 128 tokens, so a smaller token budget
# costs nothing and cuts the padding left inside sorted batches (16 rows of ~128, 32 of <= 64 tokens).
DEFAULT_MAX_BATCH_TOKENS = 2048
# predict()/embed() work through their inputs this many at a time (tokenize, batch, run, postprocess), so
# memory is bounded by the chunk, not the call; sorting within 2048 inputs already leaves almost no padding.
PREDICT_CHUNK = 2048

Text = str | tuple[str, str]


@dataclass
class Row:
    """One model row: an input, or one window of a long input."""

    item: int  # index of the input within its job
    encoding: Any  # tokenizers.Encoding, unpadded
    window: int = 0  # window number within its input
    overlap: int = 0  # tokens this input's neighbouring windows share (long_text="window")


@dataclass
class Job:
    """One call's worth of work: the inputs, their rows, and how to turn the rows' outputs into results.

    Rows of many jobs may share a batch (``headreg serve`` batches across requests); a job's results are
    computed in :meth:`Predictor.finish` from its own rows' outputs only, so they never depend on batchmates.
    """

    inputs: list[Text]
    rows: list[Row]
    config: dict[str, Any]  # the bundle's postprocess config merged with the call's options
    kind: str = "predict"  # "predict" | "embed"
    options: dict[str, Any] = field(default_factory=dict)  # the call's runtime options (not postprocess config)


class Predictor:
    """Load a bundle written by ``headreg export`` and predict with it.

    ``threads``: the backend's threads (onnxruntime intra-op, OpenVINO INFERENCE_NUM_THREADS; default: the
    backend's choice). ``providers``: onnxruntime execution providers (default CPU). ``variant``: a variant of
    the bundle ("fp32", "int8", "bf16"); by default the one :func:`headreg.runtime.variants.select_variant`
    picks for this bundle on this machine (``self.variant`` says which, ``self.variant_reason`` why). The
    variant record names its backend
    (:mod:`headreg.runtime.backends`: onnxruntime, or OpenVINO for bf16); ``self.backend`` runs it.
    ``max_batch_tokens`` / ``batch_size``: caps per batch (rows are length-bucketed, see batching.py).
    ``max_length``: truncate shorter than the bundle's ``max_length`` (never longer). ``max_windows``: with
    ``long_text="window"``, the most windows one input may take (default 256); a call's ``max_windows`` may
    lower it, never raise it, and a longer input is refused before it is tokenized into windows.
    ``trust_remote_code``: import a postprocess the manifest names even when it is not the installed head's.
    ``verify_files``: also check the model file's sha256 against the manifest (the tokenizer and files up to
    16 MB always are; hashing MiniLM's 91 MB model.onnx adds 23-40% to a cold load, see docs/security.md).

    Everything is checked at load (manifest fields, that every file it names is inside the bundle, format
    version, checksums, model inputs and outputs against the manifest and the labels, the tokenizer's ids
    against the model's vocabulary), so a broken or crafted bundle fails here rather than on the first
    request. A Predictor may be shared by threads.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[Any] | None = None,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        variant: str | None = None,
        trust_remote_code: bool = False,
        verify_files: bool = False,
        max_windows: int = _windows.MAX_WINDOWS,
    ):
        for name, value in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens),
                            ("max_length", max_length), ("threads", threads), ("max_windows", max_windows)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest = read_manifest(self.bundle_dir)
        self.batch_size = int(batch_size)
        # long_text="window": the most windows one input may take; a call's max_windows may only lower it
        self.max_windows = int(max_windows)
        self.max_batch_tokens = max_batch_tokens
        self.variant, self.variant_reason = select_variant(manifest, variant)
        self.variant_record = variant_records(manifest)[self.variant]
        model_file = str(self.variant_record["file"])
        if not os.path.lexists(self.bundle_dir / model_file):
            raise BundleError(
                f"{self.bundle_dir} has no {model_file} (variant {self.variant!r} in its manifest); export it again"
                + (" with --quantize int8" if self.variant == "int8" else "")
            )
        self.model_path = bundle_path(self.bundle_dir, model_file, what=f"{self.variant} model file")
        _check_file_hashes(self.bundle_dir, manifest, model_file if verify_files else None)
        self.tokenizer = _load_tokenizer(self.bundle_dir, manifest)
        bundle_max = int(manifest.get("max_length") or 512)
        self.max_length = min(bundle_max, int(max_length)) if max_length else bundle_max
        self.max_chars = char_limit(self.max_length)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        token_info = manifest.get("tokenizer") or {}
        self.pad_id = int(token_info.get("pad_token_id") or 0)
        self.supports_pairs = bool(token_info.get("pair", True))
        self.padding_side = manifest.get("padding_side", "right")
        # false for models whose outputs change with padding: batches then hold rows of one length only
        self.batch_padding = manifest.get("batch_padding", True) is not False
        record = self.variant_record
        try:
            self.backend = open_backend(record, self.model_path, threads=threads, providers=providers)
        except HeadregError:
            raise
        except Exception as exc:  # onnxruntime / OpenVINO raise their own types (InvalidProtobuf, NoSuchFile, Fail)
            raise BundleError(
                f"{self.model_path} is not a loadable ONNX model ({type(exc).__name__}: {exc}); export the bundle again"
            ) from exc
        # onnxruntime variants: the session itself (benchmarks time it directly)
        self.session = getattr(self.backend, "session", None)
        # a variant whose kernels change with the padded length (OpenVINO bf16 across 16-token blocks) is padded
        # to a multiple at which a row's result no longer depends on the batch's longest row
        self.pad_to_multiple_of = int(record.get("pad_to_multiple_of") or 1)
        self.input_names, self.output_names, self._input_dtype = _check_model(self.backend, manifest, self.model_path)
        self._output_axes = _output_axes(manifest, self.backend.output_dims, self.output_names)
        self._local = threading.local()
        self.multi_head = is_multi_head(manifest)
        self.heads = [_runtime_head(manifest, entry, trust_remote_code) for entry in bundle_heads(manifest)]
        if not self.heads:
            raise BundleError(f"{self.bundle_dir / 'headreg.json'} lists no heads; export the bundle again")
        first = self.heads[0]
        # A multi-head bundle answers with a dict by head name; these describe a single-head bundle's head.
        self.head = "+".join(head.name for head in self.heads) if self.multi_head else first.name
        self.level = "multi" if self.multi_head else first.level
        self._postprocess = first.postprocess
        self.config: dict[str, Any] = {} if self.multi_head else dict(first.config)
        self.labels: list[str] = [] if self.multi_head else first.labels
        _check_widths(self.backend, manifest, self.labels, self.model_path)
        for problem in head_output_problems(manifest, self.backend.output_dims):
            raise BundleError(f"{self.model_path}: {problem}")
        for head in self.heads if self.multi_head else ():
            _check_head_width(self.backend, head, self.model_path)
        _check_vocab(self.tokenizer, manifest, self.pad_id, self.bundle_dir)
        self._options = OptionContext(manifest, self.labels, self.config)

    def __repr__(self) -> str:
        return f"Predictor({str(self.bundle_dir)!r}, head={self.head!r}, variant={self.variant!r})"

    # --- public API -------------------------------------------------------------------------------------------

    def predict(self, inputs: Text | Iterable[Text], *, batch_size: int | None = None, **options: Any) -> Any:
        """One result dict per input, in input order (a single string gives a single result).

        ``options`` override the bundle's postprocess config for this call, e.g. ``thresholds=0.3`` or
        ``{"toxic": 0.8}`` (multi_label), ``aggregation="max"`` (token_cls).

        A multi-head bundle gives per input a dict by head name of what each head's single-head bundle gives.
        ``heads=["sentiment"]`` answers for those heads only and fetches only their outputs from the graph;
        ``sentiment={"threshold": 0.3}`` overrides one head's config, other options reach every head that has them.

        Long inputs: ``long_text="truncate"`` (default) cuts at ``max_length``; ``long_text="window"`` predicts
        over overlapping windows, ``window_stride`` tokens shared by neighbours (the overlap; default a quarter
        of a window), token heads take each token from its most central window and aggregate over the whole
        text, sequence heads combine the windows' logits by ``window_reduce`` ("mean" | "max" | "first").
        See runtime/windows.py and docs/runtime.md.
        """
        texts, single = as_input_list(inputs)
        results = self._run_jobs(texts, "predict", batch_size, options)
        return results[0] if single else results

    def embed(self, inputs: Text | Iterable[Text], *, batch_size: int | None = None, **options: Any) -> np.ndarray:
        """``pooled_output`` per input, in input order: float32 ``[len(inputs), hidden]`` (``[hidden]`` for one string).

        With ``long_text="window"`` a long input's vector is the ``window_reduce`` (default ``mean``) of its
        windows' vectors. ``normalize=True`` scales each vector to unit L2 norm (runtime/embedding.py).
        """
        texts, single = as_input_list(inputs)
        if single:
            return self.embed(texts, batch_size=batch_size, **options)[0]
        vectors = self._run_jobs(texts, "embed", batch_size, options)
        if not vectors:
            return np.zeros((0, self._pooled_width() or 0), dtype=np.float32)
        return np.stack(vectors).astype(np.float32, copy=False)

    # --- the row pipeline: prepare -> plan -> run_rows -> finish (headreg serve drives the same steps) -----------

    def prepare(self, inputs: Iterable[Text], *, kind: str = "predict", **options: Any) -> Job:
        """Check and tokenize a call's inputs into a :class:`Job` of rows (raises InputError on bad input)."""
        if kind not in ("predict", "embed"):
            raise ValueError(f"kind must be 'predict' or 'embed', got {kind!r}")
        items = list(inputs)
        if self.multi_head:
            # Job.config of a multi-head job: each selected head's config by head name (its keys say who answers).
            config, runtime = _heads.check_head_options(options, self.heads, self._options)
        else:
            overrides, runtime = check_options(options, self._options)
            config = {**self.config, **overrides}
        check_embed_options(kind, runtime)
        if _windows.window_options(runtime).windowed:
            rows = self._window_rows(items, runtime)
        else:
            rows = [Row(index, encoding) for index, encoding in enumerate(self.encode(items))]
        return Job(items, rows, config, kind, runtime)

    def run_rows(self, rows: Sequence[Row], names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
        """Run one batch of rows (any jobs) and return each row's own outputs, padding cut away.

        Token-level outputs keep the row's attended positions only; outputs without a batch axis (a CRF's
        transition matrix) are shared by every row. ``names``: fetch only these graph outputs (default: all;
        :meth:`output_names_for` says what a job needs).
        """
        if not rows:
            return []
        names = list(names) if names is not None else self.output_names
        feed, values = self._run([row.encoding for row in rows], names)
        attended = feed["attention_mask"].sum(axis=1)
        left = self.padding_side == "left"
        width = feed["attention_mask"].shape[1]
        per_row: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for name, value in zip(names, values):
            axes = self._output_axes.get(name, "row")
            for index, out in enumerate(per_row):
                if axes == "shared":
                    out[name] = value
                elif axes == "token":
                    n = int(attended[index])
                    out[name] = value[index, width - n :] if left else value[index, :n]
                else:
                    out[name] = value[index]
        return per_row

    def finish(self, job: Job, outputs: Sequence[dict[str, np.ndarray]]) -> list[Any]:
        """Turn the outputs of a job's rows (aligned with ``job.rows``) into one result per input, in order."""
        if len(outputs) != len(job.rows):
            raise HeadregError(f"finish got {len(outputs)} row outputs for a job of {len(job.rows)} rows")
        if not job.rows:
            return []
        if len(job.rows) != len(job.inputs):
            job, outputs = self._merge_windows(job, outputs)
        if job.kind == "embed":
            return [embedding(out["pooled_output"], job.options) for out in outputs]
        # Postprocess in length-sorted groups: a token head's re-padded arrays stay as small as the batches were.
        results: list[Any] = [None] * len(job.inputs)
        for group in self.plan([len(row.encoding) for row in job.rows]):
            rows = [job.rows[i] for i in group]
            batch, mask = self._rebatch([outputs[i] for i in group], [len(row.encoding) for row in rows])
            context = _post.Context(
                manifest=self.manifest,
                config=job.config,
                attention_mask=mask,
                encodings=[row.encoding for row in rows],
                texts=[job.inputs[row.item] for row in rows],
                padding_side=self.padding_side,
            )
            for index, row, result in zip(group, rows, self.postprocess(batch, context)):
                if job.options.get("return_logits"):
                    result = {**result, "logits": np.asarray(outputs[index]["logits"], dtype=np.float32).tolist()}
                results[row.item] = result
        return results

    def _run_jobs(self, inputs: Iterable[Text], kind: str, batch_size: int | None, options: dict[str, Any]) -> list[Any]:
        """prepare -> plan -> run_rows -> finish over ``inputs``, :data:`PREDICT_CHUNK` inputs at a time."""
        results: list[Any] = []
        chunk: list[Text] = []
        iterator = iter(inputs)
        self._check_call_options(options)  # a bad option fails before any work, even for no inputs
        while True:
            chunk = [item for _, item in zip(range(PREDICT_CHUNK), iterator)]
            if not chunk:
                return results
            check_inputs(chunk, self.supports_pairs, start=len(results))  # errors name the index in the whole call
            job = self.prepare(chunk, kind=kind, **options)
            names = self.output_names_for(job)
            outputs: list[dict[str, np.ndarray]] = [{}] * len(job.rows)
            for indices in self.plan([len(row.encoding) for row in job.rows], batch_size=batch_size):
                for index, out in zip(indices, self.run_rows([job.rows[i] for i in indices], names)):
                    outputs[index] = out
            results.extend(self.finish(job, outputs))

    def _window_rows(self, items: list[Text], runtime: dict[str, Any]) -> list[Row]:
        """Rows for ``long_text="window"``: each input's windows, in order (an input that fits: one row)."""
        check_inputs(items, self.supports_pairs)
        options = _windows.window_options(runtime, ceiling=self.max_windows)
        _windows.check_window_budget(items, self.max_length, options.max_windows, ceiling=self.max_windows)
        overlap = options.overlap
        local = self._local
        if getattr(local, "window_tokenizer", None) is None:
            # encode_windows reconfigures truncation per call: each thread gets a private copy to do it on.
            from tokenizers import Tokenizer

            local.window_tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        rows: list[Row] = []
        encoded = _windows.encode_windows(local.window_tokenizer, items, self.max_length, overlap,
                                          max_windows=options.max_windows, ceiling=self.max_windows)
        _windows.check_window_budget(items, self.max_length, options.max_windows, encoded, ceiling=self.max_windows)
        for index, windows in enumerate(encoded):
            rows.extend(Row(index, encoding, w, windows.overlap) for w, encoding in enumerate(windows.encodings))
        return rows

    def _merge_windows(self, job: Job, outputs: Sequence[dict[str, np.ndarray]]) -> tuple[Job, list[dict[str, np.ndarray]]]:
        """The job with one row per input: windows merged over the whole text (see runtime/windows.py)."""
        reduce = _windows.window_options(job.options).reduce
        by_item: dict[int, list[int]] = {}
        for index, row in enumerate(job.rows):
            by_item.setdefault(row.item, []).append(index)
        rows: list[Row] = []
        merged: list[dict[str, np.ndarray]] = []
        # each token head's labels, so the merge can see where each window's entities are
        labels = {head.outputs["logits"]: head.labels for head in self.heads if head.level == "token" and head.labels}
        for item in range(len(job.inputs)):
            members = sorted(by_item.get(item, []), key=lambda i: job.rows[i].window)
            if not members:
                raise HeadregError(f"finish got no rows for input {item}")
            sequence = 0 if isinstance(job.inputs[item], str) else 1
            whole, out = _windows.merge_windows(
                [job.rows[i].encoding for i in members], [outputs[i] for i in members], self._output_axes,
                job.rows[members[0]].overlap, sequence, reduce, labels,
            )
            rows.append(Row(item, whole))
            merged.append(out)
        return Job(job.inputs, rows, job.config, job.kind, job.options), merged

    def valid_options(self) -> list[str]:
        """The per-call option names this bundle takes (its head's postprocess options and the runtime's; a
        multi-head bundle's: ``heads``, each head's name and every head's options)."""
        if self.multi_head:
            return _heads.valid_head_options(self.heads, self._options)
        return valid_options(self._options)

    def _check_call_options(self, options: dict[str, Any]) -> None:
        if self.multi_head:
            _heads.check_head_options(options, self.heads, self._options)
        else:
            check_options(options, self._options)

    def output_names_for(self, job: Job) -> list[str]:
        """The graph outputs a job needs: a multi-head predict call fetches only its heads' outputs (onnxruntime
        then skips the other heads' layers and poolings; the backbone runs either way)."""
        if self.multi_head and job.kind == "predict":
            return _heads.graph_outputs([head for head in self.heads if head.name in job.config])
        return list(self.output_names)

    def _rebatch(
        self, outputs: Sequence[dict[str, np.ndarray]], lengths: Sequence[int]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Rows' own outputs back into padded batch arrays (and the matching attention mask) for postprocess.

        The mask is the one the rows would have had in a batch of their own (an empty row keeps its single
        attended pad token, as in :func:`pad_batch`).
        """
        attended = [max(int(n), 1) for n in lengths]
        width = max(attended)
        left = self.padding_side == "left"
        mask = np.zeros((len(outputs), width), dtype=np.int64)
        for index, n in enumerate(attended):
            if left:
                mask[index, width - n :] = 1
            else:
                mask[index, :n] = 1
        batch: dict[str, np.ndarray] = {}
        for name in outputs[0]:
            axes = self._output_axes.get(name, "row")
            if axes == "shared":
                batch[name] = outputs[0][name]
            elif axes == "token":
                first = outputs[0][name]
                array = np.zeros((len(outputs), width, *first.shape[1:]), dtype=first.dtype)
                for index, out in enumerate(outputs):
                    n = len(out[name])
                    if left:
                        array[index, width - n :] = out[name]
                    else:
                        array[index, :n] = out[name]
                batch[name] = array
            else:
                batch[name] = np.stack([out[name] for out in outputs])
        return batch, mask

    def encode(self, texts: Sequence[Text]) -> list[Any]:
        """Check the inputs and tokenize them (truncated to ``max_length``, unpadded).

        Each text is first cut to ``max_chars`` characters (truncate mode only: windows need the whole text),
        so a huge input costs no more than a long one.
        """
        check_inputs(texts, self.supports_pairs)
        return self.tokenizer.encode_batch([cut(text, self.max_chars) for text in texts])

    def batches(
        self,
        texts: Sequence[Text],
        *,
        batch_size: int | None = None,
        bucket: bool = True,
        encodings: Sequence[Any] | None = None,
        config: dict[str, Any] | None = None,
        names: list[str] | None = None,
    ) -> Iterator[tuple[list[int], dict[str, np.ndarray], _post.Context]]:
        """Run the model batch by batch: ``(input indices, outputs by name, postprocess Context)`` per batch.

        What ``predict`` and ``embed`` are built on; benchmarks time it per batch. ``bucket=False`` is the
        baseline they compare with: chunks of ``batch_size`` rows in arrival order, each padded to its own
        longest row, no token budget. ``encodings`` skips tokenizing again.
        """
        if not texts:
            return
        if encodings is None:
            encodings = self.encode(texts)
        batches = self.plan([len(encoding) for encoding in encodings], batch_size=batch_size, bucket=bucket)
        output_names = names or self.output_names
        for indices in batches:
            batch = [encodings[i] for i in indices]
            feed, values = self._run(batch, output_names)
            context = _post.Context(
                manifest=self.manifest,
                config=config if config is not None else (_heads.check_head_options({}, self.heads, self._options)[0] if self.multi_head else self.config),
                attention_mask=feed["attention_mask"],
                encodings=batch,
                texts=[texts[i] for i in indices],
                padding_side=self.padding_side,
            )
            yield indices, dict(zip(output_names, values)), context

    def pad(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Model inputs for one batch of encodings, padded the way this variant needs."""
        return pad_batch(encodings, self.input_names, self.pad_id, self.padding_side, self._input_dtype,
                         multiple=self.pad_to_multiple_of)

    def plan(self, lengths: Sequence[int], *, batch_size: int | None = None, bucket: bool = True) -> list[list[int]]:
        """Row indices per batch for rows of these token ``lengths`` (see :meth:`batches` for ``bucket``)."""
        size = int(batch_size or self.batch_size)
        equal = not self.batch_padding
        return (plan_batches(lengths, size, self.max_batch_tokens, equal_lengths=equal) if bucket
                else plan_batches(lengths, size, sort=False, equal_lengths=equal))

    def postprocess(self, outputs: dict[str, np.ndarray], context: _post.Context) -> list[Any]:
        """The head's postprocess on one batch (checked to return one result per row); a multi-head bundle's
        is each selected head's (``context.config`` holds their configs by head name), merged per row."""
        if self.multi_head:
            by_head = {head.name: head.run(outputs, context, context.config[head.name])
                       for head in self.heads if head.name in context.config}
            return [{name: rows[i] for name, rows in by_head.items()} for i in range(len(context.encodings))]
        rows = self._postprocess(outputs, context)
        if len(rows) != len(context.encodings):
            raise HeadregError(
                f"postprocess of head {self.head!r} returned {len(rows)} results for a batch of {len(context.encodings)}"
            )
        return rows

    # --- internals --------------------------------------------------------------------------------------------

    def _run(self, encodings: Sequence[Any], names: Sequence[str]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Pad one batch and run the model: the one place every front door reaches the backend."""
        feed = self.pad(encodings)
        outputs = self.backend.run(feed, list(names))
        return feed, [outputs[name] for name in names]

    def _pooled_width(self) -> int | None:
        shape = (self.manifest.get("outputs") or {}).get("pooled_output") or [None, None]
        return shape[-1] if isinstance(shape[-1], int) else None


# Per-call options that steer the runtime itself rather than a head's postprocess config (registered with
# their checks where they are implemented: runtime/windows.py, runtime/embedding.py).
RUNTIME_OPTIONS: tuple[str, ...] = (*_windows.OPTIONS, *EMBED_OPTIONS)


def _output_axes(manifest: dict[str, Any], model_dims: dict[str, list], names: Sequence[str]) -> dict[str, str]:
    """Per output: "token" ([batch, sequence, ...]), "row" ([batch, ...]) or "shared" (no batch axis).

    Read from the graph dims the manifest recorded at export (else the model's own): symbolic (named or
    unknown) dims are the dynamic batch and sequence axes.
    """
    recorded = manifest.get("outputs")
    if isinstance(recorded, dict):
        dims_by_name = recorded
    else:
        dims_by_name = model_dims
    axes = {}
    for name in names:
        dims = dims_by_name.get(name) or ["batch"]
        dynamic = [not (isinstance(d, int) and d > 0) for d in dims]
        if not dynamic or not dynamic[0]:
            axes[name] = "shared"
        elif len(dims) >= 2 and dynamic[1]:
            axes[name] = "token"
        else:
            axes[name] = "row"
    return axes


def _check_file_hashes(bundle_dir: Path, manifest: dict[str, Any], also: str | None) -> None:
    """Files the manifest lists must have the sha256 it records: small ones always, ``also`` on request."""
    for name, digest in (manifest.get("files") or {}).items():
        path = bundle_dir / name
        if not path.exists():
            continue  # a variant file that is not loaded; loading it checks it
        path = bundle_path(bundle_dir, name, what="file")
        if (name == also or path.stat().st_size <= SMALL_FILE_BYTES) and sha256_file(path) != digest:
            raise BundleError(
                f"{path} does not match the manifest (sha256 differs): it was changed or replaced after export. "
                "Export the bundle again (or restore the file)."
            )
    if also is not None and also not in (manifest.get("files") or {}):
        raise BundleError(f"{bundle_dir}: verify_files=True, but the manifest records no sha256 for {also}")


def _load_tokenizer(bundle_dir: Path, manifest: dict[str, Any]):
    import hashlib

    from tokenizers import Tokenizer

    info = manifest.get("tokenizer") or {}
    path = bundle_path(bundle_dir, info.get("file", TOKENIZER_FILE), what="tokenizer file")
    data = read_bounded(path, TOKENIZER_MAX_BYTES, what="tokenizer.json")
    expected = info.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise BundleError(
            f"{path} does not match the manifest (sha256 differs): the tokenizer was replaced after export. "
            "Predictions would use different token ids than the model was verified with; export the bundle again."
        )
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise BundleError(f"{path} is not a tokenizers tokenizer.json: {exc}") from exc


def _check_widths(backend: Any, manifest: dict[str, Any], labels: list[str], path: Path) -> None:
    """Output dims must be those recorded at export, and logits no wider than the labels (no invented labels)."""
    recorded = manifest.get("outputs") or {}
    for name, dims in backend.output_dims.items():
        declared = recorded.get(name) if isinstance(recorded, dict) else None
        if not dims:
            continue
        if isinstance(declared, list) and isinstance(dims[-1], int) and isinstance(declared[-1], int) and dims[-1] != declared[-1]:
            raise BundleError(
                f"{path}: output {name!r} is {dims[-1]} wide but the manifest recorded {declared[-1]}; the "
                "bundle's files come from different exports. Export it again."
            )
        if name == "logits" and labels and isinstance(dims[-1], int) and dims[-1] > len(labels):
            raise BundleError(
                f"{path}: the model's logits are {dims[-1]} wide but the manifest has {len(labels)} labels; results "
                "would name labels that do not exist. Export the bundle again."
            )


def _check_vocab(tokenizer: Any, manifest: dict[str, Any], pad_id: int, bundle_dir: Path) -> None:
    """Every id the tokenizer can produce (and the pad id) must be a row of the model's embedding table."""
    vocab = (manifest.get("backbone") or {}).get("vocab_size")
    if not isinstance(vocab, int):
        return
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if largest >= vocab or pad_id >= vocab:
        raise BundleError(
            f"{bundle_dir}: the tokenizer produces ids up to {max(largest, pad_id)} ({size} tokens) but the model's "
            f"vocabulary has {vocab} rows; the tokenizer does not belong to this model. Export the bundle again."
        )


def _check_model(backend: Any, manifest: dict[str, Any], path: Path) -> tuple[list[str], list[str], Any]:
    """The model's inputs and outputs must be the ones the manifest names (a swapped model.onnx fails here)."""
    inputs, outputs = list(backend.input_names), list(backend.output_names)
    expected_in = list(manifest.get("inputs") or ["input_ids", "attention_mask"])
    expected_out = list(manifest.get("outputs") or ["logits", "pooled_output"])
    if sorted(inputs) != sorted(expected_in) or sorted(outputs) != sorted(expected_out):
        raise BundleError(
            f"{path} does not match its manifest: the model has inputs {inputs} and outputs {outputs}, the "
            f"manifest says inputs {expected_in} and outputs {expected_out}. The bundle's files come from "
            "different exports; export it again."
        )
    return expected_in, outputs, backend.input_dtype


def _runtime_head(manifest: dict[str, Any], entry: dict[str, Any], trust_remote_code: bool) -> _heads.RuntimeHead:
    identity = {"name": entry.get("head"), **{k: entry.get(k) for k in ("postprocess", "plugin", "plugin_version")}}
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()) or "logits" not in outputs:
        raise BundleError(f"head {entry.get('name')!r} of the manifest has no output map; export the bundle again")
    missing = sorted(set(outputs.values()) - set(manifest.get("outputs") or {}))
    if missing:
        raise BundleError(f"head {entry.get('name')!r} names outputs {missing} the bundle does not have; export it again")
    id2label = entry.get("id2label") or {}
    return _heads.RuntimeHead(
        name=str(entry.get("name")),
        level=str(entry.get("level", "sequence")),
        postprocess=_load_postprocess(identity, trust_remote_code),
        config=dict(entry.get("postprocess_config") or {}),
        outputs=dict(outputs),
        manifest=_heads.head_manifest(manifest, entry) if is_multi_head(manifest) else manifest,
        labels=[str(id2label[k]) for k in sorted(id2label, key=int)],
    )


def _check_head_width(backend: Any, head: _heads.RuntimeHead, path: Path) -> None:
    """A head's logits no wider than its labels: results would name labels that do not exist."""
    for name, dims in backend.output_dims.items():
        width = (dims or [None])[-1]
        if name == head.outputs["logits"] and head.labels and isinstance(width, int) and width > len(head.labels):
            raise BundleError(
                f"{path}: head {head.name!r} has logits {width} wide but {len(head.labels)} labels in the manifest; "
                "export the bundle again"
            )


def _load_postprocess(head: dict[str, Any], trust_remote_code: bool) -> Callable[..., list[dict]]:
    """The postprocess of the installed head the bundle names; the manifest's path is only a cross-check.

    A bundle is data: importing whatever module its manifest names would let a crafted file run code, so the
    function comes from the registry (built-ins and installed plugins) unless ``trust_remote_code=True``.
    A bundle exported with a built-in head gets the built-in, without importing any plugin (fast, and an
    installed plugin that overrides or breaks that head cannot change what an existing bundle serves).
    """
    from ..errors import HeadImportError
    from ..plugins import builtin_registry
    from ..installed import get_head

    path, name, plugin = head.get("postprocess"), head.get("name"), head.get("plugin", "?")
    try:
        spec = builtin_registry().get(str(name)) if plugin == "headreg" else get_head(str(name))
    except LookupError as exc:
        if trust_remote_code and path:
            return _import_postprocess(path, head)
        raise BundleError(
            f"the bundle's head {name!r} comes from {plugin} {head.get('plugin_version', '')}, which is not installed "
            f"here. Install that plugin: pip install {plugin}"
        ) from exc
    if path and path != spec.postprocess:
        if not trust_remote_code:
            raise BundleError(
                f"the bundle names postprocess {path!r} for head {name!r}, but the installed head ({spec.origin}) "
                f"registers {spec.postprocess!r}. headreg does not import code a bundle names; pass "
                "trust_remote_code=True if you trust this bundle, or export it again with the installed head."
            )
        return _import_postprocess(path, head)
    try:
        return spec.load_postprocess() or _post.raw
    except HeadImportError as exc:
        raise BundleError(f"{exc}") from exc


def _import_postprocess(path: str, head: dict[str, Any]) -> Callable[..., list[dict]]:
    from ..registry import HeadSpec, import_attr

    spec = HeadSpec(name=str(head.get("name")), cls="-:-", task="custom", postprocess=path,
                    plugin=str(head.get("plugin", "?")), version=str(head.get("plugin_version", "")))
    try:
        return import_attr(path, spec, "postprocess")
    except ImportError as exc:
        raise BundleError(f"{exc}") from exc