"""The Hugging Face Inference layout: ``POST /models/{name}`` in the task format of the bundle's head.

>>> from huggingface_hub import InferenceClient                                          # doctest: +SKIP
>>> InferenceClient(model="http://127.0.0.1:8080/models/sentiment", api_key="KEY").text_classification("great")

``InferenceClient`` posts every task of a URL model to that URL, as ``{"inputs": ..., "parameters": {...}}``, so
``/models/{name}`` tells the tasks apart by the body: ``{"source_sentence", "sentences"}`` inputs are
sentence-similarity, feature-extraction parameters (``normalize``, ``truncate``, ...) are feature-extraction,
anything else is the head's own task:

- a sequence head: text-classification, ``[[{"label", "score"}, ...]]`` per text, every label by descending
  score (``top_k`` keeps the first k). Softmax heads (seq_cls) answer softmax probabilities, multi-label heads
  their per-label sigmoids, regression heads their values (``LABEL_i`` or the target names): the closest HF
  shapes. ``function_to_apply`` (softmax | sigmoid | none) other than the head's own is applied to its logits.
- a token head: token-classification, ``[{"entity_group", "score", "word", "start", "end"}, ...]`` per text;
  ``aggregation_strategy`` none | simple | first | average | max (``none``: ``[{"entity", "score", "index",
  "word", "start", "end"}]`` per token, like transformers' pipeline), ``ignore_labels``, ``stride`` (long
  texts in overlapping windows sharing ``stride`` tokens).

``/models/{name}/pipeline/feature-extraction`` and ``/pipeline/sentence-similarity`` (HF's own routes for a model
with several tasks) answer those tasks whatever the head: point the client at them for a classifier's vectors.
Vectors are ``Predictor.embed``'s (``normalize: true`` scales them to unit length); similarities are cosines.
Inputs longer than the model's max_length are cut unless ``truncate`` is false: then an over-long input is the 413
the TEI routes give, with TEI's message. Errors: ``{"error": "..."}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...aggregation_names import AGGREGATIONS
from ...runtime.postprocess import sigmoid, softmax
from ..responses import FastJSONResponse
from ..schema import Call, RequestError
from .common import (
    check_flag, check_truncation, cosine_similarity, embedding_width, endpoint, error_400, infer, parameters_of,
    text_list,
)

FEATURE_PARAMETERS = ("normalize", "truncate", "truncation_direction", "prompt_name", "dimensions", "encoding_format")
CLASSIFICATION_PARAMETERS = ("top_k", "function_to_apply")
TOKEN_PARAMETERS = ("aggregation_strategy", "ignore_labels", "stride")


def _body(payload: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(422, 'the body must be a JSON object like {"inputs": "some text", "parameters": {...}}')
    unknown = sorted(set(payload) - {"inputs", "parameters", "options", *FEATURE_PARAMETERS})
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; the body takes inputs, parameters")
    parameters = parameters_of(payload)
    # feature-extraction's parameters come at the top level (HF's task spec, TEI's body)
    return payload["inputs"], {**parameters, **{k: payload[k] for k in FEATURE_PARAMETERS if k in payload}}


def _only(parameters: dict[str, Any], allowed: tuple[str, ...], task: str) -> None:
    unknown = sorted(k for k, v in parameters.items() if k not in allowed and v is not None)
    if unknown:
        raise RequestError(422, f"{task} takes no parameter(s) {', '.join(map(repr, unknown))}; it takes: "
                                f"{', '.join(allowed)}")


@dataclass
class Task:
    """One request's task: how to shape its call's result."""

    name: str
    single: bool  # one text in: one answer out (not a list of them)
    options: dict[str, Any] = field(default_factory=dict)


def plan(state: Any, model: str, payload: Any, task: str | None) -> Call:
    """The call a ``/models/{model}`` body asks for, its :class:`Task` its shape (``task`` fixed by a
    ``/pipeline/...`` route)."""
    inputs, parameters = _body(payload)
    predictor = state.batcher(model).predictor
    if task is None:
        if isinstance(inputs, dict) and "source_sentence" in inputs:
            task = "sentence-similarity"
        elif any(parameters.get(key) is not None for key in FEATURE_PARAMETERS) or predictor.level not in ("sequence", "token"):
            task = "feature-extraction"
        else:
            task = "token-classification" if predictor.level == "token" else "text-classification"
    planner = {"sentence-similarity": _similarity, "feature-extraction": _features,
               "token-classification": _tokens, "text-classification": _classification}[task]
    return planner(model, inputs, parameters, predictor, state.config.max_input_texts)


def _similarity(model: str, inputs: Any, parameters: dict[str, Any], predictor: Any, limit: int) -> Call:
    _only(parameters, ("truncate", "truncation_direction", "prompt_name"), "sentence-similarity")
    truncate = check_truncation(parameters)
    if not isinstance(inputs, dict) or not isinstance(inputs.get("source_sentence"), str):
        raise RequestError(422, 'sentence-similarity takes {"inputs": {"source_sentence": "...", "sentences": [...]}}')
    others = text_list(inputs.get("sentences"), "sentences", limit - 1)
    return Call(model, "embed", [inputs["source_sentence"], *others], shape=Task("sentence-similarity", False),
                truncate=truncate)


def _features(model: str, inputs: Any, parameters: dict[str, Any], predictor: Any, limit: int) -> Call:
    _only(parameters, FEATURE_PARAMETERS, "feature-extraction")
    truncate = check_truncation(parameters)
    if parameters.get("encoding_format") not in (None, "float"):
        raise RequestError(422, "feature-extraction answers floats; encoding_format base64 is for /v1/embeddings")
    dimensions = parameters.get("dimensions")
    if dimensions is not None and dimensions != embedding_width(predictor):
        raise RequestError(422, f"this model gives {embedding_width(predictor)}-dimensional vectors and cannot "
                                "shorten them; leave 'dimensions' out")
    options = {"normalize": True} if check_flag(parameters, "normalize", False) else {}  # Predictor.embed's own
    return Call(model, "embed", text_list(inputs, "inputs", limit), options,
                shape=Task("feature-extraction", isinstance(inputs, str)), truncate=truncate)


def _texts(inputs: Any, limit: int) -> tuple[list[Any], bool]:
    """Classification inputs: (texts and pairs, whether one was sent alone)."""
    single = isinstance(inputs, (str, dict))
    texts = [_text(item) for item in ([inputs] if single else inputs if isinstance(inputs, list) else [None])]
    if not texts or len(texts) > limit:
        raise RequestError(422, f"'inputs' must hold 1 to {limit} texts (--max-input-texts)")
    return texts, single


def _tokens(model: str, inputs: Any, parameters: dict[str, Any], predictor: Any, limit: int) -> Call:
    _only(parameters, TOKEN_PARAMETERS, "token-classification")
    texts, single = _texts(inputs, limit)
    options: dict[str, Any] = {}
    aggregation = parameters.get("aggregation_strategy")
    if aggregation is not None:
        if aggregation not in AGGREGATIONS:
            raise RequestError(422, f"aggregation_strategy must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r:.40}")
        options["aggregation"] = aggregation
    if parameters.get("ignore_labels") is not None:
        options["ignore_labels"] = parameters["ignore_labels"]
    if parameters.get("stride") is not None:  # transformers' stride: the tokens neighbouring windows share
        options.update(long_text="window", window_stride=parameters["stride"])
    return Call(model, "predict", texts, options, shape=Task("token-classification", single, {
        "tokens": aggregation == "none", "ignore": parameters.get("ignore_labels") or ["O"]}))


def _classification(model: str, inputs: Any, parameters: dict[str, Any], predictor: Any, limit: int) -> Call:
    _only(parameters, CLASSIFICATION_PARAMETERS, "text-classification")
    texts, single = _texts(inputs, limit)
    top_k = parameters.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RequestError(422, f"top_k must be a positive integer, got {top_k!r:.40}")
    function = parameters.get("function_to_apply")
    if function is not None and (not isinstance(function, str) or function not in FUNCTIONS):
        raise RequestError(422, f"function_to_apply must be one of {', '.join(FUNCTIONS)}, got {function!r:.40}")
    # another function than the head's own is computed from its logits, which a result carries on request
    options = {"return_logits": True} if function is not None and "return_logits" in predictor.valid_options() else {}
    return Call(model, "predict", texts, options,
                shape=Task("text-classification", single, {"top_k": top_k, "function": function}))


def _text(item: Any) -> Any:
    """A text, or a ``{"text", "text_pair"}`` pair (transformers' pipeline input for pairs)."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str) and isinstance(item.get("text_pair"), str):
        return (item["text"], item["text_pair"])
    raise RequestError(422, "each input must be a string or {\"text\": ..., \"text_pair\": ...}")


def answer(task: Task, result: list[Any]) -> Any:
    """The result of the task's call in the task's HF format."""
    if task.name == "sentence-similarity":
        return cosine_similarity(result[0], result[1:])
    if task.name == "feature-extraction":
        return list(result)
    if task.name == "text-classification":
        return [_labels(item, task.options) for item in result]  # a list per text, for one text too
    shaped = [_entities(item, task.options) for item in result]
    return shaped[0] if task.single else shaped


FUNCTIONS = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda logits: logits}


