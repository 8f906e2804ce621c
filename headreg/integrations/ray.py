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
from . import head_layout, load_predictor, pick_fields

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
    arguments (``max_batch_tokens``, ``batch_size``, ``max_length``, ``max_windows``). Any other keyword is a per-call predict
    option (``thresholds=0.3``, ``aggregation="max"``...), validated by the Predictor when the actor starts.

    Batches may be pandas DataFrames or dicts of numpy arrays; rows keep their order and every input
    column is kept.
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
        columns = list(batch.keys()) if isinstance(batch, Mapping) else list(batch.columns)
        texts = self._texts(batch, columns)
        numpy = isinstance(batch, Mapping)
        try:
            if self.output == "embed":
                embeddings = self.predictor.embed(texts, **self.options)
                return self._put(batch, columns, {"embedding": embeddings if numpy else list(embeddings)})
            results = self.predictor.predict(texts, **self.options)
        except InputError as exc:
            raise InputError(f"column {self.text_column!r}: {exc}") from exc
        if None in self.layout:  # one head: a column per field
            declared = self.layout[None]
            rows = [pick_fields(r, declared) for r in results]
            fields = declared or dict.fromkeys(field for row in rows for field in row)
            new = {field: [row.get(field) for row in rows] for field in fields}
        else:  # several heads: a column per head, holding that head's fields
            new = {head: [pick_fields(r[head], declared) for r in results] for head, declared in self.layout.items()}
        return self._put(batch, columns, {name: _array(values) for name, values in new.items()} if numpy else new)

    def _texts(self, batch: Any, columns: list[str]) -> list[Any]:
        for column in filter(None, (self.text_column, self.pair_column)):
            if column not in columns:
                option = "text_column" if column == self.text_column else "pair_column"
                raise KeyError(f"the batch has no column {column!r} (columns: {', '.join(map(str, columns))}); "
                               f"pass {option}=... to BundlePredictor")
        # plain Python values of a pandas Series or numpy array (numpy scalars become str / float)
        texts = batch[self.text_column].tolist()
        if self.pair_column:
            return list(zip(texts, batch[self.pair_column].tolist()))
        return texts

    def _put(self, batch: Any, columns: list[str], new: dict[str, Any]) -> Any:
        named = {self.prefix + name: value for name, value in new.items()}
        taken = sorted(set(named) & set(columns))
        if taken:
            raise ValueError(
                f"the batch already has column(s) {', '.join(taken)}; BundlePredictor does not overwrite input "
                "columns: pass prefix='pred_' (or rename them)"
            )
        if isinstance(batch, Mapping):
            return {**batch, **named}
        batch = batch.copy(deep=False)
        for name, value in named.items():
            batch[name] = value
        return batch


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
        self.name, self.config = name, dict(config)
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
    # Ray Serve's default (5 requests in flight per replica) would starve the app's own queue, which batches
    # across requests and answers 429 past max_concurrent_requests.
    options.setdefault("max_ongoing_requests", ServeConfig(**config).max_concurrent_requests)
    actor_options = {"num_cpus": num_cpus, **options.pop("ray_actor_options", {})}
    app = serve.deployment(serve.ingress()(BundleServer), name=f"headreg-{name}", num_replicas=num_replicas,
                           ray_actor_options=actor_options, **options)
    return app.bind(str(path), name, threads, variant, config, dict(predictor_options or {}))
