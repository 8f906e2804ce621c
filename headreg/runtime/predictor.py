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
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import BundleError, HeadregError
from ..manifest import MODEL_FILE, TOKENIZER_FILE, bundle_heads, is_multi_head, read_manifest, sha256_file
from . import heads as _heads
from . import postprocess as _post
from .batching import pad_batch, plan_batches
from .inputs import check_inputs
from .session import create_session

DEFAULT_BATCH_SIZE = 32
# Measured on MiniLM (CPU): rows/s is flat from 4 to 32 rows of 128 tokens, so a smaller token budget
# costs nothing and cuts the padding left inside sorted batches (16 rows of ~128, 32 of <= 64 tokens).
DEFAULT_MAX_BATCH_TOKENS = 2048

Text = str | tuple[str, str]


class Predictor:
    """Load a bundle written by ``headreg export`` and predict with it.

    ``threads``: onnxruntime intra-op threads (default: onnxruntime's choice). ``providers``: onnxruntime
    execution providers (default CPU). ``variant``: "fp32" or "int8"; by default the manifest's default, the
    fastest variant that verified at export (``quantized=True`` is short for ``variant="int8"``).
    ``max_batch_tokens`` / ``batch_size``: caps per batch (rows are length-bucketed, see batching.py).
    ``max_length``: truncate shorter than the bundle's ``max_length`` (never longer).
    ``trust_remote_code``: import a postprocess the manifest names even when it is not the installed head's.

    Everything is checked at load (files, format version, tokenizer checksum, model inputs and outputs),
    so a broken bundle fails here rather than on the first request. A Predictor may be shared by threads.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[Any] | None = None,
        quantized: bool = False,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        variant: str | None = None,
        trust_remote_code: bool = False,
    ):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest = read_manifest(self.bundle_dir)
        self.batch_size = int(batch_size)
        self.max_batch_tokens = max_batch_tokens
        self.variant, model_file = _select_variant(manifest, "int8" if quantized else variant)
        self.model_path = self.bundle_dir / model_file
        if not self.model_path.is_file():
            raise BundleError(
                f"{self.bundle_dir} has no {model_file} (variant {self.variant!r} in its manifest); export it again"
                + (" with --quantize int8" if self.variant == "int8" else "")
            )
        self.tokenizer = _load_tokenizer(self.bundle_dir, manifest)
        bundle_max = int(manifest.get("max_length") or 512)
        self.max_length = min(bundle_max, int(max_length)) if max_length else bundle_max
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        token_info = manifest.get("tokenizer") or {}
        self.pad_id = int(token_info.get("pad_token_id") or 0)
        self.supports_pairs = bool(token_info.get("pair", True))
        self.padding_side = manifest.get("padding_side", "right")
        try:
            self.session = create_session(self.model_path, threads=threads, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, NoSuchFile, Fail)
            raise BundleError(
                f"{self.model_path} is not a loadable ONNX model ({type(exc).__name__}: {exc}); export the bundle again"
            ) from exc
        self.input_names, self.output_names, self._input_dtype = _check_model(self.session, manifest, self.model_path)
        self.multi_head = is_multi_head(manifest)
        self.heads = [_runtime_head(manifest, entry, trust_remote_code) for entry in bundle_heads(manifest)]
        first = self.heads[0]
        # A multi-head bundle answers with a dict by head name; these describe its first head only.
        self.head = "+".join(head.name for head in self.heads) if self.multi_head else first.name
        self.level = "multi" if self.multi_head else first.level
        self._postprocess = first.postprocess
        self.config: dict[str, Any] = {} if self.multi_head else dict(first.config)
        id2label = first.manifest.get("id2label") or {}
        self.labels: list[str] = [] if self.multi_head else [str(id2label[k]) for k in sorted(id2label, key=int)]

    def __repr__(self) -> str:
        return f"Predictor({str(self.bundle_dir)!r}, head={self.head!r}, variant={self.variant!r})"

    # --- public API -------------------------------------------------------------------------------------------

    def predict(self, inputs: Text | Iterable[Text], *, batch_size: int | None = None, **options: Any) -> Any:
        """One result dict per input, in input order (a single string gives a single result).

        ``options`` override the bundle's postprocess config for this call, e.g. ``thresholds=0.3`` or
        ``{"toxic": 0.8}`` (multi_label), ``aggregation="max"`` (token_cls).

        A multi-head bundle gives per input a dict by head name of what each head's single-head bundle gives.
        ``heads=["sentiment"]`` answers for those heads only and fetches only their outputs from the graph;
        ``sentiment={"threshold": 0.3}`` overrides one head's config, other options reach every head.
        """
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        config, names = self._call_config(options)
        results: list[Any] = [None] * len(texts)
        for indices, outputs, context in self.batches(texts, batch_size=batch_size, config=config, names=names):
            for index, row in zip(indices, self.postprocess(outputs, context)):
                results[index] = row
        return results[0] if single else results

    def embed(self, inputs: Text | Iterable[Text], *, batch_size: int | None = None) -> np.ndarray:
        """``pooled_output`` per input, in input order: float32 ``[len(inputs), hidden]`` (``[hidden]`` for one string)."""
        if isinstance(inputs, str):
            return self.embed([inputs], batch_size=batch_size)[0]
        texts = list(inputs)
        width = self._pooled_width()
        embeddings = np.zeros((len(texts), width or 0), dtype=np.float32)
        for indices, outputs, _ in self.batches(texts, batch_size=batch_size, names=["pooled_output"]):
            if embeddings.shape[1] != outputs["pooled_output"].shape[1]:
                embeddings = np.zeros((len(texts), outputs["pooled_output"].shape[1]), dtype=np.float32)
            embeddings[indices] = outputs["pooled_output"]
        return embeddings

    def encode(self, texts: Sequence[Text]) -> list[Any]:
        """Check the inputs and tokenize them (truncated to ``max_length``, unpadded)."""
        check_inputs(texts, self.supports_pairs)
        return self.tokenizer.encode_batch([text if isinstance(text, str) else tuple(text) for text in texts])

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
            feed = pad_batch(batch, self.input_names, self.pad_id, self.padding_side, self._input_dtype)
            values = self.session.run(output_names, feed)
            context = _post.Context(
                manifest=self.manifest,
                config=config if config is not None else self.config,
                attention_mask=feed["attention_mask"],
                encodings=batch,
                texts=[texts[i] for i in indices],
                padding_side=self.padding_side,
            )
            yield indices, dict(zip(output_names, values)), context

    def plan(self, lengths: Sequence[int], *, batch_size: int | None = None, bucket: bool = True) -> list[list[int]]:
        """Row indices per batch for rows of these token ``lengths`` (see :meth:`batches` for ``bucket``)."""
        size = int(batch_size or self.batch_size)
        return plan_batches(lengths, size, self.max_batch_tokens) if bucket else plan_batches(lengths, size, sort=False)

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

    def _call_config(self, options: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
        """(postprocess config, graph outputs to fetch) of one predict call."""
        wanted = options.pop("heads", None)
        selected = _heads.select(self.heads, wanted)
        if self.multi_head:
            return _heads.split_options(selected, options), _heads.graph_outputs(selected)
        return _heads.split_options(selected, options)[self.heads[0].name], None

    def _pooled_width(self) -> int | None:
        shape = (self.manifest.get("outputs") or {}).get("pooled_output") or [None, None]
        return shape[-1] if isinstance(shape[-1], int) else None


def _select_variant(manifest: dict[str, Any], requested: str | None) -> tuple[str, str]:
    variants = manifest.get("variants") or {"default": "fp32", "fp32": {"file": MODEL_FILE}}
    name = requested or variants.get("default", "fp32")
    variant = variants.get(name)
    if not isinstance(variant, dict) or "file" not in variant:
        available = sorted(k for k, v in variants.items() if isinstance(v, dict))
        hint = " Export it with --quantize int8." if name == "int8" else ""
        raise BundleError(f"bundle has no {name!r} variant (it has: {', '.join(available) or 'none'}).{hint}")
    return name, str(variant["file"])


def _load_tokenizer(bundle_dir: Path, manifest: dict[str, Any]):
    from tokenizers import Tokenizer

    info = manifest.get("tokenizer") or {}
    path = bundle_dir / info.get("file", TOKENIZER_FILE)
    expected = info.get("sha256")
    if expected and sha256_file(path) != expected:
        raise BundleError(
            f"{path} does not match the manifest (sha256 differs): the tokenizer was replaced after export. "
            "Predictions would use different token ids than the model was verified with; export the bundle again."
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise BundleError(f"{path} is not a tokenizers tokenizer.json: {exc}") from exc


def _check_model(session: Any, manifest: dict[str, Any], path: Path) -> tuple[list[str], list[str], Any]:
    """The model's inputs and outputs must be the ones the manifest names (a swapped model.onnx fails here)."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    expected_in = list(manifest.get("inputs") or ["input_ids", "attention_mask"])
    expected_out = list(manifest.get("outputs") or ["logits", "pooled_output"])
    if sorted(inputs) != sorted(expected_in) or sorted(outputs) != sorted(expected_out):
        raise BundleError(
            f"{path} does not match its manifest: the model has inputs {inputs} and outputs {outputs}, the "
            f"manifest says inputs {expected_in} and outputs {expected_out}. The bundle's files come from "
            "different exports; export it again."
        )
    dtype = np.int32 if session.get_inputs()[0].type == "tensor(int32)" else np.int64
    return expected_in, outputs, dtype


