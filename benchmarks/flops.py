"""Matmul FLOPs of an encoder forward pass, from its transformers config.

Per layer and token: Q, K, V and output projections ``8 H^2``, the feed-forward ``4 H I``, and attention's
length-dependent part ``4 L H`` (``Q K^T`` and ``softmax(.) V``, each ``2 L H``). Per sequence: the
pooler's ``2 H^2`` and the head's ``2 H num_labels``. Embedding lookups, layer norms, softmax and GELU are
not matmuls and are left out (a few % at most), so the compute floor this gives is a true lower bound.
"""

from __future__ import annotations

from typing import Any


def encoder_dims(config: Any) -> tuple[int, int, int]:
    """``(hidden, intermediate, layers)`` for BERT-like configs (DistilBERT's names included)."""
    hidden = getattr(config, "hidden_size", None) or config.dim
    intermediate = getattr(config, "intermediate_size", None) or config.hidden_dim
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    return int(hidden), int(intermediate), int(layers)


def sequence_flops(config: Any, length: int, num_labels: int = 2, pooler: bool = True) -> int:
    """Matmul FLOPs (multiply + add = 2) for one sequence of ``length`` tokens."""
    hidden, intermediate, layers = encoder_dims(config)
    per_token = layers * (8 * hidden * hidden + 4 * hidden * intermediate + 4 * length * hidden)
    per_sequence = (2 * hidden * hidden if pooler else 0) + 2 * hidden * num_labels
    return length * per_token + per_sequence


def batch_flops(config: Any, lengths: list[int] | tuple[int, ...], num_labels: int = 2) -> int:
    """FLOPs for a batch whose rows have these (unpadded) lengths: the useful work, padding excluded."""
    return sum(sequence_flops(config, int(n), num_labels) for n in lengths)


def flops_per_token(config: Any, length: int) -> float:
    """Matmul FLOPs per token at ``length`` (MiniLM-L6 at 128: about 22.4 M)."""
    return sequence_flops(config, length, num_labels=0, pooler=False) / length
