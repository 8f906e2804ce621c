"""Request-body parsing with limits, shared by every route and protocol adapter (no web framework imported).

Every route that takes a JSON body parses it with :func:`parse_json_body` (the server's ``infer`` and ``body``,
with the defaults): a body a client can send is either JSON this server can work with or a 422 that
names the problem, never a 500. What Python's ``json`` alone lets through:

- an integer of more than 4,300 digits raises ``ValueError`` (CPython's int conversion limit), and shorter
  ones still cost quadratic time to convert;
- nesting a few thousand levels deep raises ``RecursionError`` (in the parser, and in any code that walks it);
- ``NaN``/``Infinity`` (not JSON) and ``1e999`` (infinite) parse to floats no option can use.

So the body is refused, before ``json.loads`` runs, when its brackets nest deeper than ``max_depth``; and while
it runs, when a number has more than ``max_number_chars`` characters or is not finite; after it, when a string
is longer than ``max_string_chars`` (the error names where: ``inputs[3]``).

>>> parse_json_body(b'{"inputs": ["great film"], "parameters": {"top_k": 2}}')
{'inputs': ['great film'], 'parameters': {'top_k': 2}}
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .errors import RequestError

# Defaults: far past what any request of these APIs needs (inputs are a list of strings or of pairs, the
# parameters a flat object of options), far below what costs time or stack.
MAX_DEPTH = 32
MAX_NUMBER_CHARS = 40  # an int64 has 19 digits; a float written in full precision has fewer than 25 characters
MAX_STRING_CHARS = 1_000_000


def parse_json_body(
    body: bytes,
    *,
    max_depth: int = MAX_DEPTH,
    max_number_chars: int = MAX_NUMBER_CHARS,
    max_string_chars: int = MAX_STRING_CHARS,
) -> Any:
    """``body`` as JSON, or :class:`RequestError` 422 naming what was wrong (syntax, depth, number, string)."""
    if not body.strip():
        raise RequestError(422, 'the request body is empty; send JSON like {"inputs": ["some text"]}')
    # Fewer brackets than the limit cannot nest past it: most bodies skip the scan.
    depth = nesting_depth(body) if body.count(b"[") + body.count(b"{") > max_depth else 0
    if depth > max_depth:
        raise RequestError(
            422, f"the request body nests {depth} levels of lists/objects; this server takes at most {max_depth}"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(422, f"the request body is not UTF-8 text: {exc}") from exc

    def number(kind: type) -> Any:
        def convert(literal: str) -> Any:
            if len(literal) > max_number_chars:
                raise _BadNumber(f"a number of {len(literal)} characters ({literal[:12]}...); this server takes "
                                 f"numbers of at most {max_number_chars}")
            value = kind(literal)
            if kind is float and not math.isfinite(value):
                raise _BadNumber(f"the number {literal}, which does not fit a 64-bit float")
            return value

        return convert

    def constant(name: str) -> Any:
        raise _BadNumber(f"{name}, which is not a JSON number")

    try:
        payload = json.loads(text, parse_int=number(int), parse_float=number(float), parse_constant=constant)
    except _BadNumber as exc:
        raise RequestError(422, f"the request body has {exc}") from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            422, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError:  # the depth count above is cut short by invalid JSON (an unclosed string)
        raise RequestError(422, f"the request body nests deeper than {max_depth} levels of lists/objects") from None
    _check_strings(payload, max_string_chars)
    return payload


def nesting_depth(body: bytes) -> int:
    """How deep ``[``/``{`` nest in ``body`` outside strings (vectorized: a 2 MB body takes milliseconds).

    A quote opens or closes a string unless an odd run of backslashes precedes it; a backslash outside a
    string is not JSON, and ``json.loads`` refuses such a body whatever depth this counts for it.
    """
    chars = np.frombuffer(body, np.uint8)
    if not len(chars):
        return 0
    quotes = chars == 34
    if quotes.any():
        slashes = chars == 92
        if slashes.any():
            index = np.arange(len(chars), dtype=np.int32)  # bodies are megabytes: half the memory of int64
            # before each position, the index of the last byte that is not a backslash (-1: none)
            last = np.maximum.accumulate(np.where(slashes, -1, index))
            run = index - 1 - np.concatenate((np.array([-1], np.int32), last[:-1]))  # backslashes right before each position
            quotes &= run % 2 == 0
        # odd quotes so far (a bracket is never itself a quote); uint8 wraps at 256, which keeps the parity
        inside = (np.cumsum(quotes, dtype=np.uint8) & 1).astype(bool)
    else:
        inside = np.zeros(len(chars), dtype=bool)
    opens = ((chars == 91) | (chars == 123)) & ~inside
    closes = ((chars == 93) | (chars == 125)) & ~inside
    steps = opens.astype(np.int32) - closes.astype(np.int32)
    return int(max(np.cumsum(steps).max(initial=0), 0))


class _BadNumber(ValueError):
    pass


def _check_strings(payload: Any, limit: int) -> None:
    """422 naming the first string (or object key) longer than ``limit`` characters; iterative, no recursion."""
    stack: list[tuple[Any, str]] = [(payload, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if len(value) > limit:
                raise RequestError(
                    422, f"{where or 'the body'} is a string of {len(value)} characters; this server takes strings of "
                    f"at most {limit}: split the text"
                )
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                if len(key) > limit:
                    raise RequestError(422, f"an object key of {len(key)} characters; at most {limit}")
                stack.append((item, f"{where}.{key}" if where else key))
