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
from .verify import decision_agreement, run_onnx

TEXT_KINDS = ("text", "pair")


def _strip_value_info(source: Path, target: Path) -> None:
    """Copy the graph without value_info: stale shape annotations make quantize_dynamic fail
    ("Unable to find data type for weight_name=..."), and onnxruntime re-infers shapes anyway."""
    import onnx

    model = onnx.load(str(source))
    del model.graph.value_info[:]
    onnx.save(model, str(target))


def int8_agreement(
    session: Any, cases: list[Case], expected: list[dict[str, np.ndarray]], decide: Callable, *, token_level: bool
) -> float:
    """Decision agreement with PyTorch over the text cases (rows; token heads: non-padding tokens)."""
    agree = total = 0.0
    for case, want in zip(cases, expected):
        if case.kind not in TEXT_KINDS:
            continue
        got = run_onnx(session, case.inputs)
        want_d, got_d = decide(want, case.mask), decide(got, case.mask)
        if want_d is None:  # no decisions: count rows whose pooled_output points the same way
            a, b = want["pooled_output"], got["pooled_output"]
            cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
            agree, total = agree + float((cosine >= 0.99).sum()), total + len(cosine)
            continue
        fraction, count = decision_agreement(want_d, got_d, case.mask, token_level=token_level)
        agree, total = agree + fraction * count, total + count
    return agree / total if total else 0.0


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    cases: list[Case],
    expected: list[dict[str, np.ndarray]],
    *,
    decide: Callable,
    min_agreement: float,
    token_level: bool,
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
    agreement = int8_agreement(create_session(int8_path), cases, expected, decide, token_level=token_level)
    record = {
        "decision_agreement": round(agreement, 6),
        "min_agreement": min_agreement,
        "size_ratio": round(int8_path.stat().st_size / fp32_path.stat().st_size, 4),
    }
    if agreement < min_agreement:
        raise VerificationError(
            f"int8 model agrees with PyTorch on {agreement:.1%} of decisions over the verification texts, below "
            f"the required {min_agreement:.0%}; export without --quantize, train the head further (near-tied scores flip "
            "first), or lower --int8-min-agreement (int8_min_agreement=)"
        )
    return record
