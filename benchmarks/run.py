"""headreg's runtime against PyTorch, side by side, on this machine: ``python -m benchmarks.run [--quick]``.

One run measures, in one process and interleaved (A, B, C, A, B, C, ...) so a noisy neighbour slows every
engine alike:

- the machine's fp32 matmul GFLOP/s (2048 x 2048, PyTorch/MKL, the same thread count);
- every model's matmul FLOPs from its config (``benchmarks/flops.py``) and so its compute floor;
- engines: PyTorch (``sdpa`` and ``eager`` attention in fp32, ``inference_mode``, and, where the CPU has native
  bf16, ``torch.autocast("cpu", dtype=torch.bfloat16)``; the fastest one per shape is the baseline, named in
  the output), and every headreg variant of the bundle: fp32 (onnxruntime; also the onnxscript-fused graph),
  int8 (onnxruntime), bf16 and int8-ov (OpenVINO; NNCF int8 where the CPU has VNNI + bf16), each padded to the
  variant's token multiple as the Predictor pads, plus
  OpenVINO fp32 for reference (not a variant); the bundle's default variant on this machine is marked;
- batch sizes 1, 8, 32 x lengths 16, 128, 512 (BERT-base: fewer, said in the output);
- the mixed-length real-text corpus (``benchmarks/corpus.py``): arrival-order batches against headreg's
  length-bucketed batches, PyTorch included, each variant run explicitly (``Predictor(bundle, variant=...)``),
  plus every variant's decision agreement and score drift against PyTorch fp32.

Writes a table to stdout, ``benchmark.json`` and ``benchmark.png`` (throughput vs batch size per engine, the
compute floor drawn) to ``--out`` (default ``benchmarks/results/``, git-ignored). Bundles are exported once
with ``headreg.export.export_onnx`` into ``--out``/bundles and reused (``--rebuild`` exports again).
The pieces: ``engines.py`` (models, bundles, a runner per engine), ``timing.py`` (measuring), ``report.py`` (output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .engines import MODELS, build_bundle, build_model, default_variant, make_engines
from .flops import flops_per_token
from .report import chart, machine_info, markdown, rescale, summary_table
from .timing import MatmulPeak, bench_corpus, bench_shapes, set_threads

ROOT = Path(__file__).resolve().parent
# PyTorch's OpenMP threads busy-wait by default. On a quiet machine that is PyTorch's faster setting (MiniLM
# 1x16: 6.4-8.3 ms default vs 13-16.5 ms PASSIVE, 1x128: 26 vs 35-53 ms, load < 1.2), so the benchmark leaves
# it alone. On a machine shared with other processes a descheduled thread then stalls every parallel region
# (load 4.8: 1x16 978 ms default vs 11 ms PASSIVE): there, --omp-wait-policy PASSIVE gives PyTorch its better
# setting. It must be set before torch is imported, so main() sets it first.
DEFAULT_OMP_WAIT_POLICY = "default"


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
    parser.add_argument("--shapes", default=None,
                        help="batch x length shapes instead of each model's own, e.g. 1x128,32x128 (no corpus)")
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
        if args.shapes:
            shapes = quick_shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
            with_corpus = False
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
