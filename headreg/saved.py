"""The saved-model format: ``headreg_model.json`` as ``HeadedModel.save_pretrained`` and
``MultiHeadModel.save_pretrained`` write it, checked field by field before anything is built from it.

A leaf below :mod:`headreg.model` and :mod:`headreg.multihead`: both write this format and
:func:`headreg.loading.load_model` reads it, so neither model module imports the other to recognise a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from transformers.activations import ACT2FN

from . import schema as S
from ._version import __version__
from .errors import HeadregError, SaveLoadError
from .files import BACKBONE_DIR, HEAD_WEIGHTS, MODEL_CONFIG
from .manifest import MAX_LABELS, read_json_file
from .pooling import STRATEGIES

FORMAT = "headreg-model"
FORMAT_VERSION = 2  # 2: several heads ("heads", see multihead.py); single-head models are still written as 1
MODEL_KIND = "headreg saved model"
CONFIG_MAX_BYTES = 64 << 20

# headreg_model.json, checked field by field before anything is built from it (see headreg/schema.py).
HEAD_NAME = S.matches(r"^[A-Za-z][A-Za-z0-9_.\-]*$", "a head name (letters, digits, _ - .)")
HEAD_CONFIG_SCHEMA = S.obj(
    {
        "num_labels": S.integer(1, MAX_LABELS),
        "id2label": S.optional(S.mapping(S.index_key(MAX_LABELS), S.string(), max_items=MAX_LABELS)),
        # The fields every head shares (heads.base.HeadConfig); a head's own fields are checked by the head.
        "dropout": S.number(0, 1),
        "hidden_layers": S.sequence(S.integer(1, 1 << 20), max_items=64),
        "activation": S.one_of(*ACT2FN.keys()),
    },
    extra=True,
)
POOLING_SCHEMA = S.obj(
    {
        "strategy": S.one_of(*(name for name in STRATEGIES if name != "auto")),
        "projection": S.boolean,
        "activation": S.optional(S.one_of(*ACT2FN.keys())),
        "norm": S.boolean,
        "bias": S.boolean,
        "norm_bias": S.boolean,
        "norm_eps": S.number(0, 1),
        # a sentence-transformers checkpoint's Dense layers and Normalize (headreg/sentence_modules.py)
        "dense": S.sequence(
            S.obj(
                {
                    "in_features": S.integer(1, 1 << 20),
                    "out_features": S.integer(1, 1 << 20),
                    "bias": S.boolean,
                    "activation": S.optional(S.one_of(*ACT2FN.keys())),
                },
                required=("in_features", "out_features"),
            ),
            max_items=16,
        ),
        "normalize": S.boolean,
    },
    required=("strategy",),
)
SAVED_MODEL_SCHEMA = S.obj(
    {
        "format": S.one_of(FORMAT),
        "format_version": S.integer(1, None),
        "headreg_version": S.string(max_len=64),
        "head": HEAD_NAME,
        "plugin": S.optional(S.string(max_len=256)),
        "plugin_version": S.optional(S.string(max_len=256)),
        "head_config": HEAD_CONFIG_SCHEMA,
        "pooling": POOLING_SCHEMA,
        "backbone": S.one_of(BACKBONE_DIR),
        "tokenizer_source": S.optional(S.string(max_len=4096)),
    },
    required=("format", "head", "head_config", "pooling"),
    extra=True,
)

# A head's name becomes part of ONNX output names ("{name}.logits") and of module paths: no dots.
MEMBER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MAX_HEADS = 256

# headreg_model.json of a model saved with several heads, checked field by field before anything is built.
SAVED_MULTI_HEAD_SCHEMA = S.obj(
    {
        "format": S.one_of(FORMAT),
        "format_version": S.integer(2, None),
        "headreg_version": S.string(max_len=64),
        "heads": S.sequence(
            S.obj(
                {
                    "name": S.matches(MEMBER_NAME.pattern, "a head name (a letter, then letters, digits, _ -)"),
                    "head": HEAD_NAME,
                    "plugin": S.optional(S.string(max_len=256)),
                    "plugin_version": S.optional(S.string(max_len=256)),
                    "head_config": HEAD_CONFIG_SCHEMA,
                    "pooling": S.matches(r"^[A-Za-z][A-Za-z0-9_]{0,63}$", "a pooling key"),
                    "loss_weight": S.number(0, None),
                },
                required=("name", "head", "head_config", "pooling"),
            ),
            min_items=1,
            max_items=MAX_HEADS,
        ),
        "poolings": S.mapping(S.matches(r"^[A-Za-z][A-Za-z0-9_]{0,63}$", "a pooling key"), POOLING_SCHEMA,
                              min_items=1, max_items=MAX_HEADS),
        "backbone": S.one_of(BACKBONE_DIR),
        "tokenizer_source": S.optional(S.string(max_len=4096)),
    },
    required=("format", "format_version", "heads", "poolings"),
    extra=True,
)


def is_saved_model(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is recognisably a saved headreg model: what ``overwrite=True`` may replace."""
    try:
        saved = read_json_file(Path(directory) / MODEL_CONFIG, CONFIG_MAX_BYTES)
    except HeadregError:
        return False
    return isinstance(saved, dict) and saved.get("format") == FORMAT


def read_saved_model(directory: Path) -> dict[str, Any]:
    """The checked ``headreg_model.json`` of a saved model's ``directory``, once its files are all there."""
    if not directory.is_dir():
        raise SaveLoadError(f"{directory} is not a directory saved by HeadedModel.save_pretrained")
    missing = [
        name for name in (MODEL_CONFIG, HEAD_WEIGHTS, f"{BACKBONE_DIR}/config.json") if not (directory / name).is_file()
    ]
    if missing:
        raise SaveLoadError(
            f"{directory} is missing {', '.join(missing)}; it was not written by HeadedModel.save_pretrained "
            "or is incomplete. Save the model again."
        )
    return read_saved_config(directory)


def read_saved_config(directory: Path) -> dict[str, Any]:
    """``headreg_model.json``, checked field by field; SaveLoadError names the first bad field.

    A model saved with several heads (``heads``) is checked against SAVED_MULTI_HEAD_SCHEMA.
    """
    path = directory / MODEL_CONFIG
    saved = read_json_file(path, CONFIG_MAX_BYTES, error=SaveLoadError)
    if isinstance(saved, dict) and isinstance(saved.get("format_version"), int) and saved["format_version"] > FORMAT_VERSION:
        raise SaveLoadError(
            f"{directory} was saved by headreg {saved.get('headreg_version')} in model format "
            f"{saved['format_version']}; this headreg ({__version__}) reads up to {FORMAT_VERSION}. Upgrade headreg."
        )
    try:
        if isinstance(saved, dict) and "heads" in saved:
            SAVED_MULTI_HEAD_SCHEMA(saved, "")
        else:
            SAVED_MODEL_SCHEMA(saved, "")
    except S.Invalid as exc:
        raise SaveLoadError(f"{path} is corrupt: {exc.message}. Save the model again.") from None
    return saved
