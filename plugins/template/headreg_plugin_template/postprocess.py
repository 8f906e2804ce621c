"""The runtime side of template_head: numpy only, because bundles are served without torch."""

from __future__ import annotations

import numpy as np


def template_head(rows, context):
    """One dict per row. ``rows[i]`` holds row i's own ONNX outputs by name (a per-token output is already cut to
    the row's tokens: postprocess contract 2); ``context.label(i)`` names label ``i``."""
    if not rows:
        return []
    logits = np.stack([np.asarray(row["logits"], dtype=np.float64) for row in rows])
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return [
        {"label": context.label(int(row.argmax())), "score": float(row.max()), "cosine": [float(v) for v in cos]}
        for row, cos in zip(probs, logits / context.config["scale"])
    ]
