"""Length-bucketed batching: sort by token count, cap each batch by rows and by a token budget, pad per batch.

Padding is computed for nothing, so a mixed-length corpus batched this way runs several times faster than
the same rows fed in arrival order (benchmarked by ``headreg bench --texts``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def plan_batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None, *, sort: bool = True,
    equal_lengths: bool = False,
) -> list[list[int]]:
    """Group row indices into batches; each batch pads to its own longest row.

    With ``sort`` the rows go shortest first, so rows of similar length share a batch. A batch ends at
    ``batch_size`` rows or when ``rows x longest`` would pass ``max_batch_tokens`` (a row longer than the
    budget gets a batch of its own). Without ``sort`` the rows keep their order (the baseline benchmarks
    compare against). ``equal_lengths``: a batch holds rows of one length only, so no row is padded (bundles
    whose manifest says ``"batch_padding": false``: models whose outputs change with padding).

    >>> plan_batches([5, 100, 7, 90], batch_size=2)
    [[0, 2], [3, 1]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if sort else range(len(lengths))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = max(int(lengths[index]), 1)
        widest = max(longest, length)
        full = (len(current) >= batch_size or (max_batch_tokens is not None and widest * (len(current) + 1) > max_batch_tokens)
                or (equal_lengths and longest != length))
        if current and full:
            batches.append(current)
            current, widest = [], length
        current.append(index)
        longest = widest
    if current:
        batches.append(current)
    return batches


def real_span(width: int, length: int, padding_side: str) -> slice:
    """Where a row's ``length`` real tokens sit in a row padded to ``width`` on ``padding_side``."""
    return slice(width - length, width) if padding_side == "left" else slice(0, length)


def pad_batch(
    encodings: Sequence[Any], input_names: Sequence[str], pad_id: int, padding_side: str = "right", dtype=np.int64,
    width: int | None = None, multiple: int = 1,
) -> dict[str, np.ndarray]:
    """Model inputs for a batch of ``tokenizers.Encoding``, padded to the batch's longest row (or to ``width``,
    which export's batch-invariance check uses to add padding the runtime would not), rounded up to a
    ``multiple`` of tokens (a variant whose kernels change with the padded length, see backends.py).

    An empty encoding (a tokenizer without special tokens given "") gets one attended pad token: a fully
    masked row turns into NaN in onnxruntime's attention.
    """
    width = max([len(encoding) for encoding in encodings] + [1, width or 0])
    width = -(-width // multiple) * multiple
    ids = np.full((len(encodings), width), pad_id, dtype=dtype)
    mask = np.zeros((len(encodings), width), dtype=dtype)
    types = np.zeros((len(encodings), width), dtype=dtype) if "token_type_ids" in input_names else None
    for row, encoding in enumerate(encodings):
        n = len(encoding)
        span = real_span(width, max(n, 1), padding_side)
        mask[row, span] = 1
        if n:
            ids[row, span] = encoding.ids
            if types is not None:
                types[row, span] = encoding.type_ids
    inputs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        inputs["token_type_ids"] = types
    return {name: inputs[name] for name in input_names}
