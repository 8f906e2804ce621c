"""The export bundle's file names and manifest (``headreg.json``): shared by the exporter and the runtime.

Torch-free and numpy-free on purpose: the production runtime reads this.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT = "headreg-bundle"
FORMAT_VERSION = 2  # 2: the "heads" list (several heads in one graph); format-1 bundles still load

MODEL_FILE = "model.onnx"
MODEL_DATA_FILE = "model.onnx.data"
INT8_FILE = "model.int8.onnx"
MANIFEST_FILE = "headreg.json"
TOKENIZER_FILE = "tokenizer.json"
VERIFICATION_FILE = "verification.json"
GOLDEN_FILE = "golden.npz"

REQUIRED_FILES = (MODEL_FILE, MANIFEST_FILE, TOKENIZER_FILE)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``headreg.json``; BundleError says what is missing or too new."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a directory; pass the directory written by 'headreg export'")
    missing = [name for name in REQUIRED_FILES if not (bundle_dir / name).is_file()]
    if missing:
        raise BundleError(
            f"{bundle_dir} is not a complete headreg bundle: missing {', '.join(missing)}. Export it again."
        )
    try:
        manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle_dir / MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{bundle_dir / MANIFEST_FILE} is not a headreg bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{bundle_dir} uses bundle format {version!r} (written by headreg {manifest.get('headreg_version')}); "
            f"this headreg reads format {FORMAT_VERSION} and older. Upgrade headreg: pip install -U headreg"
        )
    return manifest


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


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


def is_multi_head(manifest: dict[str, Any]) -> bool:
    """Whether results come back as a dict by head name (a bundle exported from a MultiHeadModel)."""
    return bool(manifest.get("multi_head"))
