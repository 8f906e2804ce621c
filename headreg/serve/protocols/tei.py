"""text-embeddings-inference's routes, so TEI clients and the LangChain / LlamaIndex / Haystack TEI integrations
work unchanged, for every head (token classification included, which TEI itself does not serve).

Under ``/tei/{name}``: ``POST /embed``, ``/predict``, ``/rerank``, ``/similarity``, ``/tokenize``, ``/decode``,
``/embed_all``, ``/embed_sparse``, ``GET /info``
and ``POST /tei/{name}`` itself (TEI's ``POST /``: the route the body calls for, see :func:`compat_route`, so
clients given the URL alone, like Haystack's TEI embedder, work); the same at the root (``/embed``, ``/predict``, ...) for the default model (the only one served,
or ``--default-model NAME``); the root ``GET /info`` is the native one with TEI's fields added.

- ``/embed``: ``{"inputs", "normalize" (default true, as TEI), "truncate"}`` -> ``[[float, ...], ...]``.
- ``/predict``: ``inputs`` a text, a ``[text, text_pair]`` pair or a batch ``[[text], [text, text_pair], ...]``
  -> ``[{"label", "score"}, ...]`` by descending score (a batch: one such list per input). Softmax heads answer
  probabilities; a one-value regression head is TEI's one-label classifier (sigmoid, or the value with
  ``raw_scores``); token heads answer their entities' ``{"label", "score", "word", "start", "end"}``.
- ``/rerank``: ``{"query", "texts", "raw_scores", "return_text"}`` -> ``[{"index", "score", "text"?}, ...]`` by
  descending score; each (query, text) pair goes through the model as a sentence pair. The score is the
  sigmoid of a one-value head (its value with ``raw_scores``), or the probability of label 1 of a two-label
  softmax head.
- ``/tokenize``: ``[[{"id", "text", "special", "start", "stop"}, ...], ...]`` with the model's own tokenizer;
  ``/decode``: ``{"ids", "skip_special_tokens"}`` -> ``["text", ...]``.
- ``/embed_all``: a bundle has no per-token embeddings to give; a valid request is a 424 that says so.
- ``/embed_sparse``: no head gives sparse (SPLADE) vectors; a valid request is a 424 that says so.

Inputs longer than the model's max_length are cut on the right (``/info``: ``auto_truncate`` true) unless the body
says ``"truncate": false``: then the first over-long input (text or pair, special tokens counted) is TEI's 413
``Input validation error: `inputs` must have less than N tokens. Given: M``.
``raw_scores`` are the head's logits (``Predictor.predict(..., return_logits=True)``). Errors: ``{"error",
"error_type"}`` with TEI's statuses (413 batch too large, 422 validation, 424 a model that cannot do the route).
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ... import __version__
from ..batcher import INLINE_CHARS, INLINE_TOKENS
from ..responses import FastJSONResponse
from ..schema import Call, RequestError, json_object
from .common import (
    check_flag, check_texts, check_truncation, cosine_similarity, endpoint, infer, json_error, off_loop, parameters_of,
    text_list,
)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}
ROUTES = ("embed", "predict", "rerank", "similarity", "tokenize", "decode", "embed_all", "embed_sparse")
EMBED_FIELDS = ("inputs", "normalize", "truncate", "truncation_direction", "prompt_name")


def render_error(exc: RequestError) -> Response:
    kind = {413: "validation", 429: "overloaded", 503: "unhealthy"}.get(exc.status)
    kind = kind or ("backend" if exc.status >= 500 or exc.status == 424 else "validation")
    return json_error(exc, {"error": exc.message, "error_type": kind})


def _batch(count: int, limit: int) -> None:
    if count > limit:
        raise RequestError(413, f"batch size {count} > maximum allowed batch size {limit} (--max-input-texts): "
                                "split the request")


def _texts(value: Any, limit: int) -> list[str]:
    if isinstance(value, list):
        _batch(len(value), limit)
    return text_list(value, "inputs", limit)


def _predict_inputs(value: Any, limit: int) -> tuple[list[Any], bool]:
    """TEI's predict inputs -> (texts and pairs, whether the request was a batch)."""
    def one(item: Any) -> Any:
        if isinstance(item, str):
            return item
        if isinstance(item, list) and len(item) in (1, 2) and all(isinstance(side, str) for side in item):
            return item[0] if len(item) == 1 else (item[0], item[1])
        raise RequestError(422, "'inputs' must be a text, a [text, text_pair] pair, or a batch of [text] and "
                                "[text, text_pair] lists")

    if isinstance(value, list) and value and all(isinstance(item, list) for item in value):
        _batch(len(value), limit)
        return [one(item) for item in value], True
    return [one(value)], False


