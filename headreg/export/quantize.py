"""``--quantize int8``: onnxruntime dynamic int8 of the unfused fp32 graph, accepted on decision agreement.

int8 logits are not within fp32 tolerances by design, so the int8 model is judged on what users see:
the fraction of decisions (argmax / thresholded labels / token tags) equal to PyTorch's on the
verification texts. Heads without decisions (regression) are judged on pooled_output cosine similarity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import VerificationError
from .cases import Case
from .verify import HeadCheck, as_checks, decision_agreement, run_onnx

TEXT_KINDS = ("text", "pair")


def _strip_value_info(source: Path, target: Path) -> None:
    """Copy the graph without value_info: stale shape annotations make quantize_dynamic fail
    ("Unable to find data type for weight_name=..."), and onnxruntime re-infers shapes anyway."""
    import onnx

    model = onnx.load(str(source))
    del model.graph.value_info[:]
    onnx.save(model, str(target))


def int8_agreement(
    session: Any, cases: list[Case], expected: list[dict[str, np.ndarray]], decide: Callable | list[HeadCheck],
    *, token_level: bool = False,
) -> float:
    """Decision agreement with PyTorch over the text cases: the lowest head's (see :func:`head_agreements`)."""
    return min(head_agreements(session, cases, expected, decide, token_level=token_level).values(), default=0.0)


def head_agreements(
    session: Any, cases: list[Case], expected: list[dict[str, np.ndarray]], decide: Callable | list[HeadCheck],
    *, token_level: bool = False,
) -> dict[str, float]:
    """Per head: fraction of its decisions over the text cases equal to PyTorch's (rows; token heads: non-padding
    tokens; heads without decisions: rows whose pooled_output points the same way). Single-head key: ""."""
    checks = as_checks(decide, {"logits"} if token_level else set())
    counts = {check.name: [0.0, 0.0] for check in checks}
    for case, want in zip(cases, expected):
        if case.kind not in TEXT_KINDS:
            continue
        got = run_onnx(session, case.inputs)
        for check in checks:
            tally = counts[check.name]
            want_d, got_d = check.decisions(want, case.mask), check.decisions(got, case.mask)
            if want_d is None:  # no decisions: count rows whose pooled_output points the same way
                a, b = check.own(want)["pooled_output"], check.own(got)["pooled_output"]
                cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
                tally[0] += float((cosine >= 0.99).sum())
                tally[1] += len(cosine)
                continue
            fraction, count = decision_agreement(want_d, got_d, case.mask, token_level=check.token_level)
            tally[0] += fraction * count
            tally[1] += count
    return {name: (agree / total if total else 0.0) for name, (agree, total) in counts.items()}


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    cases: list[Case],
    expected: list[dict[str, np.ndarray]],
    *,
    decide: Callable | list[HeadCheck],
    min_agreement: float,
    token_level: bool = False,
) -> dict[str, Any]:
    """Write ``int8_path`` and return its acceptance record; VerificationError when agreement is too low."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..runtime.session import create_session

    clean = int8_path.with_name(int8_path.stem + ".prep.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger every time
    try:
        _strip_value_info(fp32_path, clean)
        # Per-channel weight scales: same speed within noise here, about half the score drift of per-tensor
        # (MiniLM corpus: 100% vs 99.2% identical decisions); QUInt8 weights and reduce_range measured slower
        # or less accurate (docs/performance.md).
        quantize_dynamic(str(clean), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
        clean.unlink(missing_ok=True)
    per_head = head_agreements(create_session(int8_path), cases, expected, decide, token_level=token_level)
    agreement = min(per_head.values(), default=0.0)
    record = {
        "decision_agreement": round(agreement, 6),
        "heads": {name: round(value, 6) for name, value in per_head.items() if name},
        "min_agreement": min_agreement,
        "size_ratio": round(int8_path.stat().st_size / fp32_path.stat().st_size, 4),
    }
    if agreement < min_agreement:
        worst = min(per_head, key=per_head.get)
        raise VerificationError(
            (f"head {worst!r}: " if worst else "") + f"int8 model agrees with PyTorch on {agreement:.1%} of decisions over the verification texts, below "
            f"the required {min_agreement:.0%}; export without --quantize, train the head further (near-tied scores flip "
            "first), or lower --int8-min-agreement (int8_min_agreement=)"
        )
    return record
