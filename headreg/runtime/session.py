"""onnxruntime sessions, created the same way by the exporter's verification and by the Predictor."""

from __future__ import annotations

import os
from typing import Any, Sequence


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def create_session(
    model_path: str | os.PathLike, threads: int | None = None, providers: Sequence[Any] | None = None
):
    """An InferenceSession with headreg's production settings (verification uses exactly these)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(model_path), sess_options=session_options(threads), providers=list(providers or ["CPUExecutionProvider"])
    )
