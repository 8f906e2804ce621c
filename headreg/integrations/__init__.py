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
import re
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


def arrow_type(ddl: str) -> Any:
    """A declared field's Spark DDL type as a pyarrow type, so an Arrow column has the declared type in every
    batch (inferred, a batch whose rows hold no entity would make ``list<null>``). The types heads declare:
    string, double, float, int, bigint, boolean, ``array<T>``, ``map<K,V>``, ``struct<name:T,...>``."""
    import pyarrow as pa

    scalars = {"string": pa.string(), "double": pa.float64(), "float": pa.float32(), "int": pa.int32(),
               "integer": pa.int32(), "bigint": pa.int64(), "long": pa.int64(), "boolean": pa.bool_()}
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[<>,:]", ddl)
    position = 0

    def take(expected: str | None = None) -> str:
        nonlocal position
        token = tokens[position] if position < len(tokens) else ""
        if expected is not None and token != expected:
            raise ValueError(f"cannot read the Spark type {ddl!r}: expected {expected!r}, got {token!r}")
        position += 1
        return token

    def parse() -> Any:
        name = take().lower()
        if name == "array":
            take("<"), (item := parse()), take(">")
            return pa.list_(item)
        if name == "map":
            take("<"), (key := parse()), take(","), (value := parse()), take(">")
            return pa.map_(key, value)
        if name == "struct":
            take("<")
            fields = []
            while True:
                field = take()
                take(":")
                fields.append(pa.field(field, parse()))
                end = take()
                if end == ">":
                    return pa.struct(fields)
                if end != ",":
                    raise ValueError(f"cannot read the Spark type {ddl!r}: a struct's fields end with '>'")
        if name not in scalars:
            raise ValueError(f"cannot read the Spark type {ddl!r}: {name!r} is none of {', '.join(scalars)}")
        return scalars[name]

    parsed = parse()
    if position != len(tokens):
        raise ValueError(f"cannot read the Spark type {ddl!r}: it goes on after {parsed}")
    return parsed


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
