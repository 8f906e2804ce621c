"""OpenAI's embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models`` in OpenAI's list shape.

>>> from openai import OpenAI                                                          # doctest: +SKIP
>>> OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="KEY").embeddings.create(model="minilm", input=["hi"])

``model`` is the served name; ``input`` a string or a list of strings (token-id arrays are refused: this server
tokenizes itself); ``encoding_format`` ``float`` or ``base64`` (little-endian float32, what the openai SDK asks
for by default); ``dimensions`` only when it equals the model's width (nothing here shortens a vector).
The vectors are ``Predictor.embed``'s. Errors: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..responses import FastJSONResponse
from ..schema import Call, RequestError
from .common import embedding_width, endpoint, json_error, text_list

FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
# OpenAI's error types by status; client mistakes are 400 there (422 here).
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}


class ParamError(RequestError):
    """A 400 naming the request field at fault (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str):
        super().__init__(400, message)
        self.param = param


def render_error(exc: RequestError) -> Response:
    status = 400 if exc.status == 422 else exc.status
    return json_error(exc, {"error": {
        "message": exc.message, "type": ERROR_TYPES.get(status, "server_error"), "param": getattr(exc, "param", None),
        "code": ERROR_CODES.get(status),
    }}, status)


def parse(payload: Any, state: Any) -> Call:
    """An embeddings request -> the call; its shape is the encoding_format."""
    if not isinstance(payload, dict):
        raise ParamError('the body must be a JSON object like {"model": "NAME", "input": ["text"]}', "input")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise ParamError(f"unknown field(s) {', '.join(map(repr, unknown))}; the body takes: {', '.join(FIELDS)}", unknown[0])
    model = payload.get("model")
    if model is None or model == "":
        raise ParamError(f"'model' is missing: name a served model ({', '.join(state.predictors)})", "model")
    if not isinstance(model, str):
        raise ParamError(f"'model' must be a string, the name of a served model ({', '.join(state.predictors)})",
                         "model")
    try:
        texts = text_list(payload.get("input"), "input", state.config.max_input_texts)
    except RequestError as exc:
        raise ParamError(exc.message, "input") from exc
    encoding = payload.get("encoding_format")
    encoding = "float" if encoding is None else encoding  # only an absent one defaults: "" or {} is a mistake
    if encoding not in ("float", "base64"):
        raise ParamError(f"encoding_format must be 'float' or 'base64', got {encoding!r:.40}", "encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None:
        width = embedding_width(state.batcher(model).predictor)  # an unknown model: its 404, not a width of None
        if dimensions != width:
            raise ParamError(f"model {model!r} gives {width}-dimensional vectors and cannot shorten them; leave "
                          "'dimensions' out", "dimensions")
    return Call(model, "embed", texts, shape=encoding)


def encode(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def model_list(state: Any) -> dict[str, Any]:
    """``GET /v1/models`` in OpenAI's shape (``data`` of ``{"id", "object", "created", "owned_by"}``)."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": state.started, "owned_by": "headreg"} for name in state.predictors
    ]}


def routes(state: Any) -> list[Route]:
    async def embeddings(request: Request) -> Response:
        call, vectors, stats = await state.infer(request, lambda payload: parse(payload, state))
        return FastJSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v, call.shape)} for i, v in enumerate(vectors)],
            "model": call.model,
            "usage": {"prompt_tokens": stats.get("tokens", 0), "total_tokens": stats.get("tokens", 0)},
        })

    return [Route("/v1/embeddings", endpoint(state, "openai", "/v1/embeddings", embeddings, render_error), methods=["POST"])]
