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
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import BundleError, HeadregError, PredictionError
from . import heads as _heads
from ..manifest import (
    OUTPUT_AXES, axes_from_dims, bundle_heads, head_output_problems, is_multi_head, SMALL_FILE_BYTES, TOKENIZER_FILE,
    TOKENIZER_MAX_BYTES, bundle_path, read_bounded, read_manifest, sha256_file,
)
from . import postprocess as _post
from . import windows as _windows
from .embedding import EMBED_OPTIONS, check_embed_options
from .engine import Engine, Job, Layout, Row
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
        self._local = threading.local()
        self.multi_head = is_multi_head(manifest)
        self.heads = [_runtime_head(manifest, entry, trust_remote_code) for entry in bundle_heads(manifest)]
        if not self.heads:
            raise BundleError(f"{self.bundle_dir / 'headreg.json'} lists no heads; export the bundle again")
        first = self.heads[0]
        # A multi-head bundle answers with a dict by head name; these describe a single-head bundle's head.
        self.head = "+".join(head.name for head in self.heads) if self.multi_head else first.name
        self.level = "multi" if self.multi_head else first.level
        self.config: dict[str, Any] = {} if self.multi_head else dict(first.config)
        self.labels: list[str] = [] if self.multi_head else first.labels
        _check_widths(self.backend, manifest, self.labels, self.model_path)
        for problem in head_output_problems(manifest, self.backend.output_dims):
            raise BundleError(f"{self.model_path}: {problem}")
        self.output_axes = _output_axes(manifest, self.backend.output_dims, self.output_names, self.heads)
        for head in self.heads if self.multi_head else ():
            _check_head_width(self.backend, head, self.model_path)
        _check_vocab(self.tokenizer, manifest, self.pad_id, self.bundle_dir)
        self._options = OptionContext(manifest, self.labels, self.config)
        layout = Layout(
            input_names=tuple(self.input_names), output_names=tuple(self.output_names), output_axes=self.output_axes,
            pad_id=self.pad_id, padding_side=self.padding_side, pad_to_multiple_of=self.pad_to_multiple_of,
            input_dtype=self._input_dtype, batch_padding=self.batch_padding,
        )
        # The one engine every front door runs through (see runtime/engine.py).
        self.engine = Engine(self.backend, layout, self.heads, batch_size=self.batch_size,
                             max_batch_tokens=self.max_batch_tokens, by_head=self.multi_head)

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
        results = self._run(texts, "predict", batch_size, options)
        return results[0] if single else results

    def embed(self, inputs: Text | Iterable[Text], *, batch_size: int | None = None, **options: Any) -> np.ndarray:
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

    def prepare(self, inputs: Iterable[Text], *, kind: str = "predict", **options: Any) -> Job:
        """Check and tokenize a call's inputs into a :class:`~headreg.runtime.engine.Job` of rows (raises
        InputError on bad input). ``self.engine`` runs it (``headreg serve`` and the integrations do)."""
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
            job = self.prepare(chunk, kind=kind, **options)
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


# Per-call options that steer the runtime itself rather than a head's postprocess config (registered with
# their checks where they are implemented: runtime/windows.py, runtime/embedding.py).
RUNTIME_OPTIONS: tuple[str, ...] = (*_windows.OPTIONS, *EMBED_OPTIONS)


def _output_axes(manifest: dict[str, Any], model_dims: dict[str, list], names: Sequence[str],
                 heads: Sequence[_heads.RuntimeHead]) -> dict[str, str]:
    """Per output: "token" ([batch, sequence, ...]), "row" ([batch, ...]) or "shared" (no batch axis).

    The export records them (``output_axes``). A bundle written before that: a head's ``logits`` are per token
    for a token head and per row otherwise, its ``pooled_output`` per row — its export contract says so; any other
    output by the graph dims recorded at export (symbolic dims are the dynamic batch and sequence axes). The dims
    alone cannot tell: an exporter may leave a fixed hidden size symbolic (GPT-2's pooled_output after a Reshape).
    """
    known: dict[str, str] = {}
    for head in heads:
        known[head.outputs["logits"]] = "token" if head.level == "token" else "row"
        if "pooled_output" in head.outputs:
            known[head.outputs["pooled_output"]] = "row"
    recorded = manifest.get("output_axes")
    if isinstance(recorded, dict):
        bad = {name: recorded.get(name) for name in names
               if recorded.get(name) not in OUTPUT_AXES or recorded.get(name) != known.get(name, recorded.get(name))}
        if bad:
            raise BundleError(f"the manifest's output_axes give {bad}, which do not fit its heads' outputs (a token "
                              "head's logits are per token, pooled outputs per row); export the bundle again")
        return {name: recorded[name] for name in names}
    dims_by_name = manifest.get("outputs") if isinstance(manifest.get("outputs"), dict) else model_dims
    axes = {}
    for name in names:
        if name in known or name == "pooled_output":
            axes[name] = known.get(name, "row")
            continue
        axes[name] = axes_from_dims(dims_by_name.get(name))
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
    postprocess, fields = _load_postprocess(identity, trust_remote_code)
    recorded = entry.get("result_fields")
    if isinstance(recorded, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()):
        fields = dict(recorded)
    return _heads.RuntimeHead(
        name=str(entry.get("name")),
        level=str(entry.get("level", "sequence")),
        postprocess=postprocess,
        fields=fields,
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


def _load_postprocess(head: dict[str, Any], trust_remote_code: bool) -> tuple[Callable[..., list[dict]], dict | None]:
    """The postprocess of the installed head the bundle names, and the result fields it declares; the manifest's
    path is only a cross-check.

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
            return _import_postprocess(path, head), None
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
        return _import_postprocess(path, head), spec.fields
    try:
        return spec.load_postprocess() or _post.raw, spec.fields
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