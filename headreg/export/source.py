"""What ``headreg export SOURCE`` loads: a saved headreg model, a transformers task checkpoint, or a backbone.

- a directory written by ``HeadedModel.save_pretrained`` (``headreg_model.json``);
- a transformers checkpoint with a task head (``*ForSequenceClassification`` / ``*ForTokenClassification``
  in ``config.json``), imported through :func:`headreg.from_transformers`;
- a backbone directory plus ``head=`` and ``num_labels=``: a fresh, untrained head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HeadregError

TASK_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


class SourceError(HeadregError, ValueError):
    """SOURCE is missing, not a model, or needs options it was not given."""


@dataclass
class Source:
    model: Any  # HeadedModel
    tokenizer: Any  # a path or a tokenizer object
    info: dict[str, Any]  # the manifest's "source": {"path", "kind"}
    untrained: bool = False


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


def _config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc


def load_source(
    path: str | Path,
    *,
    head: str | None = None,
    num_labels: int | None = None,
    tokenizer: Any = None,
) -> Source:
    """Load SOURCE as a HeadedModel in eval mode, with where its tokenizer is."""
    from ..model import BACKBONE_DIR, MODEL_CONFIG, load_model, quiet_transformers

    path = Path(path).resolve()
    if not path.exists():
        raise SourceError(f"SOURCE {path} does not exist")
    if not path.is_dir():
        raise SourceError(f"SOURCE {path} is a file; pass a model directory (save_pretrained output)")
    if (path / MODEL_CONFIG).is_file():
        if head is not None or num_labels is not None:
            raise SourceError(f"{path} is a saved headreg model that already has a head; drop --head/--num-labels")
        model = load_model(path)
        if tokenizer is None:
            saved = json.loads((path / MODEL_CONFIG).read_text()).get("tokenizer_source")
            candidates = [path, Path(saved) if saved else None, path / BACKBONE_DIR]
            tokenizer = next((c for c in candidates if c is not None and _has_tokenizer(c)), None)
        return Source(model, tokenizer, {"path": str(path), "kind": "headreg"})
    if not (path / "config.json").is_file():
        raise SourceError(
            f"SOURCE {path} is not a model directory: it has neither {MODEL_CONFIG} (headreg save_pretrained) "
            "nor config.json (transformers save_pretrained)"
        )
    architectures = _config(path).get("architectures") or []
    task = next((arch for arch in architectures if arch.endswith(TASK_SUFFIXES)), None)
    tokenizer = tokenizer if tokenizer is not None else (path if _has_tokenizer(path) else None)
    if task is not None and num_labels is None:
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        from ..interop import from_transformers

        auto = AutoModelForTokenClassification if task.endswith("ForTokenClassification") else AutoModelForSequenceClassification
        with quiet_transformers():
            try:
                hf = auto.from_pretrained(path, use_safetensors=True)
            except (OSError, ValueError) as exc:
                raise SourceError(f"cannot load the {task} checkpoint in {path}: {exc}") from exc
        model = from_transformers(hf, head=head).eval()
        return Source(model, tokenizer, {"path": str(path), "kind": "transformers"})
    if task is not None and head is None:
        raise SourceError(
            f"{path} is a {task} checkpoint with its own head: drop --num-labels to export that head, or pass "
            "--head NAME as well to replace it with a fresh one"
        )
    if head is None or num_labels is None:
        what = f"a {architectures[0]}" if architectures else "a backbone"
        raise SourceError(
            f"{path} is {what} without a task head; pass --head NAME --num-labels N to attach a fresh head "
            "(see 'headreg heads')"
        )
    from transformers import AutoModel

    from ..model import attach_head

    with quiet_transformers():
        try:
            backbone = AutoModel.from_pretrained(path, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot load a backbone from {path}: {exc}") from exc
    if backbone.base_model is not backbone:
        backbone = backbone.base_model
    model = attach_head(backbone.eval(), head, num_labels=num_labels).eval()
    return Source(model, tokenizer, {"path": str(path), "kind": "backbone"}, untrained=True)
