"""headreg's runtime against PyTorch, side by side, on this machine: ``python -m benchmarks.run [--quick]``.

One run measures, in one process and interleaved (A, B, C, A, B, C, ...) so a noisy neighbour slows every
engine alike:

- the machine's fp32 matmul GFLOP/s (2048 x 2048, PyTorch/MKL, the same thread count);
- every model's matmul FLOPs from its config (``benchmarks/flops.py``) and so its compute floor;
- engines: PyTorch (``sdpa`` and ``eager`` attention in fp32, ``inference_mode``, and, where the CPU has native
  bf16, ``torch.autocast("cpu", dtype=torch.bfloat16)``; the fastest one per shape is the baseline, named in
  the output), and every headreg variant of the bundle: fp32 (onnxruntime; also the onnxscript-fused graph),
  int8 (onnxruntime), bf16 (OpenVINO, padded to the variant's token multiple as the Predictor pads), plus
  OpenVINO fp32 for reference (not a variant); the bundle's default variant on this machine is marked;
- batch sizes 1, 8, 32 x lengths 16, 128, 512 (BERT-base: fewer, said in the output);
- the mixed-length real-text corpus (``benchmarks/corpus.py``): arrival-order batches against headreg's
  length-bucketed batches, PyTorch included, each variant run explicitly (``Predictor(bundle, variant=...)``),
  plus every variant's decision agreement and score drift against PyTorch fp32.

Writes a table to stdout, ``benchmark.json`` and ``benchmark.png`` (throughput vs batch size per engine, the
compute floor drawn) to ``--out`` (default ``benchmarks/results/``, git-ignored). Bundles are exported once
with ``headreg.export.export_onnx`` into ``--out``/bundles and reused (``--rebuild`` exports again).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .corpus import mixed_corpus
from .flops import batch_flops, flops_per_token, sequence_flops

ROOT = Path(__file__).resolve().parent
ENGINES = ("pytorch-sdpa", "pytorch-eager", "pytorch-bf16", "ort-fp32", "ort-fp32-fused", "ort-int8", "ov-bf16", "ov-fp32")
LABELS = {
    "pytorch": "PyTorch (fastest configuration)",
    "pytorch-sdpa": "PyTorch fp32 sdpa",
    "pytorch-eager": "PyTorch fp32 eager",
    "pytorch-bf16": "PyTorch bf16 autocast (sdpa)",
    "ort-fp32": "headreg fp32 (onnxruntime)",
    "ort-fp32-fused": "headreg fp32 + onnxscript fusions",
    "ort-int8": "headreg int8 (onnxruntime)",
    "ov-bf16": "headreg bf16 (OpenVINO)",
    "ov-fp32": "OpenVINO fp32 (reference, not a variant)",
}
# engine -> the bundle variant it runs (the default variant is marked in the output)
VARIANT_OF = {"ort-fp32": "fp32", "ort-int8": "int8", "ov-bf16": "bf16"}
VARIANT_LABEL = {variant: engine for engine, variant in VARIANT_OF.items()}


def headreg_engines(names) -> list[str]:
    return [name for name in names if not name.startswith("pytorch")]
GAP_S = 0.005  # idle between calls: lets the previous engine's spinning threads park before the next one starts
# PyTorch's OpenMP threads busy-wait by default. On a quiet machine that is PyTorch's faster setting (MiniLM
# 1x16: 6.4-8.3 ms default vs 13-16.5 ms PASSIVE, 1x128: 26 vs 35-53 ms, load < 1.2), so the benchmark leaves
# it alone. On a machine shared with other processes a descheduled thread then stalls every parallel region
# (load 4.8: 1x16 978 ms default vs 11 ms PASSIVE): there, --omp-wait-policy PASSIVE gives PyTorch its better
# setting. It must be set before torch is imported, so main() sets it first.
DEFAULT_OMP_WAIT_POLICY = "default"


# --- models --------------------------------------------------------------------------------------------------


def _minilm():
    from transformers import AutoModel

    from headreg.model import quiet_transformers
    from headreg.testing import minilm_path

    with quiet_transformers():
        return AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa")


def _bert_base():
    from transformers import AutoModel, BertConfig

    from headreg.model import quiet_transformers

    with quiet_transformers():
        return AutoModel.from_config(BertConfig(), attn_implementation="sdpa")  # 110M, randomly initialised


def _tiny():
    from headreg.testing import tiny_backbone

    return tiny_backbone("bert", attn_implementation="sdpa")


# name: (description, backbone factory, shapes (batch, length), shapes in --quick, corpus too)
MODELS: dict[str, tuple[str, Callable[[], Any], list[tuple[int, int]], list[tuple[int, int]], bool]] = {
    "minilm": (
        "all-MiniLM-L6-v2 (real weights, 22.7M parameters)",
        _minilm,
        [(b, n) for n in (16, 128, 512) for b in (1, 8, 32)],
        [(1, 16), (1, 128), (8, 128), (32, 128)],
        True,
    ),
    "bert-base": (
        "BERT-base size, random init (110M parameters); to keep the run short: 32x128, 8x512, 32x512 and the "
        "corpus skipped, at least 3 repetitions",
        _bert_base,
        [(1, 16), (8, 16), (32, 16), (1, 128), (8, 128), (1, 512)],
        [(1, 16), (1, 128), (8, 128)],
        False,
    ),
    "tiny": ("tiny random BERT (tests only)", _tiny, [(1, 16), (4, 32)], [(1, 16), (4, 32)], True),
}


def build_model(name: str):
    import torch

    from headreg import attach_head

    torch.manual_seed(0)  # the same head (and random backbone) every run, so a cached bundle stays valid
    backbone = MODELS[name][1]().eval()
    return attach_head(backbone, "seq_cls", num_labels=2, id2label={0: "negative", 1: "positive"}).eval()


def build_bundle(name: str, model: Any, out: Path, rebuild: bool) -> Path:
    """Export (or reuse) ``model``'s bundle with its int8 (and, where verifiable, bf16) variant; fuse a copy of its
    fp32 graph."""
    from headreg.export import export_onnx
    from headreg.export.optimize import fuse
    from headreg.testing import minilm_path

    from headreg.export.bf16 import bf16_unavailable

    bundle = out / "bundles" / name
    fused = bundle.parent / f"{name}.fused.onnx"
    bf16 = bf16_unavailable() is None  # the bf16 variant wherever this machine can verify it
    stale = not (bundle / "headreg.json").is_file() or not (bundle / "model.int8.onnx").is_file()
    if not stale and bf16:
        stale = "bf16" not in (json.loads((bundle / "headreg.json").read_text()).get("variants") or {})
    if rebuild or stale:
        rebuild = True  # a fused graph of an older export must not be reused
        started = time.perf_counter()
        # int8 acceptance is measured by this benchmark on real text (reported), so the export does not gate it
        export_onnx(model, bundle, tokenizer=str(minilm_path()), quantize="int8", int8_min_agreement=0.0, bf16=bf16,
                    overwrite=True)
        print(f"  exported {bundle} in {time.perf_counter() - started:.0f}s", flush=True)
    if rebuild or not fused.is_file():
        fuse(bundle / "model.onnx", fused)
    return bundle


# --- measuring -----------------------------------------------------------------------------------------------


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


def rescale(report: dict[str, Any], gflops: float) -> None:
    """Recompute floors and % of floor with the run's best matmul rate."""
    for model in report["models"].values():
        rows = list(model["shapes"]) + ([model["corpus"]] if model.get("corpus") else [])
        for row in rows:
            row["floor_ms"] = 1e3 * row.get("gflop_useful", row.get("gflop", 0.0)) / gflops
            for result in row["engines"].values():
                result["pct_of_floor"] = 100.0 * row["floor_ms"] / result["p50_ms"]


