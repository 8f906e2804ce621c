"""Side-by-side throughput and latency: onnxruntime variants, length bucketing vs arrival order, PyTorch eager.

Every engine gets the same texts, the same tokenization and the same batches, so the ratios compare the
model runs and the batching, not the inputs. Nothing here names torch: the PyTorch side of a comparison
(``headreg bench --compare-torch``) lives in :mod:`headreg.export.torch_bench` and plugs in as a ``runner``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .batching import pad_batch
from .predictor import Predictor

# A paragraph long enough to fill 512 tokens; synthetic rows are truncated to --seq-len.
_FILLER = (
    "The committee met on a grey Tuesday morning to review the quarterly figures, and although the "
    "numbers were better than expected, several members worried that the improvement came from one-off "
    "sales rather than lasting demand. After a long discussion about pricing, staffing and the new "
    "warehouse in Rotterdam, they agreed to postpone the decision until the auditors had finished. "
)


@dataclass
class BenchResult:
    """One engine's timings over the same corpus."""

    engine: str
    rows: int
    tokens: int  # real (unpadded) tokens per pass
    padded_tokens: int  # tokens actually computed per pass, padding included
    seconds: list[float] = field(default_factory=list)  # wall time per full pass (tokenize + batches)
    latencies: list[float] = field(default_factory=list)  # seconds per batch (pad + run + postprocess)

    @property
    def throughput(self) -> float:
        """Rows per second, median pass."""
        return self.rows / float(np.median(self.seconds))

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "rows": self.rows,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "passes": len(self.seconds),
            "latency_ms": {"p50": self.percentile(50), "p90": self.percentile(90), "p99": self.percentile(99)},
            "rows_per_s": self.throughput,
        }


def synthetic_texts(rows: int) -> list[str]:
    """``rows`` distinct long texts; a Predictor with ``max_length=seq_len`` cuts each to exactly seq_len tokens."""
    return [f"Report {i}: " + _FILLER * 4 for i in range(rows)]


Runner = Callable[[dict[str, np.ndarray]], Any]


@dataclass
class Engine:
    """One contender: a Predictor's session (``runner=None``) or another model on the Predictor's feeds."""

    name: str
    predictor: Predictor
    bucket: bool = True  # length-bucketed batches; False = arrival-order chunks of batch_size (the baseline)
    runner: Runner | None = None


def measure(
    engines: Sequence[Engine], texts: Sequence[Any], *, batch_size: int, passes: int, warmup: int = 1,
    on_pass: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time full passes over ``texts`` (tokenize, batch, run, postprocess) for every engine.

    Passes are interleaved engine by engine, so a noisy neighbour slows every engine alike.
    ``on_pass(description)`` is called after each engine's pass ((warmup + passes) x engines calls).
    """
    results = []
    for engine in engines:
        lengths = [len(encoding) for encoding in engine.predictor.encode(texts)]
        plan = engine.predictor.plan(lengths, batch_size=batch_size, bucket=engine.bucket)
        results.append(
            BenchResult(
                engine=engine.name,
                rows=len(texts),
                tokens=sum(lengths),
                padded_tokens=sum(len(batch) * max(lengths[i] for i in batch) for batch in plan),
            )
        )
    for attempt in range(warmup + passes):
        for engine, result in zip(engines, results):
            seconds, latencies = _one_pass(engine, texts, batch_size)
            if on_pass is not None:
                on_pass(f"{'warm-up' if attempt < warmup else f'pass {attempt - warmup + 1}/{passes}'} {engine.name}")
            if attempt >= warmup:
                result.seconds.append(seconds)
                result.latencies.extend(latencies)
    return results


def _one_pass(engine: Engine, texts: Sequence[Any], batch_size: int) -> tuple[float, list[float]]:
    predictor = engine.predictor
    start = time.perf_counter()
    encodings = predictor.encode(texts)
    latencies = []
    tick = time.perf_counter()
    if engine.runner is None:
        for _, outputs, context in predictor.batches(texts, batch_size=batch_size, bucket=engine.bucket, encodings=encodings):
            predictor.postprocess(outputs, context)
            now = time.perf_counter()
            latencies.append(now - tick)
            tick = now
    else:
        lengths = [len(encoding) for encoding in encodings]
        for indices in predictor.plan(lengths, batch_size=batch_size, bucket=engine.bucket):
            feed = pad_batch([encodings[i] for i in indices], predictor.input_names, predictor.pad_id, predictor.padding_side)
            engine.runner(feed)
            now = time.perf_counter()
            latencies.append(now - tick)
            tick = now
    return time.perf_counter() - start, latencies


def source_model_dir(predictor: Predictor) -> str | None:
    """Where the manifest says the exported PyTorch model was saved, if it still exists."""
    source = predictor.manifest.get("source") or {}
    path = source.get("path") if isinstance(source, dict) else None
    return path if path and Path(path).is_dir() else None
