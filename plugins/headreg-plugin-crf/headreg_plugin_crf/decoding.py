"""CRF decoding in numpy (no torch): Viterbi paths and per-token marginals.

``viterbi`` is kept step for step identical to the PyTorch ``viterbi_decode`` in ``head.py`` (the same sums
in the same order, first-index tie-breaking), so on the same emissions both return the same tags.
"""

from __future__ import annotations

import numpy as np


def viterbi(
    emissions: np.ndarray, mask: np.ndarray, start: np.ndarray, transitions: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """Best tag path per row: ``emissions`` (B, T, K), ``mask`` (B, T) -> (B, T) int64, -1 on masked tokens.

    A row's path starts at its first unmasked token and skips masked ones (left or right padding).
    """
    emissions = np.asarray(emissions, dtype=np.float32)
    mask = np.asarray(mask).astype(bool)
    start, transitions, end = (np.asarray(x, dtype=np.float32) for x in (start, transitions, end))
    batch, length, num_tags = emissions.shape
    score = np.zeros((batch, num_tags), dtype=np.float32)
    started = np.zeros(batch, dtype=bool)
    keep = np.broadcast_to(np.arange(num_tags), (batch, num_tags))
    backpointers = []
    for t in range(length):
        scores = emissions[:, t]
        candidates = score[:, :, None] + transitions
        best, previous = candidates.max(axis=1), candidates.argmax(axis=1)
        current = mask[:, t]
        fresh = np.where(started[:, None], best + scores, start + scores)
        score = np.where(current[:, None], fresh, score)
        # A masked or first token points at itself, so backtracking carries the tag across it.
        backpointers.append(np.where((started & current)[:, None], previous, keep))
        started = started | current
    tag = (score + end).argmax(axis=1)
    tags = [tag]
    rows = np.arange(batch)
    for t in range(length - 1, 0, -1):
        tag = backpointers[t][rows, tag]
        tags.append(tag)
    path = np.stack(tags[::-1], axis=1).astype(np.int64)
    return np.where(mask, path, -1)


def marginals(
    emissions: np.ndarray, mask: np.ndarray, start: np.ndarray, transitions: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """P(tag k at token t | the whole row), (B, T, K) by forward-backward; zeros on masked tokens."""
    emissions = np.asarray(emissions, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    transitions = np.asarray(transitions, dtype=np.float64)
    batch, length, num_tags = emissions.shape
    alphas = np.zeros_like(emissions)
    alpha = np.zeros((batch, num_tags))
    started = np.zeros(batch, dtype=bool)
    for t in range(length):
        step = _logsumexp(alpha[:, :, None] + transitions, axis=1) + emissions[:, t]
        fresh = np.where(started[:, None], step, start + emissions[:, t])
        alpha = np.where(mask[:, t, None], fresh, alpha)
        alphas[:, t] = alpha
        started |= mask[:, t]
    log_z = _logsumexp(alpha + end, axis=1)
    # beta[t, k]: log score of everything from token t on (its emission included), given tag k at t.
    betas = np.zeros_like(emissions)
    following = np.zeros((batch, num_tags))
    seen = np.zeros(batch, dtype=bool)
    for t in range(length - 1, -1, -1):
        onward = np.where(seen[:, None], _logsumexp(transitions[None] + following[:, None, :], axis=2), end)
        beta = emissions[:, t] + onward
        following = np.where(mask[:, t, None], beta, following)
        betas[:, t] = beta
        seen |= mask[:, t]
    probs = np.exp(alphas + betas - emissions - log_z[:, None, None])
    return np.where(mask[:, :, None], probs, 0.0)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    peak = values.max(axis=axis, keepdims=True)
    return (peak + np.log(np.exp(values - peak).sum(axis=axis, keepdims=True))).squeeze(axis)
