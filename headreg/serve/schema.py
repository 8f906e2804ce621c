"""The serving API's request and response shapes, as plain functions (no web framework imported).

Every front door that speaks this API (the Starlette server here, the Ray Serve deployment) parses requests
with these functions, so the same body gets the same answer or the same error everywhere. A request that
cannot be served raises :class:`RequestError` with the HTTP status and a message that says what to fix.

>>> parse_request({"inputs": ["great film", ["A man plays.", "Someone plays music."]]}, max_inputs=8)
(['great film', ('A man plays.', 'Someone plays music.')], {})
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import RequestError


@dataclass
class Call:
    """What one request asks of one model: the native routes and every protocol adapter parse a body into this."""

    model: str
    kind: str  # "predict" | "embed"
    inputs: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    shape: Any = None  # what a protocol adapter needs to shape the result into its answer
    truncate: bool = True  # False: an input longer than the model takes is refused, not cut (TEI's truncate)


def parse_request(payload: Any, *, max_inputs: int) -> tuple[list[Any], dict[str, Any]]:
    """``{"inputs": [...], "parameters": {...}}`` (the native predict and embed routes) -> (inputs, parameters);
    pairs come back as tuples. What an embedding uses of the parameters is the long-text options (``long_text``,
    ``window_stride``, ``window_reduce``, ``max_windows``)."""
    body = json_object(payload, ("inputs", "parameters"))
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise RequestError(422, f"'parameters' must be a JSON object of per-call options, got {_kind(parameters)}")
    return parse_inputs(body.get("inputs"), max_inputs=max_inputs), dict(parameters)


def parse_inputs(inputs: Any, *, max_inputs: int) -> list[Any]:
    """A non-empty list of at most ``max_inputs`` texts or ``[text, text_pair]`` pairs of strings."""
    if inputs is None:
        raise RequestError(422, "'inputs' is missing: send a list of texts or [text, text_pair] pairs")
    if not isinstance(inputs, list):
        raise RequestError(422, f"'inputs' must be a list of texts or [text, text_pair] pairs, got {_kind(inputs)}")
    if not inputs:
        raise RequestError(422, "'inputs' is empty: send at least one text")
    check_count("'inputs'", len(inputs), max_inputs)
    parsed: list[Any] = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            parsed.append(item)
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(side, str) for side in item):
            parsed.append((item[0], item[1]))
        else:
            raise RequestError(
                422, f"inputs[{index}] is {_kind(item)}; each input must be a string or a [text, text_pair] "
                "pair of two strings"
            )
    return parsed


def check_count(what: str, count: int, max_inputs: int) -> None:
    """422 for a request of more than ``max_inputs`` texts (``--max-input-texts``); ``what`` names where they are."""
    if count > max_inputs:
        raise RequestError(422, f"{what} has {count} texts; this server takes at most {max_inputs} per request "
                                "(--max-input-texts): split the request")


def check_api_key(authorization: str | None, expected: str | None) -> None:
    """401 unless ``Authorization: Bearer <expected>`` (compared in constant time); no key configured: open."""
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise RequestError(401, "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise RequestError(401, "the API key is wrong", {"WWW-Authenticate": "Bearer"})


def head_task(manifest: dict[str, Any]) -> str | None:
    """The task of a single-head bundle's head, as its manifest records it (None for a multi-head bundle).

    Describing a served model imports no plugin. A bundle written before manifests recorded the task gets a
    built-in head's task from the built-ins alone, and a plugin head's from its plugin, which the Predictor has
    loaded already for that head's postprocess.
    """
    from ..manifest import bundle_heads, is_multi_head

    if is_multi_head(manifest):
        return None
    head = bundle_heads(manifest)[0]
    if isinstance(head.get("task"), str):
        return head["task"]
    from ..installed import get_head
    from ..plugins import builtin_registry

    try:
        return (builtin_registry().get if head.get("plugin") == "headreg" else get_head)(str(head.get("head"))).task
    except LookupError:
        return None


def model_info(name: str, predictor: Any) -> dict[str, Any]:
    """One ``/v1/models`` entry: what a client needs to know to call this model (headreg serve and Ray Serve)."""
    manifest = predictor.manifest
    task = head_task(manifest)
    parameters = predictor.valid_options()
    variants = sorted(k for k, v in (manifest.get("variants") or {"fp32": {}}).items() if isinstance(v, dict))
    unless = (", unless the request's parameters ask for long_text='window' (overlapping windows over the whole text)"
              if "long_text" in parameters else "")
    return {
        "name": name,
        "head": predictor.head,
        "task": task,
        "level": predictor.level,
        "labels": list(predictor.labels),
        "variants": variants,
        "variant": predictor.variant,
        "variant_reason": getattr(predictor, "variant_reason", None),
        "max_length": predictor.max_length,
        "truncation": (
            f"inputs longer than {predictor.max_length} tokens (special tokens included) are truncated to "
            f"{predictor.max_length}; the rest of the text is not seen by the model{unless}"
        ),
        "pairs": bool(predictor.supports_pairs),
        "parameters": list(parameters),
    }


def json_object(payload: Any, fields: Sequence[str], example: str = '{"inputs": [...]}') -> dict[str, Any]:
    """``payload`` if it is a JSON object with no field outside ``fields``, else a 422 saying what to send."""
    if not isinstance(payload, dict):
        raise RequestError(422, f"the request body must be a JSON object like {example}, got {_kind(payload)}")
    extra = sorted(set(payload) - set(fields))
    if extra:
        raise RequestError(422, f"unknown field(s) {', '.join(map(repr, extra))}; the body takes: {', '.join(fields)}")
    return payload


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
