"""The torch-free production runtime: onnxruntime + tokenizers + numpy.

>>> from headreg.runtime import Predictor
>>> Predictor("bundle/").predict(["great film"])    # doctest: +SKIP

Importing this package imports neither torch nor transformers (a test checks ``sys.modules``), and not
even onnxruntime or tokenizers: those load when a Predictor is created.
"""

from __future__ import annotations

from .postprocess import Context, aggregate_tokens
from .inputs import InputError
from .predictor import Predictor

__all__ = ["Context", "InputError", "Predictor", "aggregate_tokens"]
