"""The ``ordinal`` head's runtime postprocess: numpy only, so serving needs no torch."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def rank_probabilities(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From K-1 cumulative logits: ``P(rank > k)`` (B, K-1) and ``P(rank = r)`` (B, K).

    The head orders its cut points, so ``P(rank > k)`` never increases with ``k`` and every
    ``P(rank = r)`` is a difference of neighbours, never negative.
    """
    exceed = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    ones, zeros = np.ones_like(exceed[:, :1]), np.zeros_like(exceed[:, :1])
    bounds = np.concatenate([ones, exceed, zeros], axis=1)
    return exceed, np.clip(bounds[:, :-1] - bounds[:, 1:], 0.0, 1.0)


def ordinal(rows: Sequence[Mapping[str, np.ndarray]], context: Any) -> list[dict[str, Any]]:
    """One dict per row: ``rank`` (0-based), its ``label``, ``score`` = P(rank), ``expected_rank``,
    ``exceed_probabilities`` = P(rank > k) per threshold and ``probabilities`` = P(rank = r) by label.

    ``rows[i]["logits"]`` is row i's K-1 cumulative logits (postprocess contract 2)."""
    if not rows:
        return []
    config = context.config
    logits = np.stack([np.asarray(row["logits"]) for row in rows])
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    labels = [id2label.get(r, f"LABEL_{r}") for r in range(logits.shape[1] + 1)]
    exceed, per_rank = rank_probabilities(logits)
    ranks = (exceed > 0.5).sum(axis=1)
    results = []
    for row, rank in enumerate(ranks.tolist()):
        results.append(
            {
                "label": labels[rank],
                "rank": rank,
                "score": float(per_rank[row, rank]),
                "expected_rank": float(exceed[row].sum()),
                "exceed_probabilities": [float(p) for p in exceed[row]],
                "probabilities": {label: float(p) for label, p in zip(labels, per_rank[row])},
            }
        )
    return results
