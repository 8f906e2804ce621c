"""``--optimize``: onnxscript's onnxruntime fusions (Attention, SkipLayerNormalization, BiasGelu, ...).

onnxscript's rewriter rather than ``onnxruntime.transformers.optimizer``: on dynamo-exported graphs the
latter fuses no attention at all (MiniLM: 0 Attention, 12 SkipLayerNorm, 6 BiasGelu), onnxscript fuses all
six layers. The fused graph replaces ``model.onnx`` only if it passes the same verification as the
unfused one and is not slower than it here: DESIGN.md measured onnxruntime's stock BERT fusion making
MiniLM *slower* on this CPU, so each export measures instead of assuming. Otherwise the unfused graph stays
and the record says why.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.session import create_session
from .cases import Case
from .verify import verify_session


def fuse(source: Path, target: Path) -> dict[str, int]:
    """Write the fused graph of ``source`` to ``target``; return the non-zero fusion counts."""
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions

    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ir.load(str(source))
            model, counts = ort_fusions.optimize_for_ort(model)
            ir.save(model, str(target))
    finally:
        logger.setLevel(level)
    return {name: int(count) for name, count in sorted(counts.items()) if count}


def fused_operator_counts(path: Path) -> dict[str, int]:
    """How many nodes of each com.microsoft (contrib) operator the graph has."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def median_latency(session: Any, inputs: dict[str, np.ndarray], runs: int = 5) -> float:
    """Median seconds per run after one warm-up (the warm-up also triggers lazy kernel setup)."""
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _benchmark_case(cases: list[Case]) -> Case:
    """The largest real-text batch: what the runtime will mostly see."""
    texts = [case for case in cases if case.kind != "random"] or cases
    return max(texts, key=lambda case: case.mask.size)


def optimize_graph(
    path: Path, cases: list[Case], expected: list[dict[str, np.ndarray]], *, checks: dict[str, Any]
) -> dict[str, Any]:
    """Fuse ``path`` in place when the fused graph verifies and is not slower; return what happened.

    The record's ``report`` is the fused graph's verification Report (when it got that far).
    """
    fused_path = path.with_name(path.stem + ".fused.onnx")
    record: dict[str, Any] = {"method": "onnxscript.rewriter.ort_fusions", "accepted": False}
    try:
        try:
            record["fusions"] = fuse(path, fused_path)
        except Exception as exc:  # a rewriter failure should not lose a verified export
            record["reason"] = f"fusion failed: {type(exc).__name__}: {exc}"
            record["fused"] = {}
            return record
        record["fused"] = fused_operator_counts(fused_path)
        if not record["fused"]:
            record["reason"] = "nothing was fused; the unfused graph is kept"
            return record
        fused_session = create_session(fused_path)
        report = verify_session(fused_session, cases, expected, target="fused model.onnx", **checks)
        record["verification"] = report.summary()
        record["report"] = report
        if not report.passed:
            record["reason"] = report.message()
            return record
        sample = _benchmark_case(cases).inputs
        unfused_s = median_latency(create_session(path), sample)
        fused_s = median_latency(fused_session, sample)
        record["speedup"] = round(unfused_s / fused_s, 3) if fused_s > 0 else None
        record["benchmark_shape"] = list(sample["input_ids"].shape)
        if fused_s > unfused_s:
            record["reason"] = f"the fused graph verified but was slower here ({unfused_s / fused_s:.2f}x); kept unfused"
            return record
        del fused_session
        fused_path.replace(path)
        record["accepted"] = True
        return record
    finally:
        fused_path.unlink(missing_ok=True)
