"""The ``crf`` head's runtime postprocess: Viterbi in numpy, then words and entities like ``token_cls``.

Numpy only (plus headreg's torch-free runtime helpers), so serving a CRF bundle needs no torch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from headreg.runtime.postprocess import Context, TokenClassification, aggregate_tokens

from .decoding import marginals, viterbi

TRANSITION_OUTPUTS = ("start_transitions", "transitions", "end_transitions")


class CRFResult(TokenClassification):
    path: list[int]  # the Viterbi tag id of every token of the row, special tokens included


def crf(rows: Sequence[Mapping[str, np.ndarray]], context: Context) -> list[CRFResult]:
    """Decode each row's best tag path, score each token by its marginal probability, group entities.

    ``rows[i]`` holds row i's own emissions (``logits``, one per token, no padding) and the shared transitions
    (postprocess contract 2). ``aggregation`` (none | first | average | max) picks each word's tag from the path:
    its first token's, its most frequent, or its most confident token's. ``ignore_labels`` defaults to ("O",).
    """
    aggregation = context.config.get("aggregation", "first")
    ignore = context.config.get("ignore_labels", ("O",))
    results: list[CRFResult] = []
    for outputs, encoding, text in zip(rows, context.encodings, context.texts):
        missing = [name for name in ("logits", *TRANSITION_OUTPUTS) if name not in outputs]
        if missing:
            raise ValueError(
                f"the crf postprocess needs the model outputs {', '.join(missing)}; this bundle has "
                f"{', '.join(outputs)}. Export it again with headreg-plugin-crf installed."
            )
        emissions = np.asarray(outputs["logits"], dtype=np.float32)[None]
        if emissions.ndim != 3:
            raise ValueError(f"the crf postprocess needs per-token logits [tokens, tags], got shape {emissions.shape[1:]}")
        start, transitions, end = (np.asarray(outputs[name], dtype=np.float32) for name in TRANSITION_OUTPUTS)
        mask = np.ones(emissions.shape[:2], dtype=bool)
        path = viterbi(emissions, mask, start, transitions, end)[0]
        probs = marginals(emissions, mask, start, transitions, end)[0]
        scores = np.take_along_axis(probs, np.maximum(path, 0)[:, None], axis=-1)[:, 0]
        result: Any = aggregate_tokens(
            path, scores, encoding, text, context.id2label, aggregation=aggregation, ignore_labels=ignore
        )
        result["path"] = [int(tag) for tag in path]
        results.append(result)
    return results
