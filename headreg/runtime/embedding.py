"""``Predictor.embed``'s per-call options: numpy only.

``normalize=True`` scales each vector to unit L2 norm, per row (a vector never depends on its batchmates), the
way sentence-transformers' ``Normalize`` module and ``encode(normalize_embeddings=True)`` do: ``v / max(|v|,
1e-12)``. A bundle whose checkpoint already ends in ``Normalize`` gives unit vectors without it (its graph
normalizes), and normalizing again changes nothing.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .inputs import InputError, RuntimeOption, register_option

EMBED_OPTIONS = ("normalize",)
_EPS = 1e-12  # torch.nn.functional.normalize's, which sentence-transformers uses


def _check_normalize(value: Any, context: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"normalize must be True or False, got {value!r:.40}")
    return bool(value)


register_option(RuntimeOption(
    "normalize", _check_normalize, runtime=True,
    description="embed only: scale each vector to unit L2 norm (as sentence-transformers' Normalize)",
))


def check_embed_options(kind: str, runtime: Mapping[str, Any]) -> None:
    """InputError when an embed-only option reaches ``predict``."""
    given = [name for name in EMBED_OPTIONS if runtime.get(name) is not None]
    if kind != "embed" and given:
        raise InputError(f"{', '.join(given)} applies to embed only (a vector option); predict does not take it")


def embedding(pooled: np.ndarray, runtime: Mapping[str, Any]) -> np.ndarray:
    """One input's vector as ``embed`` returns it: float32, unit-normalized with ``normalize=True``."""
    vector = np.asarray(pooled, dtype=np.float32)
    if runtime.get("normalize"):
        vector = vector / np.float32(max(float(np.linalg.norm(vector)), _EPS))
    return vector