def _head_scores(item: Any, raw: bool) -> list[tuple[str, float]]:
    """(label, score) pairs of one predict result, in TEI's sense of ``raw_scores``."""
    if isinstance(item, dict) and "values" in item:
        values = [float(v) for v in item["values"]]
        if len(values) == 1 and not raw:
            values = [1.0 / (1.0 + math.exp(-values[0]))]
        return [(f"LABEL_{i}", v) for i, v in enumerate(values)]
    if isinstance(item, dict) and isinstance(item.get("scores"), dict):
        if raw and "logits" not in item:
            raise RequestError(424, "raw_scores: this model does not give its logits; leave raw_scores out")
        return list(zip(item["scores"], map(float, item["logits"] if raw else item["scores"].values())))
    if isinstance(item, dict) and "entities" in item:
        return []
    raise RequestError(424, "this head's results have no TEI predict format; use POST /v1/models/{name}/predict")


def _predictions(item: Any, raw: bool) -> list[dict[str, Any]]:
    if isinstance(item, dict) and "entities" in item and "scores" not in item:
        return [{"label": e["label"], "score": e["score"], "word": e["word"], "start": e["start"], "end": e["end"]}
                for e in item["entities"]]
    ranked = sorted(_head_scores(item, raw), key=lambda pair: -pair[1])
    return [{"label": label, "score": score} for label, score in ranked]


def _rank_score(item: Any, raw: bool) -> float:
    scores = _head_scores(item, raw)
    if len(scores) == 1:
        return scores[0][1]
    if len(scores) == 2:
        return scores[1][1]
    raise RequestError(424, "rerank needs a sentence-pair model with one score (a one-value regression head or a "
                            f"two-label classifier); this one has {len(scores)} labels")


def info(state: Any, name: str) -> dict[str, Any]:
    """TEI's ``/info`` for one served model."""
    predictor = state.predictors[name]
    if predictor.level in ("sequence", "token") and predictor.labels:
        model_type: dict[str, Any] = {"classifier": {
            "id2label": {str(i): label for i, label in enumerate(predictor.labels)},
            "label2id": {label: i for i, label in enumerate(predictor.labels)},
        }}
    else:
        model_type = {"embedding": {"pooling": str((predictor.manifest.get("pooling") or "cls"))}}
    config = state.config
    return {
        "model_id": name, "model_sha": None, "model_dtype": DTYPES.get(predictor.variant, predictor.variant),
        "model_type": model_type, "max_concurrent_requests": config.max_concurrent_requests,
        "max_input_length": predictor.max_length, "max_batch_tokens": config.max_batch_tokens,
        "max_batch_requests": None, "max_client_batch_size": config.max_input_texts, "auto_truncate": True,
        "tokenization_workers": 1, "version": __version__, "sha": None, "docker_label": None,
    }


def _embed_body(state: Any, payload: Any) -> tuple[dict[str, Any], list[str], bool]:
    """An ``/embed`` body (``/embed_all`` and ``/embed_sparse`` take it too), its texts and its ``truncate``."""
    body = json_object(payload, EMBED_FIELDS, '{"inputs": "some text"}')
    truncate = check_truncation(body)
    return body, _texts(body.get("inputs"), state.config.max_input_texts), truncate