def torch_runner(model: Any, bf16: bool = False) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import torch

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()

    return run


def predictor_runner(predictor: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A variant's backend on a ready feed, padded to the variant's token multiple as the Predictor pads."""
    multiple = predictor.pad_to_multiple_of

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        width = feed["input_ids"].shape[1]
        extra = -width % multiple
        if extra:
            feed = {k: np.pad(v, ((0, 0), (0, extra)), constant_values=predictor.pad_id if k == "input_ids" else 0)
                    for k, v in feed.items()}
        return predictor.backend.run(feed, ["logits"])["logits"]

    return run


def ort_runner(session: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    names = [i.name for i in session.get_inputs()]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], {k: feed[k] for k in names})[0]

    return run


def make_engines(model: Any, bundle: Path, threads: int) -> dict[str, Callable]:
    """Every contender on this machine: PyTorch's configurations and every variant the bundle can run here."""
    from headreg.export.bf16 import bf16_unavailable
    from headreg.runtime.variants import cpu_flags
    from headreg.runtime import Predictor
    from headreg.runtime.backends import OpenVINOBackend, bf16_cpu, openvino_version
    from headreg.runtime.session import create_session

    eager = copy.deepcopy(model)
    eager.backbone.set_attn_implementation("eager")
    model.backbone.set_attn_implementation("sdpa")
    fused = bundle.parent / f"{bundle.name}.fused.onnx"
    engines = {"pytorch-sdpa": torch_runner(model), "pytorch-eager": torch_runner(eager)}
    if bf16_cpu(cpu_flags()):
        engines["pytorch-bf16"] = torch_runner(model, bf16=True)
    engines["ort-fp32"] = predictor_runner(Predictor(bundle, variant="fp32", threads=threads))
    engines["ort-fp32-fused"] = ort_runner(create_session(fused, threads=threads))
    engines["ort-int8"] = predictor_runner(Predictor(bundle, variant="int8", threads=threads))
    variants = json.loads((bundle / "headreg.json").read_text()).get("variants") or {}
    if "bf16" in variants and bf16_unavailable() is None:
        engines["ov-bf16"] = predictor_runner(Predictor(bundle, variant="bf16", threads=threads))
    if openvino_version() is not None:
        backend = OpenVINOBackend(bundle / "model.onnx", threads=threads, precision="fp32")
        engines["ov-fp32"] = lambda feed: backend.run(feed, ["logits"])["logits"]
    return engines


def default_variant(bundle: Path) -> tuple[str, str]:
    """(variant, why): what ``Predictor(bundle)`` serves on this machine."""
    from headreg.runtime import Predictor

    predictor = Predictor(bundle, threads=1)
    return predictor.variant, getattr(predictor, "variant_reason", "the manifest's default")


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
    for name, engine in (("int8", "ort-int8"), ("bf16", "ov-bf16")):
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
        order: [(idx, pad_batch([encodings[i] for i in idx], fp32.input_names, fp32.pad_id, fp32.padding_side)) for idx in plan]
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


# --- reporting -----------------------------------------------------------------------------------------------


def print_shape(row: dict[str, Any]) -> None:
    print(f"  {row['batch']:>3} x {row['length']:<4} floor {row['floor_ms']:8.2f} ms   (fastest PyTorch: "
          f"{row['pytorch_best']}; load average {row.get('load_average', float('nan')):.1f})")
    for name, r in row["engines"].items():
        print(
            f"      {name:<16} p50 {r['p50_ms']:9.2f}  p90 {r['p90_ms']:9.2f} ms  {r['throughput_rows_s']:8.1f} seq/s"
            f"  x{r['ratio_vs_pytorch']:5.2f} vs PyTorch  {r['pct_of_floor']:5.1f}% of floor"
        )
    sys.stdout.flush()


def summary_table(report: dict[str, Any]) -> str:
    """One line per shape: ratio to the faster PyTorch and % of floor for each headreg engine."""
    lines = []
    for name, model in report["models"].items():
        lines.append(f"\n{name}: {model['description']}; {model['mflop_per_token_128']:.1f} MFLOP/token at 128")
        if model.get("default_variant"):
            lines.append(f"default variant here: {model['default_variant']} ({model.get('default_reason', '')})")
        engines = headreg_engines(model["shapes"][0]["engines"])
        head = f"| {'batch x len':<11} | {'floor ms':>9} | {'fastest PyTorch p50':>26} |"
        for engine in engines:
            head += f" {engine + ' p50 (ratio, %floor)':>34} |"
        lines += [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
        for row in model["shapes"]:
            best = row["engines"][row["pytorch_best"]]
            line = f"| {row['batch']:>3} x {row['length']:<5} | {row['floor_ms']:9.2f} | {best['p50_ms']:8.2f} ms {'(' + row['pytorch_best'][8:] + ')':<12} |"
            for engine in engines:
                r = row["engines"][engine]
                line += f" {r['p50_ms']:10.2f} ms (x{r['ratio_vs_pytorch']:4.2f}, {r['pct_of_floor']:5.1f}%) |"
            lines.append(line)
        corpus = model.get("corpus")
        if corpus:
            lines.append(
                f"\nmixed-length corpus: {corpus['rows']} texts, {corpus['tokens']} tokens "
                f"(min/median/max {corpus['length_min_median_max']}), batch {corpus['batch_size']}; "
                f"padded tokens arrival {corpus['padded_tokens']['arrival']} vs bucketed {corpus['padded_tokens']['bucketed']}"
            )
            for engine, r in corpus["engines"].items():
                lines.append(
                    f"  {engine:<32} p50 {r['p50_ms']:9.1f} ms  {r['throughput_rows_s']:7.1f} texts/s"
                    f"  x{r['ratio_vs_pytorch']:5.2f} vs PyTorch arrival  {r['pct_of_floor']:5.1f}% of floor"
                )
            lines.append(
                f"  bucketing vs arrival order: x{corpus['bucketing_speedup_ort_fp32']:.2f} (headreg fp32), "
                f"x{corpus['bucketing_speedup_pytorch']:.2f} (PyTorch)"
            )
            for engine, a in corpus["agreement_vs_pytorch"].items():
                lines.append(
                    f"  {engine} vs PyTorch: {a['identical_decisions_pct']:.2f}% identical decisions, "
                    f"score drift max {a['score_drift_max']:.4f} mean {a['score_drift_mean']:.5f}"
                )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables (what docs/performance.md shows)."""
    gflops = report["matmul_gflops"]
    out = [
        f"{report['machine']['cpu']}, {report['threads']} threads, ISA {' '.join(report['machine']['isa'])}; "
        f"fp32 matmul {gflops['best']:.0f} GFLOP/s (best of the run; median {gflops['median']:.0f}); "
        f"load average {report['load_average_before'][0]:.1f} before, {report['load_average_after'][0]:.1f} after; "
        f"PyTorch OMP_WAIT_POLICY={report['omp_wait_policy']}. Cells: p50 ms / p90 ms, (ratio to the fastest PyTorch "
        "configuration of that shape, named in its column; % of the fp32 compute floor). int8 and bf16 can pass 100% "
        "of the fp32 floor.",
    ]
    for name, model in report["models"].items():
        out += ["", f"**{name}**: {model['description']}; {model['mflop_per_token_128']:.1f} MFLOP/token at 128", ""]
        if model.get("default_variant"):
            out += [f"Default variant on this machine: **{model['default_variant']}** ({model.get('default_reason', '')}).", ""]
        engines = headreg_engines(model["shapes"][0]["engines"])
        labels = [LABELS[e] + (" **(default)**" if VARIANT_OF.get(e) == model.get("default_variant") else "") for e in engines]
        out.append("| batch x length | floor ms | fastest PyTorch p50 / p90 | " + " | ".join(labels) + " |")
        out.append("|---" * (3 + len(engines)) + "|")
        for row in model["shapes"]:
            best = row["engines"][row["pytorch_best"]]
            cells = [
                f"{row['batch']} x {row['length']}",
                f"{row['floor_ms']:.1f}",
                f"{best['p50_ms']:.1f} / {best['p90_ms']:.1f} ({row['pytorch_best'][8:]})",
            ]
            for engine in engines:
                r = row["engines"][engine]
                cells.append(f"{r['p50_ms']:.1f} / {r['p90_ms']:.1f} (x{r['ratio_vs_pytorch']:.2f}, {r['pct_of_floor']:.0f}%)")
            out.append("| " + " | ".join(cells) + " |")
        corpus = model.get("corpus")
        if corpus:
            out += [
                "",
                f"Mixed-length corpus, {corpus['rows']} texts, {corpus['tokens']} tokens (min/median/max "
                f"{'/'.join(map(str, corpus['length_min_median_max']))}), batch {corpus['batch_size']}; padded tokens "
                f"computed: arrival order {corpus['padded_tokens']['arrival']}, bucketed {corpus['padded_tokens']['bucketed']}.",
                "",
                "| engine | pass p50 / p90 ms | texts/s | vs PyTorch arrival order | % of floor |",
                "|---|---|---|---|---|",
            ]
            for engine, r in corpus["engines"].items():
                out.append(
                    f"| {engine} | {r['p50_ms']:.0f} / {r['p90_ms']:.0f} | {r['throughput_rows_s']:.1f} | "
                    f"x{r['ratio_vs_pytorch']:.2f} | {r['pct_of_floor']:.0f}% |"
                )
            out.append("")
            out.append(
                f"Bucketing vs arrival order: x{corpus['bucketing_speedup_ort_fp32']:.2f} (headreg fp32), "
                f"x{corpus['bucketing_speedup_pytorch']:.2f} (PyTorch)."
            )
            for engine, a in corpus["agreement_vs_pytorch"].items():
                out.append(
                    f"{engine} vs PyTorch: {a['identical_decisions_pct']:.2f}% identical decisions, softmax score drift "
                    f"max {a['score_drift_max']:.4f}, mean {a['score_drift_mean']:.5f}."
                )
    return "\n".join(out) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"].items())
    lengths = sorted({row["length"] for _, m in models for row in m["shapes"]})
    fig, axes = plt.subplots(len(models), len(lengths), figsize=(4.2 * len(lengths), 3.4 * len(models)), squeeze=False)
    styles = {"pytorch": ("tab:gray", "o"), "ort-fp32": ("tab:blue", "s"), "ort-fp32-fused": ("tab:cyan", "^"),
              "ort-int8": ("tab:red", "D"), "ov-bf16": ("tab:green", "v"), "ov-fp32": ("tab:olive", "x")}
    for (name, model), row_axes in zip(models, axes):
        for length, ax in zip(lengths, row_axes):
            rows = [r for r in model["shapes"] if r["length"] == length]
            if not rows:
                ax.set_visible(False)
                continue
            batches = [r["batch"] for r in rows]
            for engine, (color, marker) in styles.items():
                if engine != "pytorch" and engine not in rows[0]["engines"]:
                    continue
                key = (lambda r: r["pytorch_best"]) if engine == "pytorch" else (lambda r, e=engine: e)
                ax.plot(batches, [r["engines"][key(r)]["throughput_rows_s"] for r in rows], marker=marker, color=color, label=LABELS[engine])
            ax.plot(batches, [r["batch"] / r["floor_ms"] * 1e3 for r in rows], "k_--", markersize=16, label="fp32 compute floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_title(f"{name}, length {length}", fontsize=10)
            ax.set_xlabel("batch size")
            ax.set_ylabel("sequences / s")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    machine = report["machine"]
    fig.suptitle(
        f"{machine['cpu']} - {report['threads']} threads - matmul {report['matmul_gflops']['best']:.0f} GFLOP/s", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    from .machine import cpu_name, isa

    import onnxruntime
    import torch
    import transformers

    from headreg.runtime.backends import openvino_version

    return {
        "cpu": cpu_name(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(isa()),
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
                     "openvino": openvino_version()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM only, 4 shapes, short budgets (about 2 minutes)")
    parser.add_argument("--models", default=None, help="comma-separated: minilm, bert-base (default both; --quick: minilm)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch and onnxruntime intra-op threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--budget", type=float, default=None, help="seconds of measuring per shape (default 20, --quick 5)")
    parser.add_argument("--min-reps", type=int, default=None)
    parser.add_argument("--max-reps", type=int, default=200)
    parser.add_argument("--corpus-rows", type=int, default=None, help="texts in the mixed-length corpus (default 256, --quick 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="corpus batch size (default 32)")
    parser.add_argument("--rebuild", action="store_true", help="export the bundles again")
    parser.add_argument(
        "--omp-wait-policy", choices=("PASSIVE", "ACTIVE", "default"), default=None,
        help=f"PyTorch's OMP_WAIT_POLICY (default: $OMP_WAIT_POLICY, else {DEFAULT_OMP_WAIT_POLICY}; see run.py)",
    )
    args = parser.parse_args(argv)
    if "torch" in sys.modules:
        print("note: torch was imported before benchmarks.run; OMP_WAIT_POLICY cannot change any more")
    else:
        policy = args.omp_wait_policy or os.environ.get("OMP_WAIT_POLICY", DEFAULT_OMP_WAIT_POLICY)
        if policy == "default":
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = policy
    args.budget = args.budget or (5.0 if args.quick else 20.0)
    args.min_reps = args.min_reps or (3 if args.quick else 5)
    args.corpus_rows = args.corpus_rows or (128 if args.quick else 256)
    names = (args.models or ("minilm" if args.quick else "minilm,bert-base")).split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    set_threads(args.threads)
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "machine": machine_info(),
        "load_average_before": load_before,
        "models": {},
    }
    if load_before[0] > args.threads * 0.5:
        print(f"note: load average {load_before[0]:.1f} before starting: other processes compete, timings are noisy"
              + ("; consider --omp-wait-policy PASSIVE for PyTorch" if report["omp_wait_policy"] == "default" else ""))
    peak = MatmulPeak(args.threads)
    peak.measure(seconds=2.0)
    print(f"{report['machine']['cpu']} ({report['machine']['cores_available']} cores, {' '.join(report['machine']['isa'])}); "
          f"{args.threads} threads; fp32 matmul {peak.best:.0f} GFLOP/s so far (re-measured after every shape)")

    for name in names:
        description, _, shapes, quick_shapes, with_corpus = MODELS[name]
        print(f"\n== {name}: {description}", flush=True)
        model = build_model(name)
        bundle = build_bundle(name, model, args.out, args.rebuild)
        engines = make_engines(model, bundle, args.threads)
        variant, reason = default_variant(bundle)
        print(f"  engines: {', '.join(engines)}; Predictor(bundle) serves {variant} here ({reason})", flush=True)
        config = model.backbone.config
        max_len = int(getattr(config, "max_position_embeddings", 512))
        chosen = [(b, n) for b, n in (quick_shapes if args.quick else shapes) if n <= max_len]
        entry: dict[str, Any] = {
            "description": description,
            "parameters": sum(p.numel() for p in model.parameters()),
            "mflop_per_token_128": flops_per_token(config, 128) / 1e6,
            "bundle": str(bundle),
            "default_variant": variant,
            "default_reason": reason,
        }
        min_reps = args.min_reps
        if name == "bert-base":
            args.min_reps = 3
        entry["shapes"] = bench_shapes(model, engines, chosen, peak, args)
        wins = [row["pytorch_best"] for row in entry["shapes"]]
        pytorch = max(set(wins), key=wins.count)  # the attention implementation that won most shapes
        if with_corpus:
            entry["corpus"] = bench_corpus(model, bundle, engines, peak, args, pytorch)
        args.min_reps = min_reps
        report["models"][name] = entry
        del engines, model

    # The floor uses the best matmul rate seen during the whole run: on a shared machine any single
    # measurement may land in a busy moment. Ratios and % of floor are recomputed with it.
    report["matmul_gflops"] = {**peak.summary(), "n": 2048}
    rescale(report, peak.best)

    report["load_average_after"] = os.getloadavg()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    table = summary_table(report)
    print("\n" + table)
    print(f"\n{report['machine']['cpu']}, ISA {' '.join(report['machine']['isa'])}, {args.threads} threads; "
          f"load average before {load_before[0]:.1f}, after {report['load_average_after'][0]:.1f}")
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=1))
    (args.out / "benchmark.md").write_text(markdown(report))
    chart(report, args.out / "benchmark.png")
    print(f"wrote {args.out / 'benchmark.json'}, benchmark.md and benchmark.png")
    return report


if __name__ == "__main__":
    main()
