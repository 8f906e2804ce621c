"""Spark on a headreg bundle: ``predict_udf``, an iterator pandas UDF (``pip install 'headreg[spark]'``).

>>> from pyspark.sql import SparkSession, functions as F
>>> from headreg.integrations.spark import predict_udf
>>> spark = SparkSession.builder.master("local[2]").getOrCreate()                  # doctest: +SKIP
>>> df = spark.createDataFrame([("great film",), ("dull",)], ["text"])             # doctest: +SKIP
>>> udf = predict_udf("bundle/", output="struct")                                 # doctest: +SKIP
>>> df.withColumn("pred", udf(F.col("text"))).show()                               # doctest: +SKIP
>>> df.withColumn("pred", udf(F.col("premise"), F.col("hypothesis")))             # sentence pairs  # doctest: +SKIP

Each Python worker process loads the bundle once (a module-level cache keyed by bundle and options) and
keeps it for every later batch and task it runs (``spark.python.worker.reuse``, on by default). See
docs/scale-out.md for the return schema per head and how bundles reach the executors.
"""

# No ``from __future__ import annotations`` here: pandas_udf reads the UDFs' type hints to pick the
# iterator evaluation type, and they must be real objects, built where pandas is imported.

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import HeadregError, require
from . import head_layout, load_predictor, pick_fields

OUTPUTS = ("label", "struct", "embedding", "json")
# output="label": the head's decision alone, its first declared result field; output="struct": every declared field.


@dataclass(frozen=True)
class _Spec:
    """What a worker needs to load the Predictor; pickled into the UDF (small, no Spark objects)."""

    bundle: str  # the path on the driver
    shipped: str | None  # SparkFiles name when the bundle was shipped with addFile
    output: str
    layout: tuple  # ((head name or None, ((field, type), ...) or None), ...): see head_layout
    threads: int
    variant: str | None
    predictor_options: tuple = ()
    options: str = "{}"  # JSON, so the spec is hashable and the cache key covers every option

    def resolve(self) -> str:
        """The bundle's path in this process: the shipped copy if there is one, else the driver's path."""
        if self.shipped:
            from pyspark import SparkFiles

            copy = SparkFiles.get(self.shipped)
            if os.path.isdir(copy):
                return copy
        return self.bundle