def plan(state: Any, model: str, route: str, payload: Any) -> Call:
    """One TEI request -> the call; its shape is (``route``, what shaping its result needs)."""
    limit = state.config.max_input_texts
    if route == "embed":
        body, texts, truncate = _embed_body(state, payload)
        normalize = check_flag(body, "normalize", True)  # TEI's default; Predictor.embed(normalize=True) does it
        return Call(model, "embed", texts, {"normalize": True} if normalize else {}, shape=(route, None),
                    truncate=truncate)
    if route == "predict":
        body = json_object(payload, ("inputs", "raw_scores", "truncate", "truncation_direction"), '{"inputs": "some text"}')
        truncate = check_truncation(body)
        inputs, batch = _predict_inputs(body.get("inputs"), limit)
        raw = check_flag(body, "raw_scores", False)
        return Call(model, "predict", inputs, _logits_option(state, model, raw), shape=(route, (batch, raw)),
                    truncate=truncate)
    if route == "rerank":
        body = json_object(payload, ("query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction"),
                       '{"query": "...", "texts": ["...", ...]}')
        truncate = check_truncation(body)
        if not isinstance(body.get("query"), str):
            raise RequestError(422, "'query' must be a string")
        if isinstance(body.get("texts"), list):
            _batch(len(body["texts"]), limit)
        texts = text_list(body.get("texts"), "texts", limit)
        if not state.predictors[model].supports_pairs:
            raise RequestError(424, f"model {model!r} does not take sentence pairs; rerank needs a cross-encoder")
        raw = check_flag(body, "raw_scores", False)
        return Call(model, "predict", [(body["query"], text) for text in texts], _logits_option(state, model, raw),
                    shape=(route, (texts, raw, check_flag(body, "return_text", False))), truncate=truncate)
    body = json_object(payload, ("inputs", "parameters"), '{"inputs": {"source_sentence": "...", "sentences": [...]}}')
    parameters = parameters_of(body)
    truncate = check_truncation(parameters)
    inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not isinstance(inputs.get("source_sentence"), str):
        raise RequestError(422, "'inputs' must be {\"source_sentence\": \"...\", \"sentences\": [...]}")
    others = text_list(inputs.get("sentences"), "sentences", limit - 1)
    return Call(model, "embed", [inputs["source_sentence"], *others], shape=(route, None), truncate=truncate)


def compat_route(state: Any, model: str, payload: Any) -> str:
    """What TEI's ``POST /`` does for this body: ``query`` reranks, ``{"source_sentence"}`` inputs compare,
    ``normalize`` / ``prompt_name`` embed (Haystack's TEI embedder sends them, ``InferenceClient``'s
    feature-extraction when given ``normalize=``),
    ``raw_scores`` predicts; otherwise a classifier predicts and any other model embeds, as TEI decides by model type."""
    body = payload if isinstance(payload, dict) else {}
    if "query" in body:
        return "rerank"
    if isinstance(body.get("inputs"), dict):
        return "similarity"
    if "normalize" in body or "prompt_name" in body:
        return "embed"
    if "raw_scores" in body:
        return "predict"
    return "predict" if "classifier" in info(state, model)["model_type"] else "embed"


def _logits_option(state: Any, model: str, raw: bool) -> dict[str, Any]:
    """``raw_scores`` are the logits, which a sequence head's result carries on request."""
    return {"return_logits": True} if raw and "return_logits" in state.predictors[model].valid_options() else {}


def answer(shape: tuple[str, Any], result: list[Any]) -> Any:
    route, shape = shape
    if route == "embed":
        return list(result)
    if route == "predict":
        batch, raw = shape
        answers = [_predictions(item, raw) for item in result]
        return answers if batch else answers[0]
    if route == "rerank":
        texts, raw, return_text = shape
        ranks = [{"index": i, "score": _rank_score(item, raw)} for i, item in enumerate(result)]
        ranks.sort(key=lambda rank: -rank["score"])
        for rank in ranks if return_text else ():
            rank["text"] = texts[rank["index"]]
        return ranks
    return cosine_similarity(result[0], result[1:])


async def decode(state: Any, model: str, payload: Any) -> list[str]:
    """TEI's ``/decode``: ``{"ids": [id, ...] or [[id, ...], ...], "skip_special_tokens": true}`` -> texts."""
    body = json_object(payload, ("ids", "skip_special_tokens"), '{"ids": [101, 7592, 102]}')
    ids = body.get("ids")
    batch = ids if isinstance(ids, list) and ids and all(isinstance(row, list) for row in ids) else [ids]
    _batch(len(batch), state.config.max_input_texts)
    tokenizer = state.batcher(model).predictor.tokenizer
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    for index, row in enumerate(batch):
        if not isinstance(row, list) or not row or not all(type(i) is int and 0 <= i < vocab for i in row):
            raise RequestError(422, f"'ids'{f'[{index}]' if len(batch) > 1 else ''} must be a non-empty list of token ids "
                                    f"from 0 to {vocab - 1} (this model's vocabulary)")
    skip = check_flag(body, "skip_special_tokens", True)
    return await off_loop(lambda: tokenizer.decode_batch(batch, skip_special_tokens=skip), sum(map(len, batch)),
                          INLINE_TOKENS)


