"""How ``benchmarks.run`` measures: the machine's matmul rate (the compute floor), engines called round-robin
(A, B, C, A, B, C, ...) so a noisy neighbour slows every engine alike, per-shape and whole-corpus passes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .corpus import mixed_corpus
from .engines import VARIANT_LABEL, predictor_runner
from .flops import batch_flops, sequence_flops
from .report import print_shape

GAP_S = 0.005  # idle between calls: lets the previous engine's spinning threads park before the next one starts


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _ort_matmul(threads: int, n: int) -> Callable[[], Any]:
    """A one-node ONNX MatMul in onnxruntime (MLAS, the kernels headreg's runtime uses)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from headreg.runtime.session import session_options

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
    feed = {"a": np.random.rand(n, n).astype(np.float32), "b": np.random.rand(n, n).astype(np.float32)}
    return lambda: session.run(None, feed)


def matmul_gflops(threads: int, n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """fp32 ``n x n`` matmul GFLOP/s on ``threads`` threads, PyTorch (MKL) and onnxruntime (MLAS) alternating.

    ``best`` is the faster library's best run: the machine's attainable fp32 matmul rate.
    """
    import torch

    set_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    calls = {"torch": lambda: a @ b, "onnxruntime": _ort_matmul(threads, n)}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times["torch"]) < 3:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    flop = 2 * n**3
    best = {name: flop / min(t) / 1e9 for name, t in times.items()}
    return {"best": max(best.values()), "by_library": best, "median": flop / float(np.median(times["torch"])) / 1e9, "n": n}


class MatmulPeak:
    """The machine's fp32 matmul GFLOP/s, measured again after every shape; the best is the floor's rate."""

    def __init__(self, threads: int):
        self.threads = threads
        self.samples: list[float] = []
        self.by_library: dict[str, float] = {}

    def measure(self, seconds: float = 0.5) -> float:
        result = matmul_gflops(self.threads, seconds=seconds)
        for name, rate in result["by_library"].items():
            self.by_library[name] = max(rate, self.by_library.get(name, 0.0))
        self.samples.append(result["best"])
        return self.samples[-1]

    @property
    def best(self) -> float:
        return max(self.samples)

    def summary(self) -> dict[str, Any]:
        return {"best": self.best, "median": float(np.median(self.samples)), "samples": len(self.samples),
                "best_by_library": self.by_library}


def random_feed(batch: int, length: int, input_names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1996, 29000, (batch, length), dtype=np.int64)  # ordinary WordPiece tokens
    ids[:, 0], ids[:, -1] = 101, 102
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in feed.items() if k in input_names}


