"""A bundle as the runtime opens it: every file and field checked before the first request.

A broken or crafted bundle fails here, at load, with a message that says what to do: the manifest's fields,
that every file it names stays inside the bundle, checksums, the model's inputs and outputs against the manifest
and the heads' labels, the tokenizer's ids against the model's vocabulary. A head's postprocess comes from the
installed head the bundle names (never from a path in the manifest unless ``trust_remote_code=True``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import BundleError, HeadregError
from ..manifest import (
    OUTPUT_AXES, SMALL_FILE_BYTES, TOKENIZER_FILE, TOKENIZER_MAX_BYTES, axes_from_dims, bundle_heads, bundle_path,
    head_output_problems, is_multi_head, read_bounded, sha256_file,
)
from . import heads as _heads
from . import postprocess as _post
from .backends import open_backend
from .engine import Layout
from .inputs import RUNTIME_OPTIONS, InputError, check_options


def model_file(bundle_dir: Path, variant: str, record: dict[str, Any]) -> Path:
    """The variant's model file, inside the bundle."""
    name = str(record["file"])
    if not os.path.lexists(bundle_dir / name):
        raise BundleError(
            f"{bundle_dir} has no {name} (variant {variant!r} in its manifest); export it again"
            + (" with --quantize int8" if variant == "int8" else "")
        )
    return bundle_path(bundle_dir, name, what=f"{variant} model file")


def weights_file(bundle_dir: Path, variant: str, record: dict[str, Any]) -> Path | None:
    """The variant's separate weights file (an OpenVINO IR's ``.bin``), inside the bundle, or None.

    OpenVINO would otherwise find it by the ``.xml``'s name, a path no check has seen (a symlink there could
    lead out of the bundle)."""
    name = record.get("weights")
    return None if name is None else bundle_path(bundle_dir, name, what=f"{variant} weights file")


def open_model(record: dict[str, Any], path: Path, *, threads: int | None, providers: Sequence[Any] | None,
               weights: Path | None = None) -> Any:
    """The variant's backend (onnxruntime, or OpenVINO), any failure to load it a BundleError."""
    try:
        return open_backend(record, path, threads=threads, providers=providers, weights=weights)
    except HeadregError:
        raise
    except Exception as exc:  # onnxruntime / OpenVINO raise their own types (InvalidProtobuf, NoSuchFile, Fail)
        raise BundleError(
            f"{path} is not a loadable ONNX model ({type(exc).__name__}: {exc}); export the bundle again"
        ) from exc


def load_heads(bundle_dir: Path, manifest: dict[str, Any], trust_remote_code: bool) -> list[_heads.RuntimeHead]:
    """The bundle's heads in manifest order (a single-head bundle: one), each with its installed postprocess."""
    heads = [_runtime_head(manifest, entry, trust_remote_code) for entry in bundle_heads(manifest)]
    if not heads:
        raise BundleError(f"{bundle_dir / 'headreg.json'} lists no heads; export the bundle again")
    return heads


def check_model(backend: Any, manifest: dict[str, Any], heads: Sequence[_heads.RuntimeHead], path: Path,
                names: tuple[list[str], list[str]], *, pad_to_multiple_of: int) -> Layout:
    """The model's outputs and widths against the manifest and the heads; how it takes and gives rows.
    ``names``: the input and output names :func:`check_io` found."""
    input_names, output_names = names
    _check_recorded_widths(backend, manifest, path)
    for problem in head_output_problems(manifest, backend.output_dims):
        raise BundleError(f"{path}: {problem}")
    for head in heads:
        _check_head_width(backend, head, path)
    token_info = manifest.get("tokenizer") or {}
    return Layout(
        input_names=tuple(input_names), output_names=tuple(output_names),
        output_axes=output_axes(manifest, backend.output_dims, output_names, heads),
        pad_id=int(token_info.get("pad_token_id") or 0), padding_side=manifest.get("padding_side", "right"),
        # a variant whose kernels change with the padded length (OpenVINO bf16 across 16-token blocks) is padded
        # to a multiple at which a row's result no longer depends on the batch's longest row
        pad_to_multiple_of=pad_to_multiple_of, input_dtype=backend.input_dtype,
        # false for models whose outputs change with padding: batches then hold rows of one length only
        batch_padding=manifest.get("batch_padding", True) is not False,
    )


