"""Scale-out adapters over :class:`headreg.runtime.Predictor` for engines users already run.

- :mod:`headreg.integrations.ray`: ``BundlePredictor`` for Ray Data ``map_batches`` and ``deployment()`` for
  Ray Serve (``pip install 'headreg[ray]'``).
- :mod:`headreg.integrations.spark`: ``predict_udf()``, an iterator pandas UDF (``pip install 'headreg[spark]'``).

Both are thin: every row goes through ``Predictor.predict`` / ``Predictor.embed`` (one Predictor per worker
process, threads sized from the worker's CPUs), so results are exactly the Predictor's. Importing this package
imports neither the engines nor torch; each module imports its engine when used.

What is shared between them lives here: which result fields of a head become columns.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

# The fields each built-in postprocess returns that become columns (token heads: the entity spans; their
# per-token rows stay available through Predictor.predict, and would multiply the output size).
HEAD_FIELDS: dict[str, tuple[str, ...]] = {
    "seq_cls": ("label", "score", "scores"),
    "multi_label": ("labels", "scores"),
    "regression": ("values",),
    "token_cls": ("entities",),
}
_BUILTIN_POSTPROCESS = "headreg.runtime.postprocess:"


def head_kind(manifest: Mapping[str, Any]) -> str | None:
    """``seq_cls`` / ``multi_label`` / ``regression`` / ``token_cls`` when the bundle's results have that shape.

    A plugin head is recognised by what its postprocess returns, not by its name: a token-level head whose
    postprocess is built on ``aggregate_tokens`` (the CRF plugin) returns entities like ``token_cls``. Anything
    else is ``None``: its fields are whatever its postprocess returns.
    """
    head = manifest.get("head") or {}
    postprocess = str(head.get("postprocess") or "")
    if postprocess.startswith(_BUILTIN_POSTPROCESS) and postprocess[len(_BUILTIN_POSTPROCESS):] in HEAD_FIELDS:
        return postprocess[len(_BUILTIN_POSTPROCESS):]
    if head.get("level") == "token":
        return "token_cls"
    return None


def result_fields(manifest: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The result fields that become columns, or ``None`` for "every field the postprocess returns"."""
    kind = head_kind(manifest)
    return HEAD_FIELDS[kind] if kind else None


def head_layout(predictor: Any, options: Mapping[str, Any] | None = None) -> dict[str | None, str | None]:
    """What a predict call's results look like: ``{None: kind}`` for a single-head bundle (one result per
    input), ``{head name: kind}`` for the heads a multi-head bundle answers with (a dict by head name per
    input; ``heads=`` in ``options`` selects some). ``kind`` as :func:`head_kind` gives it.
    """
    if not getattr(predictor, "multi_head", False):
        return {None: head_kind(predictor.manifest)}
    selected = (options or {}).get("heads")
    selected = [selected] if isinstance(selected, str) else selected
    return {head.name: head_kind(head.manifest) for head in predictor.heads if not selected or head.name in selected}


def pick_fields(result: Mapping[str, Any], kind: str | None) -> dict[str, Any]:
    """A head's result cut to the fields that become columns (all of them for a head of unknown shape)."""
    return dict(result) if kind is None else {name: result[name] for name in HEAD_FIELDS[kind]}


WARM_UP_TEXT = "headreg warm-up"


def load_predictor(
    bundle: str | os.PathLike, threads: int, variant: str | None = None,
    predictor_options: Mapping[str, Any] | None = None, *, embed: bool = False,
    options: Mapping[str, Any] | None = None,
):
    """A Predictor on ``threads`` onnxruntime threads, warmed up with the call options it will serve.

    The warm-up runs the model once (``embed`` or ``predict`` with ``options``), so a misspelt option or an
    unusable bundle fails when the worker starts, with the Predictor's own error, instead of on its first
    batch, and the first batch is not slower than the rest.
    """
    from ..runtime import Predictor

    predictor = Predictor(bundle, threads=int(threads), variant=variant, **dict(predictor_options or {}))
    (predictor.embed if embed else predictor.predict)([WARM_UP_TEXT], **dict(options or {}))
    return predictor
