"""The protocols clients already speak, each a thin adapter over the server's one inference path.

An adapter only translates: its request shape -> one :class:`~headreg.serve.schema.Call` (model, kind, inputs,
parameters) -> the server's ``infer`` (API key, concurrency limit, body limit, the model's queue, the same one
the native ``/v1/models/{name}/predict`` and ``/embed`` routes use) -> its own response shape. Errors are the
server's :class:`~headreg.serve.schema.RequestError`, rendered in each protocol's own error shape.

- :mod:`.openai`: ``POST /v1/embeddings`` (and ``GET /v1/models`` in OpenAI's list shape).
- :mod:`.hf`: the Hugging Face Inference layout, ``POST /models/{name}`` and its ``/pipeline/...`` routes.
- :mod:`.tei`: text-embeddings-inference's routes under ``/tei/{name}`` and, for the default model, at the root.
- :mod:`.v2`: the Open Inference Protocol v2 (KServe, Triton clients) under ``/v2``.

The adapters take the server's state object and use only ``state.infer``, ``state.note``, ``state.batcher``,
``state.predictors``, ``state.config``, ``state.ready`` and ``state.default_model``: nothing here imports the
app module.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from . import hf, openai, tei, v2


def routes(state: Any) -> list[Route]:
    """Every protocol's routes, to mount beside the native ones."""
    return [*openai.routes(state), *hf.routes(state), *tei.routes(state), *v2.routes(state)]


def root_info(state: Any) -> dict[str, Any]:
    """TEI's ``/info`` fields for the default model, merged into the native ``GET /info`` answer."""
    return tei.info(state, state.default_model) if state.default_model else {}


model_list = openai.model_list  # GET /v1/models in OpenAI's list shape, merged into the native answer
