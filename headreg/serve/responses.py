"""JSON responses encoded with orjson, for the bodies that carry vectors.

Measured here (one MiniLM vector, 384 floats, in an OpenAI embeddings body): the stdlib's ``json.dumps`` took
~15x orjson's time, a large share of a one-text embedding request's CPU next to the model's own. orjson also
writes numpy arrays directly (a float32 vector as float32's shortest round-trip digits, no ``tolist()``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """``JSONResponse`` encoded by orjson; numpy arrays are written as JSON numbers.

    NaN and infinity are refused as the stdlib response refuses them (``allow_nan=False``: a 500), where orjson
    alone would write ``null``: a broken model's output must not reach a client as a plausible answer.
    """

    def render(self, content: Any) -> bytes:
        _check_finite(content)
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _check_finite(content: Any) -> None:
    if isinstance(content, np.ndarray):
        if content.dtype.kind == "f" and not np.isfinite(content).all():
            raise ValueError("a vector holds NaN or infinity, which JSON cannot carry")
    elif isinstance(content, float):
        if not math.isfinite(content):
            raise ValueError("a number is NaN or infinity, which JSON cannot carry")
    elif isinstance(content, dict):
        for value in content.values():
            _check_finite(value)
    elif isinstance(content, (list, tuple)):
        for value in content:
            _check_finite(value)
