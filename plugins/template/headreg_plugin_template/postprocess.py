"""The runtime side of template_head: numpy only, because bundles are served without torch."""

from __future__ import annotations

import numpy as np


def template_head(outputs, context):
    """One dict per row. ``outputs`` are the ONNX outputs by name; ``context.label(i)`` names label ``i``."""
    logits = np.asarray(outputs["logits"], dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return [
        {"label": context.label(int(row.argmax())), "score": float(row.max()), "cosine": [float(v) for v in cos]}
        for row, cos in zip(probs, logits / context.config["scale"])
    ]