def _runtime_head(manifest: dict[str, Any], entry: dict[str, Any], trust_remote_code: bool) -> _heads.RuntimeHead:
    identity = {"name": entry.get("head"), **{k: entry.get(k) for k in ("postprocess", "plugin", "plugin_version")}}
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
        raise BundleError(f"head {entry.get('name')!r} of the manifest has no output map; export the bundle again")
    return _heads.RuntimeHead(
        name=str(entry.get("name")),
        level=str(entry.get("level", "sequence")),
        postprocess=_load_postprocess(identity, trust_remote_code),
        config=dict(entry.get("postprocess_config") or {}),
        outputs=dict(outputs),
        manifest=_heads.head_manifest(manifest, entry) if is_multi_head(manifest) else manifest,
    )


def _load_postprocess(head: dict[str, Any], trust_remote_code: bool) -> Callable[..., list[dict]]:
    """The postprocess of the installed head the bundle names; the manifest's path is only a cross-check.

    A bundle is data: importing whatever module its manifest names would let a crafted file run code, so the
    function comes from the registry (built-ins and installed plugins) unless ``trust_remote_code=True``.
    """
    from ..errors import HeadImportError
    from ..registry import get_head

    path, name, plugin = head.get("postprocess"), head.get("name"), head.get("plugin", "?")
    try:
        spec = get_head(str(name))
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