"""onnxruntime sessions, created the same way by the exporter's verification and by the Predictor.

Every option here was measured side by side with ``python -m benchmarks.run`` and the scripts behind
docs/performance.md ("what we tried"); options that did not measurably help are left at onnxruntime's
defaults and listed there.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

# Spinning intra-op threads busy-wait for the next parallel section instead of sleeping. On a machine
# whose cores are shared (other processes, or a PyTorch/OpenMP pool in the same process) the spinning
# threads steal the cores the working threads need: MiniLM fp32 with 2 threads ran 1.03-1.57x faster with
# spinning off (1x16 .. 32x128, interleaved, load 3-5), int8 0.94-1.25x. HEADREG_ORT_SPINNING=1 turns it on
# again for a dedicated, otherwise idle machine, where spinning can shave latency off small batches.
SPINNING_ENV = "HEADREG_ORT_SPINNING"
# onnxruntime's CPU memory arena keeps every block it ever allocated; a server that sees batches of every shape
# keeps the high-water mark of all of them (a Predictor after short batches and windowed texts: +120 MB that
# malloc_trim cannot hand back, +146 MB with the arena off, all of it handed back). "0" returns each tensor to
# the allocator when the run ends: `headreg serve` sets it (--no-cpu-arena, its default, measured no slower at
# 32 clients: 11.0 vs 11.4 ms of CPU per request), library use keeps onnxruntime's default.
ARENA_ENV = "HEADREG_ORT_CPU_ARENA"
ARENA_DEFAULT = "1"


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    spinning = "1" if _flag(SPINNING_ENV, "0") else "0"
    options.enable_cpu_mem_arena = _flag(ARENA_ENV, ARENA_DEFAULT)
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options


def create_session(
    model_path: str | os.PathLike, threads: int | None = None, providers: Sequence[Any] | None = None
):
    """An InferenceSession with headreg's production settings (verification uses exactly these)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(model_path), sess_options=session_options(threads), providers=list(providers or ["CPUExecutionProvider"])
    )
