"""Side-by-side throughput and latency: onnxruntime variants, length bucketing vs arrival order, PyTorch eager.

Every contender runs what ``Predictor.predict`` runs — the runtime engine over the same texts, tokenization and
batches — so the ratios compare the model runs and the batching, not the inputs. Nothing here names torch: the
PyTorch side of a comparison (``headreg bench --compare-torch``) lives in :mod:`headreg.export.torch_bench` and
plugs into the engine as a backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

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


@dataclass
class Contender:
    """One contender: a Predictor's engine, over another backend when ``backend`` is given (PyTorch, for
    ``--compare-torch``). ``bucket=False`` plans batches in arrival order (the baseline bucketing is compared with)."""

    name: str
    predictor: Predictor
    bucket: bool = True
    backend: Any = None

    @property
    def engine(self) -> Any:
        engine = self.predictor.engine
        return engine if self.backend is None else engine.with_backend(self.backend)


def measure(
    contenders: Sequence[Contender], texts: Sequence[Any], *, batch_size: int, passes: int, warmup: int = 1,
    on_pass: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time full passes over ``texts`` for every contender: exactly what ``Predictor.predict`` runs (prepare, then
    the engine's plan, run and postprocess), with the latency of each batch.

    Passes are interleaved contender by contender, so a noisy neighbour slows every one alike.
    ``on_pass(description)`` is called after each contender's pass ((warmup + passes) x contenders calls).
    """
    results = []
    for contender in contenders:
        lengths = [len(encoding) for encoding in contender.predictor.encode(texts)]
        plan = contender.engine.plan(lengths, batch_size=batch_size, bucket=contender.bucket)
        results.append(
            BenchResult(
                engine=contender.name,
                rows=len(texts),
                tokens=sum(lengths),
                padded_tokens=sum(len(batch) * max(lengths[i] for i in batch) for batch in plan),
            )
        )
    for attempt in range(warmup + passes):
        for contender, result in zip(contenders, results):
            seconds, latencies = _one_pass(contender, texts, batch_size)
            if on_pass is not None:
                on_pass(f"{'warm-up' if attempt < warmup else f'pass {attempt - warmup + 1}/{passes}'} {contender.name}")
            if attempt >= warmup:
                result.seconds.append(seconds)
                result.latencies.extend(latencies)
    return results


def _one_pass(contender: Contender, texts: Sequence[Any], batch_size: int) -> tuple[float, list[float]]:
    engine = contender.engine
    latencies: list[float] = []
    start = time.perf_counter()
    job = contender.predictor.prepare(texts)
    (answer,) = engine.run([job], batch_size=batch_size, bucket=contender.bucket,
                           on_batch=lambda rows, seconds: latencies.append(seconds))
    if isinstance(answer, BaseException):
        raise answer
    return time.perf_counter() - start, latencies


def source_model_dir(predictor: Predictor) -> str | None:
    """Where the manifest says the exported PyTorch model was saved, if it still exists."""
    source = predictor.manifest.get("source") or {}
    path = source.get("path") if isinstance(source, dict) else None
    return path if path and Path(path).is_dir() else None
