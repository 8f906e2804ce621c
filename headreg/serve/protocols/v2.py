"""The Open Inference Protocol v2 (KServe, Triton's HTTP clients) under ``/v2``.

>>> import tritonclient.http as triton                                                   # doctest: +SKIP
>>> text = triton.InferInput("text", [1], "BYTES"); text.set_data_from_numpy(np.array(["great"], dtype=object))
>>> triton.InferenceServerClient("127.0.0.1:8080").infer("sentiment", [text]).as_numpy("label")

``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}`` (metadata), ``/v2/models/{name}/ready``
and ``POST /v2/models/{name}/infer``; each model route also under ``/versions/1`` (a model's one version).
Inputs: ``text``, a BYTES tensor of N texts, and optionally ``text_pair`` (N second texts: sentence pairs), in JSON
or in the binary tensor extension Triton's clients send by default.
Outputs (JSON), by head: a softmax head's ``label`` (BYTES [N]), ``score`` (FP32 [N]) and ``scores`` (FP32 [N, labels]);
a multi-label head's ``labels`` (BYTES [N], each a JSON list) and ``scores``; a regression head's ``values``
(FP32 [N, targets]); a token head's ``entities`` (BYTES [N], each a JSON list of ``{"label", "score", "word",
"start", "end"}``); every head's ``result`` (BYTES [N], the native JSON result) and ``embedding`` (FP32
[N, hidden], ``Predictor.embed``'s; ask for it alone, it is a call of its own). A request's ``parameters``
other than Triton's own are the model's per-call options. Errors: ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ... import __version__
from ..limits import parse_json_body
from ..responses import FastJSONResponse
from ..schema import Call, RequestError, check_count
from .common import embedding_width, endpoint, error_400, parameters_of

TRITON_PARAMETERS = ("binary_data_output", "binary_data", "binary_data_size", "sequence_id", "sequence_start",
                     "sequence_end", "priority", "timeout")
VERSION = "1"


def _kind(predictor: Any) -> str:
    """Which outputs a model's predict results fill: softmax, multi_label, regression, token or other."""
    if predictor.level == "token":
        return "token"
    if predictor.level != "sequence":
        return "other"
    config = predictor.config
    if "thresholds" in config or "threshold" in config:
        return "multi_label"
    if str(config.get("problem_type", "")).startswith("regression") or predictor.head == "regression":
        return "regression"
    return "softmax"


def outputs_of(predictor: Any) -> list[dict[str, Any]]:
    """The model's output tensors (metadata): name, datatype, shape (-1: any)."""
    labels = len(predictor.labels) or -1
    by_kind = {
        "softmax": [("label", "BYTES", [-1]), ("score", "FP32", [-1]), ("scores", "FP32", [-1, labels])],
        "multi_label": [("labels", "BYTES", [-1]), ("scores", "FP32", [-1, labels])],
        "regression": [("values", "FP32", [-1, labels])],
        "token": [("entities", "BYTES", [-1])],
        "other": [],
    }[_kind(predictor)]
    every = [("result", "BYTES", [-1]), ("embedding", "FP32", [-1, embedding_width(predictor) or -1])]
    return [{"name": n, "datatype": d, "shape": s} for n, d, s in [*by_kind, *every]]


def metadata(name: str, predictor: Any) -> dict[str, Any]:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if predictor.supports_pairs:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
    return {"name": name, "versions": [VERSION], "platform": "headreg_onnxruntime", "inputs": inputs,
            "outputs": outputs_of(predictor)}


