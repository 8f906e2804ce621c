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
from .files import MODEL_CONFIG

FORMAT = "headreg-bundle"
FORMAT_VERSION = 1

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
    if missing and (bundle_dir / MODEL_CONFIG).is_file():
        raise BundleError(
            f"{bundle_dir} is a saved headreg model, not a bundle: run headreg export {bundle_dir} -o BUNDLE "
            "and use BUNDLE"
        )
    if missing and not (bundle_dir / MANIFEST_FILE).is_file():
        raise BundleError(
            f"{bundle_dir} is not a headreg bundle (it has no {MANIFEST_FILE}); pass the directory written by "
            "headreg export SOURCE -o DIR"
        )
    if missing:
        raise BundleError(
            f"{bundle_dir} is an incomplete headreg bundle: {', '.join(missing)} missing; export it again"
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
    # Keys in the order they were built: id2label and scores read in label-id order, not "0", "1", "10", "2".
    Path(path).write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