async def embed_all(state: Any, model: str, payload: Any) -> None:
    """TEI's ``/embed_all`` (every token's vector): a bundle gives its head's outputs and one pooled vector per
    input, never the encoder's per-token states, so a valid request is TEI's 424 saying so."""
    _embed_body(state, payload)
    outputs = ", ".join(state.predictors[model].manifest.get("output_axes") or {}) or "none"
    raise RequestError(424, f"model {model!r} does not expose per-token embeddings (its bundle's outputs: {outputs}); "
                            "use /embed for one pooled vector per input")


async def embed_sparse(state: Any, model: str, payload: Any) -> None:
    """TEI's ``/embed_sparse`` (SPLADE: a weight per vocabulary entry): no headreg head produces those, so a valid
    request is TEI's 424 saying so, not a 404 a TEI client would read as a wrong URL."""
    _embed_body(state, payload)
    raise RequestError(424, f"model {model!r} has no sparse (SPLADE) head, so it gives no sparse embeddings; "
                            "use /embed for one dense vector per input")


async def tokenize(state: Any, model: str, payload: Any) -> list[list[dict[str, Any]]]:
    body = json_object(payload, ("inputs", "add_special_tokens", "prompt_name"), '{"inputs": "some text"}')
    check_truncation({"prompt_name": body.get("prompt_name")})
    texts = _texts(body.get("inputs"), state.config.max_input_texts)
    special_tokens = check_flag(body, "add_special_tokens", True)
    predictor = state.batcher(model).predictor
    check_texts(predictor, texts)
    return await off_loop(lambda: _tokens(predictor.tokenizer, texts, special_tokens), sum(map(len, texts)),
                          INLINE_CHARS)


def _tokens(tokenizer: Any, texts: list[str], special_tokens: bool) -> list[list[dict[str, Any]]]:
    answers = []
    for text, encoding in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=special_tokens)):
        tokens = []
        for token_id, token, special, (start, stop) in zip(encoding.ids, encoding.tokens,
                                                           encoding.special_tokens_mask, encoding.offsets):
            tokens.append({"id": token_id, "text": token if special else text[start:stop], "special": bool(special),
                           "start": None if special else start, "stop": None if special else stop})
        answers.append(tokens)
    return answers


def _model(state: Any, request: Request) -> str:
    name = request.path_params.get("name") or state.default_model
    if name is None:
        raise RequestError(404, f"the root TEI routes answer for the default model, and this server serves "
                                f"{len(state.predictors)}: pass --default-model NAME, or use /tei/NAME/...")
    state.batcher(name)
    return name


def routes(state: Any) -> list[Route]:
    direct = {"tokenize": tokenize, "decode": decode, "embed_all": embed_all, "embed_sparse": embed_sparse}

    def handler(route: str):
        async def run(request: Request) -> Response:
            model = _model(state, request)
            if route in direct:  # no model call, but the same slot and deadline as one
                payload = await state.body(request)
                state.note(request, model=model)
                return FastJSONResponse(await state.guarded(model, lambda: direct[route](state, model, payload)))

            def call(payload: Any) -> Call:
                return plan(state, model, compat_route(state, model, payload) if route == "compat" else route, payload)

            planned, result, stats = await infer(state, request, call)
            return FastJSONResponse(answer(planned.shape, result),
                                    headers={"x-total-tokens": str(stats.get("tokens", 0)), "x-model-id": model})

        return run

    async def model_info(request: Request) -> Response:
        return FastJSONResponse(info(state, _model(state, request)))

    mounted = []
    for prefix in ("/tei/{name}", ""):
        for route in ROUTES:
            path = f"{prefix}/{route}"
            mounted.append(Route(path, endpoint(state, "tei", path, handler(route), render_error), methods=["POST"]))
        path = prefix or "/"  # TEI's POST /: the route the body and the model call for
        mounted.append(Route(path, endpoint(state, "tei", path, handler("compat"), render_error), methods=["POST"]))
    mounted.append(Route("/tei/{name}/info", endpoint(state, "tei", "/tei/{name}/info", model_info, render_error),
                         methods=["GET"]))
    return mounted
