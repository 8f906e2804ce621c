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

Fields = dict[str, str]  # a head's declared result fields: name -> Spark DDL type, the decision first


def head_layout(predictor: Any, options: Mapping[str, Any] | None = None) -> dict[str | None, Fields | None]:
    """What a predict call's results look like: ``{None: fields}`` for a single-head bundle (one result per
    input), ``{head name: fields}`` for the heads a multi-head bundle answers with (a dict by head name per
    input; ``heads=`` in ``options`` selects some). ``fields``: the result fields the head declares (on its
    registration, recorded in the bundle), or None for a head that declares none (its results are kept whole).
    """
    if not getattr(predictor, "multi_head", False):
        return {None: predictor.heads[0].fields}
    selected = (options or {}).get("heads")
    selected = [selected] if isinstance(selected, str) else selected
    return {head.name: head.fields for head in predictor.heads if not selected or head.name in selected}


def pick_fields(result: Mapping[str, Any], fields: Fields | None) -> dict[str, Any]:
    """A head's result cut to its declared fields (all of them for a head that declares none)."""
    return dict(result) if fields is None else {name: result.get(name) for name in fields}


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
