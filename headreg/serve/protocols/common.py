"""What the protocol adapters share: the error-shaped endpoint wrapper and the small request and vector helpers."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...runtime.inputs import InputError, check_inputs
from ..limits import parse_json_body
from ..schema import Call, RequestError, check_api_key, check_count

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def endpoint(state: Any, protocol: str, route: str, handler: Handler,
             render: Callable[[RequestError], Response], *, public: bool = False) -> Handler:
    """``handler`` behind the API key (unless ``public``: health probes), with its route and protocol noted for
    the access log and metrics, and its errors in its protocol's shape."""

    async def run(request: Request) -> Response:
        state.note(request, route=route, protocol=protocol)
        try:
            if not public:  # before any model lookup: names are not told to a client without the key
                check_api_key(request.headers.get("authorization"), state.config.api_key)
            return await handler(request)
        except RequestError as exc:
            return render(exc)

    return run


def json_error(exc: RequestError, body: dict[str, Any], status: int | None = None) -> Response:
    return JSONResponse(body, status_code=status or exc.status, headers=exc.headers)


def error_400(exc: RequestError) -> Response:
    """``{"error": message}``, a client mistake as 400 (the Hugging Face Inference API's and Triton's shape)."""
    return json_error(exc, {"error": exc.message}, 400 if exc.status == 422 else exc.status)


def parameters_of(body: dict[str, Any]) -> dict[str, Any]:
    """The body's ``parameters`` object (none: empty)."""
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(422, "'parameters' must be a JSON object")
    return parameters


def text_list(value: Any, field: str, max_inputs: int) -> list[str]:
    """A string or a non-empty list of at most ``max_inputs`` strings (422 naming ``field`` otherwise)."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise RequestError(422, f"'{field}' must be a string or a non-empty list of strings")
    # OpenAI and TEI take token ids (ints, or lists of them) where texts go: say why they are refused here
    if all(_token_id(item) or (isinstance(item, list) and item and all(map(_token_id, item))) for item in texts):
        raise RequestError(422, f"'{field}' holds token ids; this server tokenizes with the model's own tokenizer: "
                                "send the text as a string or a list of strings")
    check_count(f"'{field}'", len(texts), max_inputs)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"'{field}'[{index}] is not a string; '{field}' must be a string or a list of "
                                    "strings")
    return texts


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_texts(predictor: Any, inputs: list[Any]) -> None:
    """The runtime's own input check (lone surrogates, pairs for a model of single texts) as the native routes'
    422, for the routes that hand inputs to the tokenizer before the model queue would check them."""
    try:
        check_inputs(inputs, predictor.supports_pairs)
    except InputError as exc:
        raise RequestError(422, str(exc)) from exc


async def off_loop(work: Callable[[], T], size: int, inline: int) -> T:
    """``work()``: on the event loop when ``size`` is at most ``inline`` (cheaper than a hop to a thread), else in
    the thread pool, so the loop keeps answering other requests meanwhile (the rule of ``Batcher.submit``)."""
    if size <= inline:
        return work()
    return await asyncio.get_running_loop().run_in_executor(None, work)


async def infer(state: Any, request: Request, plan: Callable[[Any], Call]) -> tuple[Call, Any, dict[str, Any]]:
    """``state.infer`` for a route whose calls may say ``truncate: false``: the body is planned where it is
    decoded (in a worker thread when it is big), and an over-long input of such a call is refused there, since
    tokenizing every input whole costs what the request's own tokenization does."""

    def decode(body: bytes) -> Call:
        call = plan(parse_json_body(body))
        if not call.truncate:
            refuse_overlong(state.batcher(call.model).predictor, call.inputs)
        return call

    return await state.infer(request, lambda call: call, decode)


def embedding_width(predictor: Any) -> int | None:
    """The length of the model's ``pooled_output`` vectors, as its manifest declares it."""
    shape = (predictor.manifest.get("outputs") or {}).get("pooled_output") or [None]
    return shape[-1] if isinstance(shape[-1], int) else None


def l2_normalize(vectors: Any) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as sentence-transformers' Normalize does."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def cosine_similarity(source: np.ndarray, others: np.ndarray) -> list[float]:
    """Cosine similarity of ``source`` with each row of ``others`` (sentence-transformers' ``cos_sim``)."""
    return [float(v) for v in l2_normalize(others).astype(np.float64) @ l2_normalize(source).astype(np.float64)]


def check_flag(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(422, f"'{name}' must be true or false, got {value!r:.40}")
    return value


def check_truncation(parameters: dict[str, Any]) -> bool:
    """``truncate`` (default true: inputs are cut at the model's max_length, like TEI's --auto-truncate; false:
    TEI's refusal of longer inputs, see :func:`refuse_overlong`); only right-side truncation and no prompt
    templates exist here. Returns ``truncate``."""
    truncate = check_flag(parameters, "truncate", True)
    direction = parameters.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise RequestError(422, f"truncation_direction {direction!r:.20} is not supported; inputs longer than the "
                                "model's max_length are cut on the right")
    if parameters.get("prompt_name") is not None:
        raise RequestError(422, "prompt_name is not supported: this server applies no prompt templates; "
                                "put the prompt in the text")
    return truncate


_untruncated: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def refuse_overlong(predictor: Any, inputs: list[Any]) -> None:
    """TEI's answer to ``truncate: false``: 413 (its "validation" error) for the first input (text or pair) of more
    tokens than the model takes, special tokens counted, with TEI's own message."""
    check_texts(predictor, inputs)
    tokenizer = _untruncated.get(predictor)
    if tokenizer is None:
        # a copy: the Predictor's tokenizer truncates, and is shared with requests tokenizing meanwhile
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(predictor.tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
        _untruncated[predictor] = tokenizer
    limit = predictor.max_length
    for encoding in tokenizer.encode_batch(list(inputs)):
        if len(encoding.ids) > limit:
            raise RequestError(413, f"Input validation error: `inputs` must have less than {limit} tokens. "
                                    f"Given: {len(encoding.ids)}")
