"""Ray Data and Ray Serve on a headreg bundle (``pip install 'headreg[ray]'``).

Ray Data, one Predictor per actor, threads from the actor's ``num_cpus``:

>>> import ray
>>> from headreg.integrations.ray import BundlePredictor
>>> ds = ray.data.from_items([{"id": 1, "text": "great film"}, {"id": 2, "text": "dull"}])    # doctest: +SKIP
>>> ds.map_batches(BundlePredictor, fn_constructor_kwargs={"bundle": "bundle/"},             # doctest: +SKIP
...                concurrency=2, num_cpus=1, batch_size=256, batch_format="pandas").take_all()

Ray Serve, ``headreg serve``'s own app (every route, limit and error), batched across requests:

>>> from ray import serve
>>> from headreg.integrations.ray import deployment
>>> serve.run(deployment("bundle/", name="sentiment", num_replicas=2), route_prefix="/")     # doctest: +SKIP

Ray is imported only when these are used. See docs/scale-out.md.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import require
from ..runtime import InputError
from . import arrow_type, head_layout, load_predictor, pick_fields

OUTPUTS = ("predict", "embed")


def worker_cpus() -> int:
    """The CPUs Ray reserved for the calling actor or task (rounded down, at least 1); 1 outside a Ray worker.

    onnxruntime would otherwise size its thread pool to every core of the host, and N actors on one node
    would run N x cores threads on cores they share (ORT#3099).
    """
    if "ray" not in sys.modules:  # not imported: this is no Ray worker
        return 1
    import ray

    if not ray.is_initialized():
        return 1
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except AssertionError:  # the driver: Ray reserves nothing for it
        return 1
    return max(1, math.floor(cpus + 1e-9))


# --- Ray Data --------------------------------------------------------------------------------------------------------


class BundlePredictor:
    """A callable class for ``Dataset.map_batches``: loads the bundle once per actor, adds result columns.

    ``text_column`` (and ``pair_column`` for sentence pairs) name the input columns. ``output="predict"`` adds
    the head's fields as columns: ``label``, ``score``, ``scores`` (seq_cls); ``labels``, ``scores``
    (multi_label); ``values`` (regression); ``entities`` (token heads); a plugin head's own fields otherwise.
    ``output="embed"`` adds ``embedding`` (float32 pooled_output). ``threads``: onnxruntime threads (default:
    the actor's ``num_cpus``). ``variant``: the bundle variant. ``prefix`` is put before every new column
    name (a result column may not replace an input column). ``predictor_options``: other ``Predictor``
    arguments (``max_batch_tokens``, ``batch_size``, ``max_length``, ``max_windows``). Any other keyword is a
    per-call predict option (``thresholds=0.3``, ``aggregation="max"``...), validated by the Predictor when the
    actor starts.

    Batches may be pandas DataFrames, dicts of numpy arrays or Arrow tables (``batch_format="pyarrow"``); rows
    keep their order and every input column is kept. An Arrow batch's new columns have the head's declared types
    (``map<string,double>`` for ``scores``): every block of the dataset then has one schema, which Parquet needs
    (pandas and numpy batches leave the types to inference, so a block without any entity gets ``list<null>``).
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        text_column: str = "text",
        pair_column: str | None = None,
        output: str = "predict",
        threads: int | None = None,
        variant: str | None = None,
        prefix: str = "",
        predictor_options: Mapping[str, Any] | None = None,
        **options: Any,
    ):
        self.text_column, self.pair_column, self.output, self.prefix = text_column, pair_column, output, prefix
        self.options = options
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
        self.predictor = load_predictor(bundle, threads or worker_cpus(), variant, predictor_options,
                                        embed=output == "embed", options=options)
        self.layout = head_layout(self.predictor, options)

    def __call__(self, batch: Any) -> Any:
        arrow = _is_arrow(batch)
        columns = list(batch.column_names if arrow else batch.keys() if isinstance(batch, Mapping) else batch.columns)
        texts = self._texts(batch, columns)
        numpy = isinstance(batch, Mapping)
        try:
            if self.output == "embed":
                embeddings = self.predictor.embed(texts, **self.options)
                value = _arrow_vectors(embeddings) if arrow else embeddings if numpy else list(embeddings)
                return self._put(batch, columns, {"embedding": value})
            results = self.predictor.predict(texts, **self.options)
        except InputError as exc:
            raise InputError(f"column {self.text_column!r}: {exc}") from exc
        if None in self.layout:  # one head: a column per field
            declared = self.layout[None]
            rows = [pick_fields(r, declared) for r in results]
            fields = declared or dict.fromkeys(field for row in rows for field in row)
            new = {field: [row.get(field) for row in rows] for field in fields}
            types = {field: (declared or {}).get(field) for field in fields}
        else:  # several heads: a column per head, holding that head's fields
            new = {head: [pick_fields(r[head], declared) for r in results] for head, declared in self.layout.items()}
            types = {head: declared and f"struct<{','.join(f'{k}:{v}' for k, v in declared.items())}>"
                     for head, declared in self.layout.items()}
        if arrow:  # the declared types in every batch, so the blocks of a dataset share one schema
            import pyarrow as pa

            new = {name: pa.array(values, type=types[name] and arrow_type(types[name])) for name, values in new.items()}
        elif numpy:
            new = {name: _array(values) for name, values in new.items()}
        return self._put(batch, columns, new)

    def _texts(self, batch: Any, columns: list[str]) -> list[Any]:
        """The batch's texts (pairs with ``pair_column``); KeyError for a missing column, InputError naming the
        column and the row of this batch for a value that is not a string."""
        values = {}
        for option, column in (("text_column", self.text_column), ("pair_column", self.pair_column)):
            if column is None:
                continue
            if column not in columns:
                raise KeyError(f"the batch has no column {column!r} (columns: {', '.join(map(str, columns))}); "
                               f"pass {option}=... to BundlePredictor")
            # plain Python values of an Arrow column, a pandas Series or a numpy array (numpy scalars become str)
            data = batch[column]
            values[column] = data.to_pylist() if hasattr(data, "to_pylist") else data.tolist()
            for row, value in enumerate(values[column]):
                if not isinstance(value, str):
                    missing = value is None or isinstance(value, float) and math.isnan(value)
                    raise InputError(
                        f"column {column!r}: row {row} of this batch is {'null' if missing else repr(value)[:40]}, not "
                        f"a string; filter such rows first (ds.filter(lambda row: isinstance(row[{column!r}], str)))"
                    )
        texts = values[self.text_column]
        return list(zip(texts, values[self.pair_column])) if self.pair_column else texts

    def _put(self, batch: Any, columns: list[str], new: dict[str, Any]) -> Any:
        named = {self.prefix + name: value for name, value in new.items()}
        taken = sorted(set(named) & set(columns))
        if taken:
            raise ValueError(
                f"the batch already has column(s) {', '.join(taken)}; BundlePredictor does not overwrite input "
                "columns: pass prefix='pred_' (or rename them)"
            )
        if _is_arrow(batch):
            for name, value in named.items():
                batch = batch.append_column(name, value)
            return batch
        if isinstance(batch, Mapping):
            return {**batch, **named}
        batch = batch.copy(deep=False)
        for name, value in named.items():
            batch[name] = value
        return batch


def _is_arrow(batch: Any) -> bool:
    return type(batch).__module__.startswith("pyarrow") and hasattr(batch, "column_names")


def _arrow_vectors(vectors: np.ndarray) -> Any:
    """float32 vectors as an Arrow column of fixed-size lists."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])


def _array(values: list[Any]) -> np.ndarray:
    """A numpy column: numbers and strings as such, anything else (dicts, lists) as an object array per row."""
    if values and all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


# --- Ray Serve -------------------------------------------------------------------------------------------------------


class BundleServer:
    """One Ray Serve replica: ``headreg serve``'s own ASGI app (``headreg.serve.app.create_app``) over one bundle.

    The routes, protocols, limits, API key, errors, metrics names and the cross-request queue are those of
    ``headreg serve``, because it is the same app: Ray Serve mounts it with ``serve.ingress`` and runs its
    lifespan (the model thread starts, the warm-up runs, /health turns 200). Use :func:`deployment`.
    """

    def __init__(self, bundle: str, name: str, threads: int | None, variant: str | None,
                 config: Mapping[str, Any], predictor_options: Mapping[str, Any] | None):
        from ..runtime.session import ARENA_ENV
        from ..serve.memory import server_memory

        # headreg serve's memory defaults (docs/serving.md, "Memory"): the arena off unless the environment says on
        trim_memory = server_memory(os.environ.get(ARENA_ENV) == "1")
        self.name, self.config = name, {"trim_memory": trim_memory, **config}
        self.predictor = load_predictor(bundle, threads or worker_cpus(), variant, predictor_options)

    def __serve_build_asgi_app__(self) -> Any:  # noqa: N802 - Ray Serve's hook
        from ..serve.app import ServeConfig, create_app

        return create_app({self.name: self.predictor}, ServeConfig(**self.config))


def deployment(
    bundle: str | os.PathLike,
    *,
    name: str | None = None,
    threads: int | None = None,
    variant: str | None = None,
    num_replicas: int | str = 1,
    num_cpus: float = 1,
    serve_config: Mapping[str, Any] | None = None,
    predictor_options: Mapping[str, Any] | None = None,
    **deployment_options: Any,
):
    """A Ray Serve application serving ``bundle`` with ``headreg serve``'s own app; ``serve.run`` it.

    Every route of ``headreg serve`` answers under the application's ``route_prefix`` (``/v1/models/{name}/predict``
    and ``/embed``, ``/v1/models``, the OpenAI, Hugging Face, TEI and v2 routes, ``/health``, ``/metrics``), with the
    same limits, API key and errors: ``serve_config`` takes :class:`headreg.serve.app.ServeConfig`'s fields (the
    ``headreg serve`` options: ``max_batch_tokens``, ``max_batch_size``, ``max_concurrent_requests``,
    ``max_input_texts``, ``payload_limit``, ``api_key``, ...). ``name`` defaults to the bundle directory's name. Each
    of ``num_replicas`` replicas reserves ``num_cpus`` and runs the model on that many threads (``threads``
    overrides). ``deployment_options`` go to ``serve.deployment`` (``max_ongoing_requests``, ``autoscaling_config``...).
    """
    require("ray.serve", "ray", "the Ray Serve deployment")
    from ray import serve

    from ..serve.app import ServeConfig

    path = Path(bundle).resolve()
    name = name or path.name
    config = dict(serve_config or {})
    unknown = sorted(set(config) - set(ServeConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"serve_config has unknown field(s) {', '.join(unknown)}; fields: "
                         f"{', '.join(ServeConfig.__dataclass_fields__)}")
    options = dict(deployment_options)
    # Ray Serve's default (5 requests in flight per replica) would starve the app's own queue, which batches across
    # requests; and at exactly max_concurrent_requests Ray's router would queue the excess itself, without limit or
    # deadline, where the app answers 429. Twice the limit lets the excess reach the app, which refuses it at once.
    options.setdefault("max_ongoing_requests", 2 * ServeConfig(**config).max_concurrent_requests)
    actor_options = {"num_cpus": num_cpus, **options.pop("ray_actor_options", {})}
    app = serve.deployment(serve.ingress()(BundleServer), name=f"headreg-{name}", num_replicas=num_replicas,
                           ray_actor_options=actor_options, **options)
    return app.bind(str(path), name, threads, variant, config, dict(predictor_options or {}))
