"""The bf16 variant: the same ``model.onnx`` run by OpenVINO in bf16, verified where this machine can check it.

A bf16 record is written only when this CPU has native bf16 (AVX-512 BF16 or AMX) and OpenVINO imports; it is
*accepted* (eligible as the default) only when both checks pass:

- **fidelity**: decisions per row equal to PyTorch's on the verification texts (``min_agreement``, default
  99.5%) and scores (softmax / sigmoid / regression values) within ``max_drift`` (default 0.01);
- **batch invariance**: every text row alone, in its verification batch and in one batch with every other
  text row (reversed order, padded to the longest) gives identical decisions and scores within
  ``invariance_atol`` (default 1e-5).

OpenVINO's bf16 kernels are exactly batch-size invariant here, but a row's result changed (logits by ~3e-4)
when the batch's padded length crossed a 16-token block boundary past the row's own length. Padding every
batch to a multiple of ``PAD_MULTIPLE`` tokens removes that (0.0 difference measured, AVX-512 BF16), so the
record carries ``pad_to_multiple_of`` and the runtime pads to it for this variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..manifest import MODEL_FILE
from ..runtime.backends import BF16_CPU_FLAGS, OpenVINOBackend, bf16_cpu, openvino_version
from ..runtime.batching import pad_batch
from .cases import Case

BF16_MIN_AGREEMENT = 0.995
BF16_MAX_DRIFT = 0.01
INVARIANCE_ATOL = 1e-5
# Wider than the 16-token block measured on AVX-512 BF16: AMX bf16 tiles hold 32 values in a row.
PAD_MULTIPLE = 32
TEXT_KINDS = ("text", "pair")


def cpu_flags() -> frozenset[str]:
    # TODO(9a): headreg.runtime.variants.cpu_flags once it lands on main
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_unavailable(flags: Sequence[str] | frozenset[str] | None = None) -> str | None:
    """Why a bf16 variant cannot be verified on this machine, or None when it can."""
    flags = cpu_flags() if flags is None else flags
    if bf16_cpu(flags) is None:
        return f"this CPU has no native bf16 ({' / '.join(BF16_CPU_FLAGS)} missing)"
    if openvino_version() is None:
        return "OpenVINO is not installed (pip install 'headreg[openvino]')"
    return None


class _Row:
    """One row's real tokens, cut out of a padded case."""

    def __init__(self, inputs: dict[str, np.ndarray], row: int):
        keep = inputs["attention_mask"][row].astype(bool)
        self.ids = inputs["input_ids"][row][keep]
        self.type_ids = inputs["token_type_ids"][row][keep] if "token_type_ids" in inputs else np.zeros_like(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def _feeds(rows: Sequence[_Row], input_names: Sequence[str], pad_id: int, padding_side: str, dtype) -> dict[str, np.ndarray]:
    return pad_batch(rows, input_names, pad_id, padding_side, dtype, multiple=PAD_MULTIPLE)


def scores_of(problem_type: str | None, level: str) -> Callable[[np.ndarray], np.ndarray]:
    """What a user reads as scores: softmax (single-label, token), sigmoid (multi-label), values (regression)."""
    if problem_type == "multi_label_classification":
        return lambda logits: 1.0 / (1.0 + np.exp(-logits))
    if problem_type == "regression":
        return lambda logits: logits

    def softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    return softmax


def _row_outputs(outputs: dict[str, np.ndarray], row: int, length: int, width: int, side: str, token_level: bool):
    """One row's logits (token heads: its own tokens only) and pooled_output, out of a padded batch."""
    logits = outputs["logits"][row]
    if token_level:
        logits = logits[width - length:] if side == "left" else logits[:length]
    return logits, outputs["pooled_output"][row]


def verify_bf16(
    model_path: Path,
    cases: list[Case],
    expected: list[dict[str, np.ndarray]],
    *,
    decide: Callable[[dict[str, np.ndarray], np.ndarray], Any],
    problem_type: str | None,
    token_level: bool,
    pad_id: int,
    padding_side: str,
    threads: int | None = None,
    min_agreement: float = BF16_MIN_AGREEMENT,
    max_drift: float = BF16_MAX_DRIFT,
    invariance_atol: float = INVARIANCE_ATOL,
) -> dict[str, Any]:
    """The bf16 variant record (9a's format): acceptance against PyTorch and batch invariance, both measured."""
    backend = OpenVINOBackend(model_path, threads=threads, precision="bf16")
    names, dtype = backend.input_names, backend.input_dtype
    score = scores_of(problem_type, "token" if token_level else "sequence")
    text_cases = [(c, e) for c, e in zip(cases, expected) if c.kind in TEXT_KINDS]

    # fidelity: each verification batch as the runtime would run it
    agree = total = 0
    drift = 0.0
    for case, want in text_cases:
        rows = [_Row(case.inputs, r) for r in range(case.mask.shape[0])]
        feeds = _feeds(rows, names, pad_id, padding_side, dtype)
        got = backend.run(feeds)
        mask = feeds["attention_mask"]
        width = mask.shape[1]
        for r, row in enumerate(rows):
            got_logits, _ = _row_outputs(got, r, len(row), width, padding_side, token_level)
            want_logits, _ = _row_outputs(want, r, len(row), case.mask.shape[1], padding_side, token_level)
            drift = max(drift, float(np.abs(score(got_logits) - score(want_logits)).max()))
            one = np.ones((1, len(row)), dtype=np.int64)
            d_got = decide({"logits": got_logits[None], "pooled_output": None}, one)
            d_want = decide({"logits": want_logits[None], "pooled_output": None}, one)
            if d_want is not None:
                total += 1
                agree += int(np.array_equal(np.asarray(d_got), np.asarray(d_want)))
    agreement = agree / total if total else 1.0
    acceptance = {
        "passed": bool(agreement >= min_agreement and drift <= max_drift),
        "rows": total,
        "decision_agreement": round(agreement, 6),
        "min_agreement": min_agreement,
        "score_drift_max": round(drift, 6),
        "max_score_drift": max_drift,
        "against": "PyTorch fp32 on the export's text cases",
    }

    # batch invariance: alone vs in its batch vs everything in one (reversed) batch
    all_rows = [_Row(case.inputs, r) for case, _ in text_cases for r in range(case.mask.shape[0])]
    alone = []
    for row in all_rows:
        feeds = _feeds([row], names, pad_id, padding_side, dtype)
        alone.append(_row_outputs(backend.run(feeds), 0, len(row), feeds["input_ids"].shape[1], padding_side, token_level))
    batched: list[list[Any]] = [[None, None] for _ in all_rows]
    start = 0
    for case, _ in text_cases:
        count = case.mask.shape[0]
        batched_rows = all_rows[start:start + count]
        feeds = _feeds(batched_rows, names, pad_id, padding_side, dtype)
        out = backend.run(feeds)
        for r, row in enumerate(batched_rows):
            batched[start + r][0] = _row_outputs(out, r, len(row), feeds["input_ids"].shape[1], padding_side, token_level)
        start += count
    order = list(range(len(all_rows)))[::-1]
    feeds = _feeds([all_rows[i] for i in order], names, pad_id, padding_side, dtype)
    out = backend.run(feeds)
    for position, i in enumerate(order):
        batched[i][1] = _row_outputs(out, position, len(all_rows[i]), feeds["input_ids"].shape[1], padding_side, token_level)
    score_diff = logit_diff = pooled_diff = 0.0
    same_decisions = 0
    for (logits, pooled), together in zip(alone, batched):
        one = np.ones((1, logits.shape[0] if token_level else 1), dtype=np.int64)
        mine = decide({"logits": logits[None], "pooled_output": None}, one)
        same = True
        for other_logits, other_pooled in together:
            score_diff = max(score_diff, float(np.abs(score(other_logits) - score(logits)).max()))
            logit_diff = max(logit_diff, float(np.abs(other_logits - logits).max()))
            pooled_diff = max(pooled_diff, float(np.abs(other_pooled - pooled).max()))
            theirs = decide({"logits": other_logits[None], "pooled_output": None}, one)
            same = same and (mine is None or np.array_equal(np.asarray(mine), np.asarray(theirs)))
        same_decisions += int(same)
    invariance = {
        "passed": bool(same_decisions == len(all_rows) and score_diff <= invariance_atol),
        "rows": len(all_rows),
        "identical_decisions": same_decisions,
        "score_max_abs_diff": score_diff,
        "logits_max_abs_diff": logit_diff,
        "pooled_output_max_abs_diff": pooled_diff,
        "atol": invariance_atol,
        "pad_to_multiple_of": PAD_MULTIPLE,
        "checked": "each text row alone vs in its verification batch vs in one batch with every text row",
    }
    flags = cpu_flags()
    return {
        "file": MODEL_FILE,
        "precision": "bf16",
        "backend": "openvino",
        "quantization": None,
        "requires_cpu": list(BF16_CPU_FLAGS),
        "pad_to_multiple_of": PAD_MULTIPLE,
        "acceptance": acceptance,
        "batch_invariance": invariance,
        "verified_on": {"bf16_isa": bf16_cpu(flags), "openvino": openvino_version(),
                        "inference_precision": backend.inference_precision},
    }