def interleaved(calls: dict[str, Callable[[], Any]], budget_s: float, min_reps: int, max_reps: int,
                label: str | None = None) -> dict[str, list[float]]:
    """Seconds per call for each engine, engines called round-robin; repetitions fit ``budget_s``.

    ``label``: show a progress bar on stderr (on a terminal only) for this long phase.
    """
    from headreg.progress import CountProgress, status

    started = time.perf_counter()
    with status(f"{label}: warm-up", enabled=None if label else False):
        for call in calls.values():  # warm-up: lazy kernel setup, allocator growth, oneDNN primitive caches
            call()
    round_s = max(time.perf_counter() - started, 1e-6)
    reps = int(min(max_reps, max(min_reps, budget_s / round_s)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    with CountProgress(f"{label}: {len(calls)} engines x {reps} rounds", reps * len(calls),
                       enabled=None if label else False) as bar:
        for _ in range(reps):
            for name, call in calls.items():
                time.sleep(GAP_S)
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
                bar.advance()
    return times


def summarize(seconds: list[float], rows: int, floor_s: float) -> dict[str, Any]:
    p50, p90 = (float(np.percentile(seconds, q)) for q in (50, 90))
    return {
        "p50_ms": p50 * 1e3,
        "p90_ms": p90 * 1e3,
        "min_ms": min(seconds) * 1e3,
        "runs": len(seconds),
        "throughput_rows_s": rows / p50,
        "pct_of_floor": 100.0 * floor_s / p50,
    }


def with_ratios(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """Add ``ratio_vs_pytorch`` (PyTorch p50 / engine p50; > 1 is faster) against the fastest PyTorch."""
    torch_names = [n for n in results if n.startswith("pytorch")]
    best = min(torch_names, key=lambda n: results[n]["p50_ms"])
    for result in results.values():
        result["ratio_vs_pytorch"] = results[best]["p50_ms"] / result["p50_ms"]
    return best, results


def bench_shapes(model: Any, engines: dict[str, Callable], shapes, peak: MatmulPeak, args) -> list[dict[str, Any]]:
    input_names = ["input_ids", "attention_mask", "token_type_ids"]
    rows = []
    for batch, length in shapes:
        feed = random_feed(batch, length, input_names)
        flop = batch * sequence_flops(model.backbone.config, length)
        floor_s = flop / (peak.best * 1e9)
        times = interleaved({n: (lambda f=f: f(feed)) for n, f in engines.items()}, args.budget, args.min_reps, args.max_reps)
        best, results = with_ratios({n: summarize(t, batch, floor_s) for n, t in times.items()})
        rows.append({"batch": batch, "length": length, "gflop": flop / 1e9, "floor_ms": floor_s * 1e3,
                     "pytorch_best": best, "engines": results, "load_average": os.getloadavg()[0]})
        print_shape(rows[-1])
        peak.measure()
    return rows


def bench_corpus(model: Any, bundle: Path, engines: dict[str, Callable], peak: MatmulPeak, args, pytorch: str) -> dict[str, Any]:
    """Whole passes over the mixed-length corpus: arrival order vs length-bucketed, every variant named explicitly."""
    from headreg.runtime import Predictor
    from headreg.runtime.batching import pad_batch, plan_batches

    texts = mixed_corpus(args.corpus_rows)
    variants = {"fp32": Predictor(bundle, variant="fp32", threads=args.threads)}
    for name, engine in (("int8", "ort-int8"), ("bf16", "ov-bf16"), ("int8-ov", "ov-int8")):
        if engine in engines:
            variants[name] = Predictor(bundle, variant=name, threads=args.threads)
    default = Predictor(bundle, threads=args.threads)
    fp32 = variants["fp32"]
    encodings = fp32.encode(texts)
    lengths = [len(e) for e in encodings]
    plans = {
        "arrival": plan_batches(lengths, args.batch_size, None, sort=False),
        "bucketed": plan_batches(lengths, args.batch_size, fp32.max_batch_tokens, sort=True),
    }
    feeds = {
        order: [(idx, pad_batch([encodings[i] for i in idx], fp32.layout.input_names, fp32.layout.pad_id, fp32.layout.padding_side)) for idx in plan]
        for order, plan in plans.items()
    }
    padded = {order: sum(len(idx) * max(lengths[i] for i in idx) for idx in plan) for order, plan in plans.items()}

    def corpus_pass(run: Callable, order: str) -> Callable[[], np.ndarray]:
        def go() -> np.ndarray:
            logits = np.zeros((len(texts), 2), dtype=np.float32)
            for idx, feed in feeds[order]:
                logits[idx] = run(feed)
            return logits

        return go

    calls = {
        f"{pytorch} arrival": corpus_pass(engines[pytorch], "arrival"),
        f"{pytorch} bucketed": corpus_pass(engines[pytorch], "bucketed"),
    }
    if "pytorch-bf16" in engines and pytorch != "pytorch-bf16":
        calls["pytorch-bf16 bucketed"] = corpus_pass(engines["pytorch-bf16"], "bucketed")
    calls["ort-fp32 arrival"] = corpus_pass(predictor_runner(fp32), "arrival")
    for name, predictor in variants.items():
        calls[f"{VARIANT_LABEL[name]} bucketed"] = corpus_pass(predictor_runner(predictor), "bucketed")
    # end to end: tokenize + bucket + run + postprocess with the variant Predictor(bundle) serves here
    calls[f"Predictor.predict (end to end, default {default.variant})"] = lambda: default.predict(texts)
    useful = batch_flops(model.backbone.config, lengths)
    floor_s = useful / (peak.best * 1e9)
    times = interleaved(calls, args.budget * 2, max(3, args.min_reps // 2), args.max_reps, label="corpus")
    results = {name: summarize(t, len(texts), floor_s) for name, t in times.items()}
    base = results[f"{pytorch} arrival"]["p50_ms"]
    for result in results.values():
        result["ratio_vs_pytorch"] = base / result["p50_ms"]
    # fidelity against PyTorch fp32 (sdpa, bucketed), whichever PyTorch was fastest
    reference = corpus_pass(engines["pytorch-sdpa"], "bucketed")()
    agreement = {}
    for name in [f"{VARIANT_LABEL[v]} bucketed" for v in variants] + (
            ["pytorch-bf16 bucketed"] if "pytorch-bf16" in engines else []):
        run = calls.get(name) or corpus_pass(engines["pytorch-bf16"], "bucketed")
        agreement[name] = decision_agreement(reference, run())
    return {
        "rows": len(texts),
        "tokens": int(sum(lengths)),
        "length_min_median_max": [int(min(lengths)), int(np.median(lengths)), int(max(lengths))],
        "padded_tokens": padded,
        "batch_size": args.batch_size,
        "max_batch_tokens": fp32.max_batch_tokens,
        "gflop_useful": useful / 1e9,
        "floor_ms": floor_s * 1e3,
        "engines": results,
        "default_variant": default.variant,
        "bucketing_speedup_ort_fp32": results["ort-fp32 arrival"]["p50_ms"] / results["ort-fp32 bucketed"]["p50_ms"],
        "bucketing_speedup_pytorch": results[f"{pytorch} arrival"]["p50_ms"] / results[f"{pytorch} bucketed"]["p50_ms"],
        "agreement_vs_pytorch": agreement,
    }


def decision_agreement(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    drift = np.abs(softmax(reference) - softmax(logits))
    return {
        "identical_decisions_pct": 100.0 * float(np.mean(reference.argmax(-1) == logits.argmax(-1))),
        "score_drift_max": float(drift.max()),
        "score_drift_mean": float(drift.mean()),
        "logit_max_abs_diff": float(np.abs(reference - logits).max()),
    }
