"""The export bundle's file names and manifest (``headreg.json``): shared by the exporter and the runtime.

Torch-free and numpy-free on purpose: the production runtime reads this. A bundle is data that may come
from someone else, so everything read from it is checked here before it is used: the manifest's fields
against a declarative schema (:data:`MANIFEST_SCHEMA`, built from the small checks in
:mod:`headreg.schema`), every path it names (inside the bundle, a regular file, bounded size), and JSON
with duplicate keys is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import schema as S
from .errors import BundleError
from .files import MODEL_CONFIG

FORMAT = "headreg-bundle"
FORMAT_VERSION = 2  # 2: the "heads" list (several heads in one graph); format-1 bundles still load
BUNDLE_KIND = "headreg bundle"

MODEL_FILE = "model.onnx"
MODEL_DATA_FILE = "model.onnx.data"
INT8_FILE = "model.int8.onnx"
MANIFEST_FILE = "headreg.json"
TOKENIZER_FILE = "tokenizer.json"
VERIFICATION_FILE = "verification.json"
GOLDEN_FILE = "golden.npz"

REQUIRED_FILES = (MODEL_FILE, MANIFEST_FILE, TOKENIZER_FILE)

# Upper bounds on what is read from a bundle before it is parsed (a crafted bundle must not exhaust memory).
# The largest real tokenizer.json files are ~35 MB (Gemma's 256k vocabulary); manifests are a few KB, but
# a 1M-label id2label takes ~30 MB.
MANIFEST_MAX_BYTES = 64 << 20
TOKENIZER_MAX_BYTES = 128 << 20
VERIFICATION_MAX_BYTES = 64 << 20
GOLDEN_MAX_BYTES = 1 << 30  # uncompressed, all members together
# Hashing is ~1.5 GB/s here: files up to this size are always checked against the manifest at load.
SMALL_FILE_BYTES = 16 << 20
MAX_LABELS = 1_000_000
MAX_LENGTH_LIMIT = 1 << 20


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- bounded, in-bundle file access -------------------------------------------------------------------------------


def bundle_path(bundle_dir: str | os.PathLike, name: Any, *, what: str = "file") -> Path:
    """The path of ``name`` inside the bundle; BundleError unless it stays inside and is a regular file.

    Refused: non-strings, absolute paths, ``..``, a symlink (anywhere on the way) that leads out of the
    bundle, and anything that is not a regular file (a directory, ``/dev/zero``, a FIFO).
    """
    root = Path(os.path.realpath(bundle_dir))
    problem = S.relative_path_problem(name)
    if problem:
        raise BundleError(f"{bundle_dir}: the manifest's {what} {name!r} {problem}; export the bundle again")
    path = root / name
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise BundleError(
            f"{bundle_dir}: the manifest's {what} {name!r} leads out of the bundle (to {real}); a bundle may only "
            "name its own files. Export the bundle again."
        )
    try:
        info = os.stat(real)
    except OSError as exc:
        raise BundleError(f"{bundle_dir}: the manifest's {what} {name!r} does not exist ({exc.strerror}); export again") from exc
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{bundle_dir}: the manifest's {what} {name!r} is not a regular file; export the bundle again")
    return path


def read_bounded(path: str | os.PathLike, max_bytes: int, *, what: str = "file") -> bytes:
    """A regular file's bytes, refusing more than ``max_bytes`` (checked on the open file, then while reading)."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"{path} is not a regular file")
            if info.st_size > max_bytes:
                raise BundleError(
                    f"{path} is {info.st_size / 1e6:.1f} MB, more than a {what} may be ({max_bytes / 1e6:.0f} MB); "
                    "it is not what 'headreg export' wrote"
                )
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise BundleError(f"{path} grew past {max_bytes / 1e6:.0f} MB while being read")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(data: bytes | str) -> Any:
    """JSON without duplicate keys and without NaN/Infinity (both are legal for Python's json, not for JSON)."""
    return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def read_json_file(path: str | os.PathLike, max_bytes: int, error: type[Exception] = BundleError) -> Any:
    try:
        return loads_strict(read_bounded(path, max_bytes, what=Path(path).name))
    except BundleError as exc:
        raise error(str(exc)) from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"{path} is corrupt: not valid JSON ({exc})") from exc