def output_axes(manifest: dict[str, Any], model_dims: dict[str, list], names: Sequence[str],
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
    known.setdefault("pooled_output", "row")
    return {name: known[name] if name in known else axes_from_dims(dims_by_name.get(name)) for name in names}


def check_file_hashes(bundle_dir: Path, manifest: dict[str, Any], also: str | None) -> None:
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


def load_tokenizer(bundle_dir: Path, manifest: dict[str, Any]):
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


def _check_recorded_widths(backend: Any, manifest: dict[str, Any], path: Path) -> None:
    """Output dims must be those recorded at export (files of two exports mixed fail here)."""
    recorded = manifest.get("outputs") or {}
    for name, dims in backend.output_dims.items():
        declared = recorded.get(name) if isinstance(recorded, dict) else None
        if not dims:
            continue
        if isinstance(declared, list) and not declared:  # a scalar output may record [], but this one has dims
            raise BundleError(f"{path}: output {name!r} has {len(dims)} dims but the manifest recorded none; the "
                              "bundle's files come from different exports. Export it again.")
        if isinstance(declared, list) and isinstance(dims[-1], int) and isinstance(declared[-1], int) and dims[-1] != declared[-1]:
            raise BundleError(
                f"{path}: output {name!r} is {dims[-1]} wide but the manifest recorded {declared[-1]}; the "
                "bundle's files come from different exports. Export it again."
            )


def check_vocab(tokenizer: Any, manifest: dict[str, Any], pad_id: int, bundle_dir: Path) -> None:
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


def check_io(backend: Any, manifest: dict[str, Any], path: Path) -> tuple[list[str], list[str]]:
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
    return expected_in, outputs


def _runtime_head(manifest: dict[str, Any], entry: dict[str, Any], trust_remote_code: bool) -> _heads.RuntimeHead:
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()) or "logits" not in outputs:
        raise BundleError(f"head {entry.get('name')!r} of the manifest has no output map; export the bundle again")
    missing = sorted(set(outputs.values()) - set(manifest.get("outputs") or {}))
    if missing:
        raise BundleError(f"head {entry.get('name')!r} names outputs {missing} the bundle does not have; export it again")
    id2label = entry.get("id2label") or {}
    postprocess, fields = _load_postprocess(entry, trust_remote_code)
    recorded = entry.get("result_fields")
    if isinstance(recorded, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()):
        fields = dict(recorded)
    head = _heads.RuntimeHead(
        name=str(entry.get("name")),
        level=str(entry.get("level", "sequence")),
        postprocess=postprocess,
        fields=fields,
        config=dict(entry.get("postprocess_config") or {}),
        outputs=dict(outputs),
        manifest=_heads.head_manifest(manifest, entry) if is_multi_head(manifest) else manifest,
        labels=[str(id2label[k]) for k in sorted(id2label, key=int)],
    )
    # the stored defaults of per-call options are held to the checks a call's own values get: a bad one is the
    # bundle's fault, found at load, not a failure of every later call
    stored = {key: value for key, value in head.config.items() if key in RUNTIME_OPTIONS}
    try:
        check_options(stored, head.options)
    except InputError as exc:
        raise BundleError(f"head {head.name!r}: the manifest's postprocess_config does not hold ({exc}); export the "
                          "bundle again") from exc
    return head


def _check_head_width(backend: Any, head: _heads.RuntimeHead, path: Path) -> None:
    """A head's logits no wider than its labels: results would name labels that do not exist."""
    width = (backend.output_dims.get(head.outputs["logits"]) or [None])[-1]
    if head.labels and isinstance(width, int) and width > len(head.labels):
        raise BundleError(
            f"{path}: the logits of head {head.name!r} are {width} wide but the manifest has {len(head.labels)} "
            "labels; results would name labels that do not exist. Export the bundle again."
        )


def _load_postprocess(head: dict[str, Any], trust_remote_code: bool) -> tuple[Callable[..., list[dict]], dict | None]:
    """The postprocess of the installed head a manifest's head entry names, and the result fields it declares; the
    manifest's path is only a cross-check.

    A bundle is data: importing whatever module its manifest names would let a crafted file run code, so the
    function comes from the registry (built-ins and installed plugins) unless ``trust_remote_code=True``.
    A bundle exported with a built-in head gets the built-in, without importing any plugin (fast, and an
    installed plugin that overrides or breaks that head cannot change what an existing bundle serves).
    """
    from ..errors import HeadImportError
    from ..plugins import builtin_registry
    from ..installed import get_head

    path, name, plugin = head.get("postprocess"), head.get("head"), head.get("plugin", "?")
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

    spec = HeadSpec(name=str(head.get("head")), cls="-:-", task="custom", postprocess=path,
                    plugin=str(head.get("plugin", "?")), version=str(head.get("plugin_version", "")))
    try:
        return import_attr(path, spec, "postprocess")
    except ImportError as exc:
        raise BundleError(f"{exc}") from exc