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
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import BundleError
from ..manifest import is_multi_head, read_manifest
from . import bundle as _bundle
from . import heads as _heads
from . import windows as _windows
from .cpus import available_cpus
from .embedding import check_embed_options
from .engine import Engine, Job, Layout, Row
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
# More threads than cores only make them wait for each other; past this many per CPU a count is a mistake.
THREADS_PER_CPU = 8

Text = str | tuple[str, str]


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
            _positive(name, value)
        if isinstance(providers, str):  # a list of one, not its letters
            raise InputError(f"providers takes a list of onnxruntime execution providers, e.g. [{providers!r}]")
        cpus = available_cpus()
        if threads is not None and threads > THREADS_PER_CPU * cpus:
            # onnxruntime starts every thread asked for: 100,000 of them never finish loading
            raise InputError(f"threads={threads} is more than {THREADS_PER_CPU} per CPU this process may use "
                             f"({cpus}); pass at most {THREADS_PER_CPU * cpus}, or leave it out for {cpus}")
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest = read_manifest(self.bundle_dir)
        self.batch_size = int(batch_size)
        self.max_batch_tokens = max_batch_tokens
        # long_text="window": the most windows one input may take; a call's max_windows may only lower it
        self.max_windows = int(max_windows)
        self.variant, self.variant_reason = select_variant(manifest, variant)
        self.variant_record = record = variant_records(manifest)[self.variant]
        self.model_path = _bundle.model_file(self.bundle_dir, self.variant, record)
        weights = _bundle.weights_file(self.bundle_dir, self.variant, record)
        _bundle.check_file_hashes(self.bundle_dir, manifest, str(record["file"]) if verify_files else None)
        self._open_tokenizer(max_length)
        self.backend = _bundle.open_model(record, self.model_path, threads=threads, providers=providers, weights=weights)
        # onnxruntime variants: the session itself (benchmarks time it directly)
        self.session = getattr(self.backend, "session", None)
        names = _bundle.check_io(self.backend, manifest, self.model_path)  # a swapped model file fails before heads are read
        self.heads = _bundle.load_heads(self.bundle_dir, manifest, trust_remote_code)
        layout = _bundle.check_model(self.backend, manifest, self.heads, self.model_path, names,
                                     pad_to_multiple_of=int(record.get("pad_to_multiple_of") or 1))
        _bundle.check_vocab(self.tokenizer, manifest, layout.pad_id, self.bundle_dir)
        self._describe_heads()
        # The one engine every front door runs through (see runtime/engine.py).
        self.engine = Engine(self.backend, layout, self.heads, batch_size=self.batch_size,
                             max_batch_tokens=self.max_batch_tokens, by_head=self.multi_head)

    def _open_tokenizer(self, max_length: int | None) -> None:
        """The bundle's tokenizer, truncating at ``max_length`` (never beyond the bundle's) and not padding."""
        manifest = self.manifest
        self.tokenizer = _bundle.load_tokenizer(self.bundle_dir, manifest)
        bundle_max = int(manifest.get("max_length") or 512)
        self.max_length = min(bundle_max, int(max_length)) if max_length else bundle_max
        special = self.tokenizer.num_special_tokens_to_add(False)
        if self.max_length <= special:  # the tokenizer cannot cut a text below its own special tokens
            room = f"leaves no room for text beside the tokenizer's {special} special tokens"
            if max_length and max_length < bundle_max:
                raise InputError(f"max_length={max_length} {room}; pass max_length={special + 1} or more")
            raise BundleError(f"the manifest's max_length={bundle_max} {room}; it is not what headreg export wrote")
        self.max_chars = char_limit(self.max_length)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.supports_pairs = bool((manifest.get("tokenizer") or {}).get("pair", True))
        self._window_tokenizers = _windows.TokenizerCopies(self.tokenizer)

    def _describe_heads(self) -> None:
        """What callers read about the heads. A multi-head bundle answers with a dict by head name (whatever its
        number of heads); a single-head bundle with its head's result, described here by that head."""
        self.multi_head = is_multi_head(self.manifest)
        first = self.heads[0]
        self.head = "+".join(head.name for head in self.heads) if self.multi_head else first.name
        self.level = "multi" if self.multi_head else first.level
        self.config: dict[str, Any] = {} if self.multi_head else dict(first.config)
        self.labels: list[str] = [] if self.multi_head else first.labels
        self._options = OptionContext(self.manifest, self.labels, self.config)

    @property
    def layout(self) -> Layout:
        """How the model takes rows and gives outputs (input names, padding, output axes): the engine's."""
        return self.engine.layout

    def __repr__(self) -> str:
        return f"Predictor({str(self.bundle_dir)!r}, head={self.head!r}, variant={self.variant!r})"

    # --- public API -------------------------------------------------------------------------------------------

    def predict(self, inputs: Text | Iterable[Text], /, *, batch_size: int | None = None, **options: Any) -> Any:
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
        results = self._run(texts, "predict", batch_size, options)
        return results[0] if single else results

    def embed(self, inputs: Text | Iterable[Text], /, *, batch_size: int | None = None, **options: Any) -> np.ndarray:
        """``pooled_output`` per input, in input order: float32 ``[len(inputs), hidden]`` (``[hidden]`` for one string).

        With ``long_text="window"`` a long input's vector is the ``window_reduce`` (default ``mean``) of its
        windows' vectors. ``normalize=True`` scales each vector to unit L2 norm (runtime/embedding.py).
        """
        texts, single = as_input_list(inputs)
        if single:
            return self.embed(texts, batch_size=batch_size, **options)[0]
        vectors = self._run(texts, "embed", batch_size, options)
        if not vectors:
            return np.zeros((0, self._pooled_width() or 0), dtype=np.float32)
        return np.stack(vectors).astype(np.float32, copy=False)

    def prepare(self, inputs: Iterable[Text], kind: str = "predict", /, **options: Any) -> Job:
        """Check and tokenize a call's inputs into a :class:`~headreg.runtime.engine.Job` of rows (raises
        InputError on bad input). ``self.engine`` runs it (``headreg serve`` and the integrations do). ``inputs``
        and ``kind`` are positional only, so a client's option of either name is an unknown option, not a clash."""
        if kind not in ("predict", "embed"):
            raise ValueError(f"kind must be 'predict' or 'embed', got {kind!r}")
        items = list(inputs)
        config, runtime = self._check_call_options(options)
        check_embed_options(kind, runtime)
        if _windows.window_options(runtime).windowed:
            rows = self._window_rows(items, runtime)
        else:
            rows = [Row(index, encoding) for index, encoding in enumerate(self.encode(items))]
        return Job(items, rows, config, kind, runtime)

    def _run(self, inputs: Iterable[Text], kind: str, batch_size: int | None, options: dict[str, Any]) -> list[Any]:
        """prepare -> engine.run over ``inputs``, :data:`PREDICT_CHUNK` inputs at a time (memory bounded by a chunk)."""
        batch_size = _positive("batch_size", batch_size)
        results: list[Any] = []
        iterator = iter(inputs)
        self._check_call_options(options)  # a bad option fails before any work, even for no inputs
        while True:
            chunk = [item for _, item in zip(range(PREDICT_CHUNK), iterator)]
            if not chunk:
                return results
            check_inputs(chunk, self.supports_pairs, start=len(results))  # errors name the index in the whole call
            job = self.prepare(chunk, kind, **options)
            (answer,) = self.engine.run([job], batch_size=batch_size)
            if isinstance(answer, BaseException):
                raise answer
            results.extend(answer)

    def encode(self, texts: Sequence[Text]) -> list[Any]:
        """Check the inputs and tokenize them (truncated to ``max_length``, unpadded).

        Each text is first cut to ``max_chars`` characters (truncate mode only: windows need the whole text),
        so a huge input costs no more than a long one.
        """
        check_inputs(texts, self.supports_pairs)
        return self.tokenizer.encode_batch([cut(text, self.max_chars) for text in texts])

    def _window_rows(self, items: list[Text], runtime: dict[str, Any]) -> list[Row]:
        """Rows for ``long_text="window"``: each input's windows, in order (an input that fits: one row)."""
        check_inputs(items, self.supports_pairs)
        options = _windows.window_options(runtime, ceiling=self.max_windows)
        _windows.check_window_budget(items, self.max_length, options.max_windows, ceiling=self.max_windows)
        with self._window_tokenizers.borrowed() as tokenizer:  # encode_windows reconfigures its truncation
            encoded = _windows.encode_windows(tokenizer, items, self.max_length, options.overlap,
                                              max_windows=options.max_windows, ceiling=self.max_windows)
        return [Row(index, encoding, w, windows.overlap)
                for index, windows in enumerate(encoded) for w, encoding in enumerate(windows.encodings)]

    def valid_options(self) -> list[str]:
        """The per-call option names this bundle takes (its head's postprocess options and the runtime's; a
        multi-head bundle's: ``heads``, each head's name and every head's options)."""
        if self.multi_head:
            return _heads.valid_head_options(self.heads, self._options)
        return valid_options(self._options)

    def _check_call_options(self, options: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """(postprocess config by answering head's name, runtime options); InputError for a bad option."""
        if self.multi_head:
            return _heads.check_head_options(options, self.heads, self._options)
        overrides, runtime = check_options(options, self._options)
        return {self.heads[0].name: {**self.config, **overrides}}, runtime

    def _pooled_width(self) -> int | None:
        shape = (self.manifest.get("outputs") or {}).get("pooled_output") or [None, None]
        return shape[-1] if isinstance(shape[-1], int) else None


def _positive(name: str, value: Any) -> int | None:
    """A per-call size is checked like the constructor's: a positive integer, or None for the default."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value
