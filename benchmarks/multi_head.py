"""Three heads in one bundle vs three single-head bundles vs one head, on the realistic corpus.

    python -m benchmarks.multi_head                   # real MiniLM, 256 texts, 5 interleaved rounds
    python -m benchmarks.multi_head --rows 128 --rounds 3 --exporter torchscript

One MiniLM model with three heads (seq_cls "sentiment", multi_label "topics", token_cls "entities") is exported
once as a multi-head bundle and, from the very same modules, as three single-head bundles. Latency: each round
times, in turn (interleaved), ``predict`` over the corpus with the multi-head bundle, with the first head's
single-head bundle ("one head"), and with the three single-head bundles one after the other ("three bundles");
the best round of each is reported, as ratios to one head. Memory: peak RSS of a fresh process that loads the
bundle(s) and predicts over the corpus once (separate processes, so the figures do not share allocations).
Memory is the median of ``--memory-runs`` processes per configuration (onnxruntime's arena moves one process's
peak by ~10 MB between runs). Targets: three heads in one bundle <= 1.15x one head's latency and <= 1.1x its memory.

Every configuration uses the fp32 variant, 1 onnxruntime thread, the Predictor's default batching. The CPU ISA
and the load average are printed: other processes on a shared machine slow every configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.corpus import mixed_corpus

TARGET_LATENCY, TARGET_MEMORY = 1.15, 1.10
HEADS = {
    "sentiment": ("seq_cls", {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}}),
    "topics": ("multi_label", {"num_labels": 4, "id2label": {0: "sport", 1: "tech", 2: "food", 3: "news"}}),
    "entities": ("token_cls", {"num_labels": 5, "id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}}),
}


def isa() -> list[str]:
    from .machine import isa as cpu_isa

    return cpu_isa()


def build(out: Path, exporter: str, max_length: int) -> tuple[Path, list[Path]]:
    """The multi-head bundle and one single-head bundle per head, all from the same modules."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from headreg import HeadedModel, attach_heads
    from headreg.export import ExportOptions, export_onnx
    from headreg.testing import minilm_path

    torch.manual_seed(0)
    path = minilm_path()
    model = attach_heads(AutoModel.from_pretrained(path), HEADS).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    options = ExportOptions(max_length=max_length, exporter=exporter)
    multi = export_onnx(model, out / "multi", tokenizer, options, overwrite=True).path
    singles = []
    for member in model.members():
        pooler = model.poolers[model.head_pooling[member.name]]
        single = HeadedModel(model.backbone, member.head, pooler, member.spec).eval()
        singles.append(export_onnx(single, out / member.name, tokenizer, options, overwrite=True).path)
    return multi, singles


def predictors(paths: list[Path]) -> list:
    from headreg.runtime import Predictor

    return [Predictor(path, threads=1, variant="fp32") for path in paths]


def peak_rss(paths: list[Path], rows: int) -> float:
    """Peak RSS (MB) of a fresh process that loads these bundles and predicts over the corpus with each."""
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak (torch + the model here) into a child's
    # ru_maxrss across exec, while VmHWM belongs to the new process image alone.
    code = (
        "import re, sys\n"
        "from benchmarks.multi_head import predictors\n"
        "from benchmarks.corpus import mixed_corpus\n"
        "texts = mixed_corpus(int(sys.argv[1]), seed=0)\n"
        "for p in predictors(sys.argv[2:]): p.predict(texts)\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) / 1024)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code, str(rows), *map(str, paths)], capture_output=True, text=True,
                         env=env, timeout=600, check=True)
    return float(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="texts of the realistic corpus")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best is reported)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--out", type=Path, default=None, help="keep the bundles here [default: a temp dir]")
    parser.add_argument("--reuse", action="store_true", help="reuse the bundles already in --out")
    parser.add_argument("--memory-runs", type=int, default=3, help="processes per configuration (median reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="headreg-multi-head-"))
    if args.reuse and (out / "multi" / "headreg.json").is_file():
        multi_path, single_paths = out / "multi", [out / name for name in HEADS]
    else:
        multi_path, single_paths = build(out, args.exporter, args.max_length)
    texts = mixed_corpus(args.rows, seed=0)
    multi, = predictors([multi_path])
    singles = predictors(single_paths)
    configs = {
        "three heads, one bundle": lambda: multi.predict(texts),
        "one head (sentiment)": lambda: singles[0].predict(texts),
        "three single-head bundles": lambda: [p.predict(texts) for p in singles],
        "one head of the multi-head bundle (heads=)": lambda: multi.predict(texts, heads=["sentiment"]),
    }
    for run in configs.values():  # warm-up: sessions allocate their arenas on the first batches
        run()
    best = {name: float("inf") for name in configs}
    for _ in range(args.rounds):
        for name, run in configs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    # onnxruntime's arena makes one process's peak vary by ~10 MB run to run: interleave runs, report the median.
    sets = {"three heads, one bundle": [multi_path], "one head (sentiment)": single_paths[:1],
            "three single-head bundles": single_paths}
    runs: dict[str, list[float]] = {name: [] for name in sets}
    for _ in range(args.memory_runs):
        for name, paths in sets.items():
            runs[name].append(peak_rss(paths, args.rows))
    memory = {name: sorted(values)[len(values) // 2] for name, values in runs.items()}
    one_time, one_mem = best["one head (sentiment)"], memory["one head (sentiment)"]
    result = {
        "isa": isa(),
        "load_average": list(os.getloadavg()),
        "rows": args.rows,
        "rounds": args.rounds,
        "exporter": args.exporter,
        "latency_s": best,
        "latency_ratio_to_one_head": {name: round(t / one_time, 3) for name, t in best.items()},
        "peak_rss_mb": memory,
        "peak_rss_mb_runs": runs,
        "memory_ratio_to_one_head": {name: round(m / one_mem, 3) for name, m in memory.items()},
        "targets": {"latency": TARGET_LATENCY, "memory": TARGET_MEMORY},
    }
    result["meets_targets"] = (
        result["latency_ratio_to_one_head"]["three heads, one bundle"] <= TARGET_LATENCY
        and result["memory_ratio_to_one_head"]["three heads, one bundle"] <= TARGET_MEMORY
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"CPU ISA: {' '.join(result['isa']) or 'unknown'}; load average {result['load_average'][0]:.2f} "
          f"{result['load_average'][1]:.2f} {result['load_average'][2]:.2f} (at the end)")
    print(f"{args.rows} realistic texts, fp32, 1 thread, best of {args.rounds} interleaved rounds, {args.exporter} export")
    print(f"{'configuration':<44} {'seconds':>8} {'x one head':>10} {'peak RSS MB':>12} {'x one head':>10}")
    for name in configs:
        mem = memory.get(name)
        print(f"{name:<44} {best[name]:8.3f} {result['latency_ratio_to_one_head'][name]:10.3f} "
              + (f"{mem:12.0f} {result['memory_ratio_to_one_head'][name]:10.3f}" if mem else f"{'-':>12} {'-':>10}"))
    print(f"targets: three heads <= {TARGET_LATENCY}x one head's latency and <= {TARGET_MEMORY}x its memory: "
          + ("met" if result["meets_targets"] else "NOT met"))
    return result


if __name__ == "__main__":
    main()