# --- the manifest schema -------------------------------------------------------------------------------------------

_HEAD_NAME = S.matches(r"^[A-Za-z][A-Za-z0-9_.\-]*$", "a head name (letters, digits, _ - .)")
_ENTRY = S.matches(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", "a 'module:attr' string")
_SHA256 = S.matches(r"^[0-9a-f]{64}$", "a sha256 hex digest")
_ID2LABEL = S.mapping(S.index_key(MAX_LABELS), S.string(), max_items=MAX_LABELS)
_DIM = S.any_of(S.integer(0, None), S.string(max_len=256), S.null)

# A head's description: a single-head manifest's ``head``, and each entry of ``heads``.
_HEAD_FIELDS = {
    "task": S.optional(S.string(max_len=4096)),
    "level": S.one_of("sequence", "token"),
    "problem_type": S.optional(S.string(max_len=256)),
    "postprocess": S.optional(_ENTRY),
    "config": S.obj({"num_labels": S.integer(1, MAX_LABELS), "id2label": S.optional(_ID2LABEL)}, extra=True),
}
# A head's labels and pooling: top level in a single-head manifest, in each entry of ``heads`` (see bundle_heads).
_HEAD_SETTINGS = {
    "postprocess_config": S.obj({"id2label": S.optional(_ID2LABEL)}, extra=True),
    "num_labels": S.integer(1, MAX_LABELS),
    "id2label": _ID2LABEL,
    "pooling": S.obj({}, extra=True),
}

HEAD_SCHEMA = S.obj(
    {"name": _HEAD_NAME, "plugin": S.string(max_len=256), "plugin_version": S.string(max_len=256), **_HEAD_FIELDS},
    required=("name", "level"),
)

# One entry per variant name ("fp32", "int8", ...): #9 adds per-variant fields under ``extra``.
VARIANT_SCHEMA = S.obj(
    {
        "file": S.relative_path,
        "weights": S.relative_path,  # a weights file beside ``file`` (OpenVINO IR: model.xml + model.bin)
        "precision": S.string(max_len=32),
        "backend": S.string(max_len=64),
        "requires_cpu": S.sequence(S.string(max_len=64), max_items=64),
        "optimized": S.boolean,
        "decision_agreement": S.number(0, 1),
        "min_agreement": S.number(0, 1),
        "speedup_vs_fp32": S.mapping(S.string(max_len=64), S.number(0, None)),
    },
    required=("file",),
    extra=True,
)

MAX_HEADS = 256
# One entry of format 2's "heads" list (see bundle_heads and docs/bundle-format.md).
HEADS_ENTRY_SCHEMA = S.obj(
    {
        "name": S.matches(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$", "a head name in the model (a letter, then letters, digits, _ -)"),
        "head": _HEAD_NAME,
        "plugin": S.optional(S.string(max_len=256)),
        "plugin_version": S.optional(S.string(max_len=256)),
        **_HEAD_FIELDS,
        **_HEAD_SETTINGS,
        "outputs": S.mapping(S.string(max_len=256), S.string(max_len=256), min_items=1, max_items=64),
    },
    required=("name", "head", "level", "outputs"),
    extra=True,
)

MANIFEST_SCHEMA = S.obj(
    {
        "format": S.one_of(FORMAT),
        "format_version": S.integer(1, None),
        "headreg_version": S.string(max_len=64),
        "head": HEAD_SCHEMA,
        **_HEAD_SETTINGS,
        "backbone": S.obj(
            {
                "hidden_size": S.optional(S.integer(1, 1 << 20)),
                "vocab_size": S.optional(S.integer(1, 1 << 26)),
                "max_position_embeddings": S.optional(S.integer(1, None)),
                "is_decoder": S.boolean,
            },
            extra=True,
        ),
        "inputs": S.unique_list(S.one_of("input_ids", "attention_mask", "token_type_ids"), min_items=2, max_items=3),
        "outputs": S.mapping(S.string(max_len=256), S.sequence(_DIM, max_items=8), min_items=1, max_items=64),
        "opset": S.integer(1, 1000),
        "max_length": S.integer(1, MAX_LENGTH_LIMIT),
        "padding_side": S.one_of("left", "right"),
        "batch_padding": S.boolean,
        "tokenizer": S.obj(
            {
                "file": S.relative_path,
                "sha256": S.optional(_SHA256),
                "pad_token_id": S.optional(S.integer(0, 1 << 26)),
                "pad_token": S.optional(S.string(max_len=1024)),
                "pair": S.boolean,
            },
            extra=True,
        ),
        "files": S.mapping(S.relative_path, _SHA256, max_items=1024),
        "variants": S.mapping(S.string(max_len=64), S.any_of(VARIANT_SCHEMA, S.string(max_len=64)), max_items=64),
        "verification": S.obj({"atol": S.number(0, None), "rtol": S.number(0, None), "passed": S.boolean}, extra=True),
        "multi_head": S.boolean,
        "heads": S.sequence(HEADS_ENTRY_SCHEMA, min_items=1, max_items=MAX_HEADS),
    },
    required=("format", "format_version"),
    extra=True,
)


def _cross_checks(manifest: dict[str, Any]) -> None:
    """Relations between fields that the per-field schema cannot express."""
    if manifest.get("multi_head"):
        if "heads" not in manifest:
            raise S.Invalid("heads", "is required when multi_head is true")
    elif "head" not in manifest:
        raise S.Invalid("head", "is required (a single-head bundle)")
    entries = [("", manifest)] + [(f"heads[{i}].", entry) for i, entry in enumerate(manifest.get("heads") or [])]
    for where, entry in entries:
        labels = entry.get("id2label") or {}
        num_labels = entry.get("num_labels")
        if labels and num_labels is not None and sorted(int(k) for k in labels) != list(range(num_labels)):
            raise S.Invalid(f"{where}id2label", f"must have the keys 0..{num_labels - 1} (num_labels={num_labels})")
    names = [entry["name"] for entry in manifest.get("heads") or []]
    if len(set(names)) != len(names):
        raise S.Invalid("heads", f"names a head twice: {names}")
    graph = manifest.get("outputs")
    # A single-head bundle's top-level fields are what counts; headreg verify reports a heads list that disagrees.
    for i, entry in enumerate(manifest.get("heads") or [] if manifest.get("multi_head") else []):
        missing = sorted(set(entry["outputs"].values()) - set(graph or {})) if isinstance(graph, dict) else []
        if missing or "logits" not in entry["outputs"]:
            raise S.Invalid(f"heads[{i}].outputs", f"must map 'logits' and name graph outputs only (not {missing})")
    inputs = manifest.get("inputs")
    if inputs is not None and not {"input_ids", "attention_mask"} <= set(inputs):
        raise S.Invalid("inputs", "must include input_ids and attention_mask")
    variants = manifest.get("variants")
    if variants is not None:
        default = variants.get("default")
        if default is not None and not isinstance(variants.get(default), dict):
            raise S.Invalid("variants.default", f"names {default!r}, which is not one of the variants")
        for name, value in variants.items():
            if name != "default" and not isinstance(value, dict):
                raise S.Invalid(f"variants.{name}", "must be an object with a 'file'")


def validate_manifest(manifest: Any, where: str | os.PathLike = MANIFEST_FILE) -> dict[str, Any]:
    """Check a manifest's fields and their relations; BundleError names the first bad field."""
    try:
        MANIFEST_SCHEMA(manifest, "")
        _cross_checks(manifest)
    except S.Invalid as exc:
        raise BundleError(f"{where}: {exc.message}. The manifest is corrupt or hand-edited; export the bundle again.") from None
    return manifest


def read_manifest(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``headreg.json``; BundleError says what is missing, too new, or malformed (naming the field)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a directory; pass the directory written by 'headreg export'")
    missing = [name for name in REQUIRED_FILES if not os.path.lexists(bundle_dir / name)]
    if missing and (bundle_dir / MODEL_CONFIG).is_file():
        raise BundleError(
            f"{bundle_dir} is a saved headreg model, not a bundle: run headreg export {bundle_dir} -o BUNDLE "
            "and use BUNDLE"
        )
    if missing and not os.path.lexists(bundle_dir / MANIFEST_FILE):
        raise BundleError(
            f"{bundle_dir} is not a headreg bundle (it has no {MANIFEST_FILE}); pass the directory written by "
            "headreg export SOURCE -o DIR"
        )
    if missing:
        raise BundleError(
            f"{bundle_dir} is an incomplete headreg bundle: {', '.join(missing)} missing; export it again"
        )
    path = bundle_path(bundle_dir, MANIFEST_FILE, what="manifest")
    manifest = read_json_file(path, MANIFEST_MAX_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{bundle_dir / MANIFEST_FILE} is not a headreg bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise BundleError(
            f"{bundle_dir} uses bundle format {version!r} (written by headreg {manifest.get('headreg_version')}); "
            f"this headreg reads format {FORMAT_VERSION} and older. Upgrade headreg: pip install -U headreg"
        )
    return validate_manifest(manifest, bundle_dir / MANIFEST_FILE)


def is_bundle(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is recognisably a headreg bundle (its manifest says so); what --overwrite may replace."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = read_json_file(path, MANIFEST_MAX_BYTES)
    except BundleError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def write_json(path: str | os.PathLike, data: Any) -> None:
    # Keys in the order they were built: id2label and scores read in label-id order, not "0", "1", "10", "2".
    Path(path).write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def bundle_heads(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's heads as a list, whatever its format version.

    A multi-head bundle lists them in ``heads``. A single-head bundle (any format) describes its head with the
    top-level ``head``, ``postprocess_config``, ``num_labels``, ``id2label`` and ``pooling``, its graph outputs
    named after the head's own; those fields are what counts, and it comes back as the one-element list that
    format 2 also writes into its ``heads`` (``headreg verify`` checks that the two agree).
    """
    heads = manifest.get("heads")
    if is_multi_head(manifest):
        return heads if isinstance(heads, list) else []
    head = manifest.get("head") or {}
    outputs = manifest.get("outputs") or ["logits", "pooled_output"]
    return [
        {
            "name": head.get("name", "?"),
            "head": head.get("name", "?"),
            "plugin": head.get("plugin"),
            "plugin_version": head.get("plugin_version"),
            "task": head.get("task"),
            "level": head.get("level", "sequence"),
            "problem_type": head.get("problem_type"),
            "postprocess": head.get("postprocess"),
            "config": head.get("config") or {},
            "postprocess_config": manifest.get("postprocess_config") or {},
            "num_labels": manifest.get("num_labels"),
            "id2label": manifest.get("id2label") or {},
            "pooling": manifest.get("pooling"),
            "outputs": {name: name for name in outputs},
        }
    ]


# The rank of the logits a head's postprocess reads: [batch, labels] per text, [batch, tokens, labels] per token.
LOGITS_RANK = {"sequence": 2, "token": 3}


def head_output_problems(manifest: dict[str, Any], graph_outputs: Mapping[str, Sequence[Any]]) -> list[str]:
    """Heads whose level does not fit their logits in the graph (``graph_outputs``: output name -> dims).

    A crafted manifest can name a token head (a CRF's Viterbi) over a sequence-classification graph; its
    postprocess would fail on the wrong shape, or read it wrongly. Checked before any postprocess runs.
    """
    problems = []
    for entry in bundle_heads(manifest):
        output = (entry.get("outputs") or {}).get("logits", "logits")
        dims, rank = graph_outputs.get(output), LOGITS_RANK.get(entry.get("level"))
        if dims is None or rank is None or len(dims) == rank:
            continue
        problems.append(
            f"head {entry.get('name')!r} is a {entry.get('level')}-level head (it reads logits with {rank} dimensions) "
            f"but the graph's {output!r} output has {len(dims)}; the manifest does not describe this model. Export "
            "the bundle again"
        )
    return problems


def is_multi_head(manifest: dict[str, Any]) -> bool:
    """Whether results come back as a dict by head name (a bundle exported from a MultiHeadModel)."""
    return bool(manifest.get("multi_head"))


OUTPUT_AXES = ("token", "row", "shared")


def axes_from_dims(dims: Any) -> str:
    """An output's axes from its graph dims: "token" ([batch, sequence, ...]), "row" ([batch, ...]) or "shared"
    (no batch axis). Symbolic (named or unknown) dims are the dynamic batch and sequence axes."""
    dims = dims or ["batch"]
    dynamic = [not (isinstance(d, int) and d > 0) for d in dims]
    if not dynamic or not dynamic[0]:
        return "shared"
    return "token" if len(dims) >= 2 and dynamic[1] else "row"