def _labels(item: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every label by descending score: the head's own scores, or ``function_to_apply`` over its logits."""
    if isinstance(item, dict) and "values" in item:  # regression: its values are its logits
        names, own, logits = [f"LABEL_{i}" for i in range(len(item["values"]))], ("none", item["values"]), item["values"]
    elif isinstance(item, dict) and isinstance(item.get("scores"), dict):
        own = ("sigmoid" if "labels" in item else "softmax", list(item["scores"].values()))
        names, logits = list(item["scores"]), item.get("logits")
    else:
        raise RequestError(422, "this head's results have no text-classification format; use the native route "
                                "POST /v1/models/{name}/predict")
    function = options["function"]
    if function is None or function == own[0]:
        scores = own[1]
    elif logits is None:
        raise RequestError(422, f"function_to_apply {function!r:.20}: this model does not give its logits; leave "
                                "function_to_apply out")
    else:
        scores = FUNCTIONS[function](np.asarray(logits, dtype=np.float32)).tolist()
    ranked = sorted(({"label": name, "score": float(score)} for name, score in zip(names, scores)),
                    key=lambda entry: -entry["score"])
    return ranked[: options["top_k"]] if options["top_k"] else ranked


def _entities(item: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(item, dict) or "entities" not in item:
        raise RequestError(422, "this head's results have no token-classification format; use the native route "
                                "POST /v1/models/{name}/predict")
    if options["tokens"]:
        ignore = set(options["ignore"])
        return [{"entity": t["label"], "score": t["score"], "index": t["index"], "word": t["token"],
                 "start": t["start"], "end": t["end"]}
                for t in item["tokens"] if t["label"] not in ignore]
    return [{"entity_group": e["label"], "score": e["score"], "word": e["word"], "start": e["start"], "end": e["end"]}
            for e in item["entities"]]


def routes(state: Any) -> list[Route]:
    def handler(task: str | None):
        async def run(request: Request) -> Response:
            model = request.path_params["name"]
            state.batcher(model)  # an unknown model is a 404 before the body is read
            call, result, _ = await infer(state, request, lambda payload: plan(state, model, payload, task))
            return FastJSONResponse(answer(call.shape, result))

        return run

    mounted = [("/models/{name}", None)] + [
        (f"/models/{{name}}/pipeline/{task}", task)
        for task in ("feature-extraction", "sentence-similarity", "text-classification", "token-classification")
    ]
    return [Route(path, endpoint(state, "hf", path, handler(task), error_400), methods=["POST"])
            for path, task in mounted]