class _Loads:
    """AccumulatorParam (duck-typed: a module-level class, picklable to workers) collecting load records."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, first: list, second: list) -> list:  # noqa: N802 - Spark's name
        return first + second


_SHIPPED: dict = {}  # (application id, name) -> the bundle path shipped under that name (driver side)
_PREDICTORS: dict = {}  # _Spec -> Predictor, one per Python worker process
_LOCK = threading.Lock()


def _predictor(spec: _Spec, loads: Any):
    with _LOCK:
        predictor = _PREDICTORS.get(spec)
        if predictor is None:
            start = time.perf_counter()
            path = spec.resolve()
            predictor = load_predictor(path, spec.threads, spec.variant, dict(spec.predictor_options),
                                       embed=spec.output == "embedding", options=json.loads(spec.options))
            _PREDICTORS[spec] = predictor
            if loads is not None:
                loads.add([{"worker": f"{socket.gethostname()}:{os.getpid()}", "bundle": path,
                            "threads": spec.threads, "seconds": round(time.perf_counter() - start, 3)}])
        return predictor


class BundleUDF:
    """What :func:`predict_udf` returns: call it on one text column, or two for sentence pairs.

    ``return_type``: the Spark DDL of the result column. ``loads``: one record per Predictor the Python
    workers built so far (worker ``host:pid``, bundle path, threads, seconds), read on the driver after an
    action; with worker reuse it has one record per worker process, however many batches and tasks ran.
    """

    def __init__(self, spec: _Spec, return_type: str, accumulator: Any):
        self.spec, self.return_type, self._accumulator = spec, return_type, accumulator
        self._udfs: dict[int, Any] = {}

    def __call__(self, text: Any, text_pair: Any = None):
        pairs = text_pair is not None
        if pairs not in self._udfs:
            self._udfs[pairs] = _make_udf(self.spec, self.return_type, self._accumulator, pairs)
        return self._udfs[pairs](text, text_pair) if pairs else self._udfs[pairs](text)

    @property
    def loads(self) -> list[dict[str, Any]]:
        return list(self._accumulator.value) if self._accumulator is not None else []


def predict_udf(
    bundle: str | os.PathLike,
    output: str = "label",
    threads: int = 1,
    *,
    variant: Optional[str] = None,
    ship: Optional[bool] = None,
    predictor_options: Optional[Mapping[str, Any]] = None,
    **options: Any,
) -> BundleUDF:
    """An iterator pandas UDF predicting with ``bundle``: ``df.withColumn("pred", udf(F.col("text")))``.

    ``output``: ``"label"`` (the decision: seq_cls ``string`` label, multi_label ``array<string>`` labels,
    regression ``array<double>`` values, token heads ``array<entity struct>``), ``"struct"`` (every field:
    see :data:`SCHEMAS`), ``"embedding"`` (``array<float>`` pooled_output) or ``"json"`` (the Predictor's
    result as a JSON string; the only choice for a plugin head whose result has another shape).
    ``threads``: onnxruntime threads per Python worker: with ``local[N]`` or N cores per executor, N workers
    run at once, so threads x N should not exceed the cores. ``ship``: copy the bundle to the executors with
    ``SparkContext.addFile`` (default: when the master is not ``local``; pass ``ship=False`` when the path
    is on a filesystem every executor mounts). Other keywords are per-call predict options, checked here on
    the driver by loading the bundle once. A null text (or either side of a pair) gives a null result.
    """
    require("pyspark", "spark", "predict_udf")
    require("pandas", "spark", "predict_udf")
    from pyspark import SparkContext

    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
    sc = SparkContext._active_spark_context
    if sc is None:
        raise HeadregError("predict_udf needs an active SparkSession (classic, not Spark Connect): "
                           "create it first, e.g. SparkSession.builder.master('local[2]').getOrCreate()")
    path = Path(bundle).expanduser().resolve()
    # Load once here: a bad bundle or a misspelt option fails now, not inside every executor.
    predictor = load_predictor(path, 1, variant, predictor_options, embed=output == "embedding", options=options)
    layout = head_layout(predictor, options)
    return_type = _return_type(output, layout, predictor.head)
    if ship is None:
        ship = not sc.master.startswith("local")
    shipped = _ship(sc, path) if ship else None
    spec = _Spec(str(path), shipped, output,
                 tuple((name, None if fields is None else tuple(fields.items())) for name, fields in layout.items()),
                 int(threads), variant,
                 tuple(sorted((predictor_options or {}).items())), json.dumps(options, sort_keys=True))
    return BundleUDF(spec, return_type, sc.accumulator([], _Loads()))


def _return_type(output: str, layout: dict, head: str) -> str:
    """The UDF's Spark DDL from the heads' declared result fields; a multi-head bundle's is a struct with one
    field per head."""
    if output == "embedding":
        return "array<float>"
    if output == "json":
        return "string"
    undeclared = [name or head for name, fields in layout.items() if not fields]
    if undeclared:
        raise HeadregError(f"head {', '.join(map(repr, undeclared))} declares no result fields, so its results have no "
                           "fixed Spark schema: use output='json' (or 'embedding')")

    def ddl(fields: dict[str, str]) -> str:
        if output == "label":
            return next(iter(fields.values()))
        return "struct<" + ",".join(f"{_quoted(name)}:{kind}" for name, kind in fields.items()) + ">"

    if None in layout:
        return ddl(layout[None])
    return "struct<" + ",".join(f"`{name}`:{ddl(fields)}" for name, fields in layout.items()) + ">"


def _quoted(name: str) -> str:
    """A struct field name as Spark DDL takes it: plain identifiers as is, others (``a-b``, ``a.b``) in backticks."""
    return name if name.isidentifier() else f"`{name}`"


def _ship(sc: Any, path: Path) -> str:
    """``addFile(recursive=True)`` once per bundle path; executors find it with ``SparkFiles.get(name)``."""
    name = path.name
    key = (sc.applicationId, name)
    if _SHIPPED.get(key, str(path)) != str(path):
        raise HeadregError(f"a bundle named {name!r} was already shipped from {_SHIPPED[key]}; Spark keys shipped "
                           f"files by name: copy {path} to a directory with another name")
    if key not in _SHIPPED:
        sc.addFile(str(path), recursive=True)
        _SHIPPED[key] = str(path)
    return name


def _make_udf(spec: _Spec, return_type: str, loads: Any, pairs: bool):
    import pandas as pd
    from pyspark.sql.functions import pandas_udf
    from typing import Iterator, Tuple

    if pairs:
        def predict_pairs(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
            predictor = _predictor(spec, loads)
            for first, second in batches:
                yield _predict_batch(predictor, spec, list(zip(first.tolist(), second.tolist())))

        return pandas_udf(predict_pairs, return_type)

    def predict_texts(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        predictor = _predictor(spec, loads)
        for texts in batches:
            yield _predict_batch(predictor, spec, texts.tolist())

    return pandas_udf(predict_texts, return_type)


def _is_null(value: Any) -> bool:
    if isinstance(value, tuple):
        return any(_is_null(side) for side in value)
    return value is None or (isinstance(value, float) and value != value)


def _predict_batch(predictor: Any, spec: _Spec, texts: list):
    """One Arrow batch -> a pandas Series (or a DataFrame for struct results), null rows kept null."""
    import pandas as pd

    rows = [i for i, text in enumerate(texts) if not _is_null(text)]
    inputs = [texts[i] for i in rows]
    run = predictor.embed if spec.output == "embedding" else predictor.predict
    results: list[Any] = [None] * len(texts)
    for i, result in zip(rows, run(inputs, **json.loads(spec.options)) if inputs else []):
        results[i] = result
    if spec.output == "embedding":
        return pd.Series(results, dtype=object)
    if spec.output == "json":
        return pd.Series([None if r is None else json.dumps(r) for r in results], dtype=object)
    layout = {name: dict(fields) for name, fields in spec.layout}
    if None in layout:
        fields = layout[None]
        if spec.output == "label":
            decision = next(iter(fields))
            return pd.Series([None if r is None else r[decision] for r in results], dtype=object)
        return pd.DataFrame({name: [None if r is None else r.get(name) for r in results] for name in fields})
    if spec.output == "label":
        return pd.DataFrame({head: [None if r is None else r[head][next(iter(fields))] for r in results]
                             for head, fields in layout.items()})
    return pd.DataFrame({head: [None if r is None else pick_fields(r[head], fields) for r in results]
                         for head, fields in layout.items()})