def decode_body(body: bytes, header_length: str | None) -> Any:
    """The request JSON, with binary-extension tensor data moved into each input's ``data``."""
    if header_length is None:
        return parse_json_body(body)
    # isdigit alone takes "²", which int() refuses
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise RequestError(422, f"Inference-Header-Content-Length {header_length!r:.20} does not fit the body")
    split = int(header_length)
    payload = parse_json_body(body[:split])
    rest = memoryview(body)[split:]
    tensors = payload.get("inputs") if isinstance(payload, dict) else None
    for tensor in tensors if isinstance(tensors, list) else []:  # anything else is plan's 422
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if parameters is not None and not isinstance(parameters, dict):
            raise RequestError(422, f"input {tensor.get('name')!r:.40}: 'parameters' must be a JSON object")
        size = (parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or size > len(rest):
            raise RequestError(422, f"input {tensor.get('name')!r}: binary_data_size {size!r} does not fit the body")
        tensor["data"], rest = _strings(bytes(rest[:size]), tensor.get("name")), rest[size:]
    return payload


def _strings(raw: bytes, name: Any) -> list[str]:
    """A BYTES tensor in the binary extension: each element a little-endian uint32 length, then its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RequestError(422, f"input {name!r}: a BYTES element is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise RequestError(422, f"input {name!r}: a BYTES element is cut short")
        try:
            items.append(raw[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(422, f"input {name!r}: element {len(items)} is not UTF-8 text") from exc
        offset += length
    return items


def _flat_texts(tensor: Any, limit: int) -> list[str]:
    if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
        raise RequestError(422, "inputs 'text' and 'text_pair' must be BYTES tensors of texts")
    data = tensor.get("data")
    while isinstance(data, list) and data and all(isinstance(item, list) for item in data):
        data = [item for row in data for item in row]  # [N, 1] and other shapes: row-major
    if not isinstance(data, list) or not data or not all(isinstance(item, str) for item in data):
        raise RequestError(422, f"input {tensor.get('name')!r} must hold one or more texts")
    check_count(f"input {tensor.get('name')!r}", len(data), limit)
    return data


def plan(state: Any, model: str, payload: Any) -> Call:
    """An infer request -> the call; its shape is (the output names asked for, the request id)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise RequestError(422, 'the body must be {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [N], '
                                '"data": [...]}]}')
    if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in payload["inputs"]):
        raise RequestError(422, "each input must be a tensor object with a string 'name': 'text' or 'text_pair'")
    tensors = {t["name"]: t for t in payload["inputs"]}
    unknown = sorted(str(name) for name in tensors if name not in ("text", "text_pair"))
    if unknown or "text" not in tensors:
        raise RequestError(422, f"this model takes inputs 'text' and optionally 'text_pair'; got {', '.join(map(repr, tensors))}")
    limit = state.config.max_input_texts
    inputs: list[Any] = _flat_texts(tensors["text"], limit)
    if "text_pair" in tensors:
        pairs = _flat_texts(tensors["text_pair"], limit)
        if len(pairs) != len(inputs):
            raise RequestError(422, f"'text' has {len(inputs)} texts and 'text_pair' {len(pairs)}; give one pair each")
        inputs = list(zip(inputs, pairs))
    predictor = state.batcher(model).predictor
    known = [output["name"] for output in outputs_of(predictor)]
    outputs = payload.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(isinstance(o, dict) for o in outputs)):
        raise RequestError(422, f"'outputs' must be a list of {{\"name\": ...}} objects (of: {', '.join(known)})")
    asked = [o.get("name") for o in outputs or []]
    missing = [name for name in asked if name not in known]
    if missing:
        raise RequestError(422, f"no output {', '.join(map(repr, missing))}; this model has: {', '.join(known)}")
    if "embedding" in asked and len(asked) > 1:
        raise RequestError(422, "ask for 'embedding' in a request of its own")
    options = {k: v for k, v in parameters_of(payload).items() if k not in TRITON_PARAMETERS}
    request_id = payload.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise RequestError(422, f"'id' must be a string, got {request_id!r:.40}")
        try:
            request_id.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the answer, which echoes the id, could not carry it
            raise RequestError(422, "'id' is not valid Unicode text: it holds a lone surrogate") from None
    kind = "embed" if asked == ["embedding"] else "predict"
    names = asked or [name for name in known if name != "embedding"]
    return Call(model, kind, inputs, options, shape=(names, request_id))


def _tensor(name: str, result: list[Any], labels: list[str]) -> dict[str, Any]:
    n = len(result)
    if name == "embedding":
        array = np.asarray(result, dtype=np.float32)
        return {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.ravel()}
    if name in ("label", "score"):
        data = [item[name] for item in result]
        return {"name": name, "datatype": "BYTES" if name == "label" else "FP32", "shape": [n], "data": data}
    if name in ("scores", "values"):
        rows = [[item["scores"][label] for label in labels] if name == "scores" else item["values"] for item in result]
        array = np.asarray(rows, dtype=np.float32)
        return {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.ravel()}
    key = {"labels": "labels", "entities": "entities"}.get(name)
    data = [json.dumps(item[key] if key else item) for item in result]
    return {"name": name, "datatype": "BYTES", "shape": [n], "data": data}


def _model(state: Any, request: Request) -> str:
    """The model a route names (404 for an unknown one), at a version its metadata lists."""
    name = request.path_params["name"]
    state.batcher(name)
    version = request.path_params.get("version")
    if version is not None and version != VERSION:
        raise RequestError(404, f"model {name!r} has no version {version!r:.20}; its versions: {VERSION}")
    return name


def routes(state: Any) -> list[Route]:
    async def live(request: Request) -> Response:
        return FastJSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return FastJSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    async def server(request: Request) -> Response:
        return FastJSONResponse({"name": "headreg", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(request: Request) -> Response:
        name = _model(state, request)
        return FastJSONResponse(metadata(name, state.predictors[name]))

    async def model_ready(request: Request) -> Response:
        name = _model(state, request)
        return FastJSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)

    async def infer(request: Request) -> Response:
        model = _model(state, request)
        header = request.headers.get("inference-header-content-length")
        call, result, _ = await state.infer(request, lambda payload: plan(state, model, payload),
                                            decode=lambda body: decode_body(body, header))
        names, request_id = call.shape
        labels = list(state.predictors[model].labels)
        body = {"model_name": model, "model_version": VERSION,
                "outputs": [_tensor(name, result, labels) for name in names]}
        if request_id is not None:
            body["id"] = request_id
        return FastJSONResponse(body)

    table = [
        ("/v2/health/live", live, "GET"), ("/v2/health/ready", ready, "GET"), ("/v2", server, "GET"),
        ("/v2/models/{name}", model_metadata, "GET"), ("/v2/models/{name}/versions/{version}", model_metadata, "GET"),
        ("/v2/models/{name}/ready", model_ready, "GET"),
        ("/v2/models/{name}/versions/{version}/ready", model_ready, "GET"),
        ("/v2/models/{name}/infer", infer, "POST"), ("/v2/models/{name}/versions/{version}/infer", infer, "POST"),
    ]
    public = (live, ready, server)
    return [Route(path, endpoint(state, "v2", path, handler, error_400, public=handler in public), methods=[method])
            for path, handler, method in table]
