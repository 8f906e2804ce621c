"""``--optimize``: onnxscript's onnxruntime fusions (Attention, SkipLayerNormalization, BiasGelu, ...).

onnxscript's rewriter rather than ``onnxruntime.transformers.optimizer``: on dynamo-exported graphs the
latter fuses no attention at all (MiniLM: 0 Attention, 12 SkipLayerNorm, 6 BiasGelu), onnxscript fuses all
six layers. The fused graph replaces ``model.onnx`` only if it passes the same verification as the
unfused one and is not slower than it here: DESIGN.md measured onnxruntime's stock BERT fusion making
MiniLM *slower* on this CPU, so each export measures instead of assuming. Otherwise the unfused graph stays
and the record says why.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.session import create_session
from .acceptance import session_invariance
from .cases import Case
from .verify import compare_cases, run_cases, run_onnx


def fuse(source: Path, target: Path) -> dict[str, int]:
    """Write the fused graph of ``source`` to ``target``; return the non-zero fusion counts."""
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions

    from .trace import quiet_exporters

    with quiet_exporters():
        model, counts = ort_fusions.optimize_for_ort(ir.load(str(source)))
        ir.save(model, str(target))
    return {name: int(count) for name, count in sorted(counts.items()) if count}


def fused_operator_counts(path: Path) -> dict[str, int]:
    """How many nodes of each com.microsoft (contrib) operator the graph has."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def interleaved_latency(sessions: list[Any], inputs: dict[str, np.ndarray], rounds: int = 10) -> list[float]:
    """Median seconds per run of each session, measured A, B, A, B, ... so load changes hit all alike.

    Back-to-back runs of one session and then the other cannot resolve 5-10% on a shared machine.
    """
    feeds = [{i.name: inputs[i.name] for i in session.get_inputs()} for session in sessions]
    for session, feed in zip(sessions, feeds):
        session.run(None, feed)  # warm-up: lazy kernel setup and allocation
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for session, feed, bucket in zip(sessions, feeds, times):
            start = time.perf_counter()
            session.run(None, feed)
            bucket.append(time.perf_counter() - start)
    return [float(np.median(bucket)) for bucket in times]


def benchmark_cases(cases: list[Case]) -> list[Case]:
    """A short and a long real-text batch: a graph must not be slower on either to be preferred."""
    texts = [case for case in cases if case.kind != "random"] or cases
    by_size = sorted(texts, key=lambda case: case.mask.size)
    return [by_size[0], by_size[-1]] if len(by_size) > 1 else by_size


def speedups(baseline: Any, candidate: Any, cases: list[Case]) -> dict[str, float]:
    """baseline / candidate median latency per benchmark shape ("BxT" -> ratio; > 1 means candidate is faster)."""
    ratios = {}
    for case in benchmark_cases(cases):
        base_s, cand_s = interleaved_latency([baseline, candidate], case.inputs)
        ratios["x".join(map(str, case.inputs["input_ids"].shape))] = round(base_s / cand_s, 3) if cand_s > 0 else 0.0
    return ratios


def optimize_graph(
    path: Path, cases: list[Case], expected: list[dict[str, np.ndarray]], *, checks: dict[str, Any],
    padding_side: str = "right",
) -> dict[str, Any]:
    """Fuse ``path`` in place when the fused graph verifies, is batch-invariant and is not slower; return what
    happened.

    The record's ``report`` is the fused graph's verification Report (when it got that far), its
    ``batch_invariance`` the fused graph's fp32 invariance record (every verification row alone vs in its batch).
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
        actual = run_cases(fused_session, cases)
        report = compare_cases(cases, expected, actual, target="fused model.onnx", **checks)
        record["verification"] = report.summary()
        record["report"] = report
        if not report.passed:
            record["reason"] = report.message()
            return record
        invariance = session_invariance(functools.partial(run_onnx, fused_session), cases, actual,
                                        padding_side=padding_side, token_outputs=checks["token_outputs"],
                                        tolerance=checks["atol"])
        record["batch_invariance"] = invariance
        if not invariance["passed"]:
            record["reason"] = (f"the fused graph verified but is not batch-invariant (max abs diff "
                                f"{invariance['max_abs_diff']:.2e}); kept unfused")
            return record
        ratios = speedups(create_session(path), fused_session, cases)
        record["speedup"] = min(ratios.values())
        record["speedups"] = ratios
        if min(ratios.values()) < 1.0:
            record["reason"] = (
                f"the fused graph verified but was slower here ({record['speedup']:.2f}x on one shape); kept unfused"
            )
            return record
        del fused_session
        fused_path.replace(path)
        record["accepted"] = True
        return record
    finally:
        fused_path.unlink(missing_ok=True)
