"""Long texts: ``long_text="window"`` against truncation on the realistic corpus with some long texts mixed in.

The corpus is the benchmarks' mixed-length real text (5-128 tokens) with ``--long-share`` of its rows (5% by
default) replaced by texts of ``--multiple`` x max_length tokens (4x by default). Both modes run the same
Predictor, passes interleaved (truncate, window, truncate, ...). Windowing processes more tokens (every
window of a long text, overlaps included); the question is whether it costs more than those extra tokens:
``cost per token`` = (time ratio) / (token ratio), 1.0 meaning each extra token costs what a truncated one does.

    python -m benchmarks.long_text                     # real MiniLM, max_length 128, seq_cls and token_cls
    python -m benchmarks.long_text --max-length 512 --rows 200 --budget-s 120

Prints the CPU's ISA and the load average before and after (the cores are shared: read the numbers with it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.corpus import mixed_corpus
from benchmarks.report import machine_info
from benchmarks.timing import interleaved

CACHE = Path(os.environ.get("HEADREG_BENCH_CACHE", "/tmp/headreg-bench-long-text"))
HEADS = {
    "seq_cls": dict(num_labels=2, id2label={0: "negative", 1: "positive"}),
    "token_cls": dict(num_labels=5, id2label={0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}),
}


def bundle_for(head: str, max_length: int, rebuild: bool = False) -> Path:
    """Real MiniLM + a fresh ``head`` exported at ``max_length`` (cached between runs)."""
    out = CACHE / f"{head}-{max_length}"
    if rebuild or not (out / "headreg.json").is_file():
        import torch
        from transformers import AutoModel

        from headreg import attach_head
        from headreg.export import ExportOptions, export_onnx
        from headreg.model import quiet_transformers
        from headreg.testing import minilm_path

        torch.manual_seed(0)
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(minilm_path())
        model = attach_head(backbone, head, **HEADS[head]).eval()
        export_onnx(model, out, tokenizer=str(minilm_path()), overwrite=True,
                    options=ExportOptions(max_length=max_length, exporter="torchscript"))
    return out


def long_corpus(rows: int, share: float, multiple: int, max_length: int, tokenizer: Any, seed: int = 0) -> list[str]:
    """The mixed corpus with every ``1/share``-th row replaced by a text of >= ``multiple`` x max_length tokens."""
    from headreg.data import sentences

    texts = mixed_corpus(rows, seed=seed)
    rng = random.Random(seed + 1)
    pool = list(sentences())
    sizes = {s: len(e.ids) for s, e in zip(pool, tokenizer.encode_batch(pool, add_special_tokens=False))}
    every = max(1, round(1 / share)) if share > 0 else 0
    for index in range(every - 1, rows, every) if every else ():
        parts: list[str] = []
        while sum(sizes[p] for p in parts) < multiple * max_length:
            parts.append(rng.choice(pool))
        texts[index] = " ".join(parts)
    return texts


def work(predictor: Any, texts: list[str], options: dict[str, Any]) -> dict[str, int]:
    """Rows, attended tokens and padded tokens (what the model computes) of one pass."""
    job = predictor.prepare(texts, **options)
    lengths = [len(row.encoding) for row in job.rows]
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in predictor.engine.plan(lengths))
    return {"rows": len(lengths), "tokens": sum(lengths), "padded_tokens": padded}


def bench_head(head: str, args: argparse.Namespace) -> dict[str, Any]:
    from headreg.runtime import Predictor

    predictor = Predictor(bundle_for(head, args.max_length, args.rebuild), threads=args.threads)
    texts = long_corpus(args.rows, args.long_share, args.multiple, predictor.max_length, predictor.tokenizer)
    modes = {
        "truncate": {},
        "window": {"long_text": "window", **({"window_stride": args.overlap} if args.overlap is not None else {})},
    }
    counts = {mode: work(predictor, texts, options) for mode, options in modes.items()}
    calls = {mode: (lambda options=options: predictor.predict(texts, **options)) for mode, options in modes.items()}
    times = interleaved(calls, budget_s=args.budget_s, min_reps=3, max_reps=args.max_passes)
    # Where the time goes outside the model: tokenizing (+ planning windows), and merging + postprocess.
    overhead = {mode: prepare_finish_seconds(predictor, texts, options) for mode, options in modes.items()}
    report: dict[str, Any] = {"head": head, "max_length": predictor.max_length, "texts": len(texts),
                              "long_texts": sum(1 for t in texts if len(predictor.tokenizer.encode(t)) >= predictor.max_length),
                              "modes": {}}
    for mode in modes:
        seconds = statistics.median(times[mode])
        report["modes"][mode] = {
            **counts[mode], "passes": len(times[mode]), "median_s": seconds, "min_s": min(times[mode]),
            "tokens_per_s": counts[mode]["tokens"] / seconds, "padded_tokens_per_s": counts[mode]["padded_tokens"] / seconds,
            "texts_per_s": len(texts) / seconds, **overhead[mode],
        }
    t, w = report["modes"]["truncate"], report["modes"]["window"]
    report["time_ratio"] = w["median_s"] / t["median_s"]
    report["token_ratio"] = w["tokens"] / t["tokens"]
    report["padded_token_ratio"] = w["padded_tokens"] / t["padded_tokens"]
    report["cost_per_token"] = report["time_ratio"] / report["token_ratio"]
    report["cost_per_padded_token"] = report["time_ratio"] / report["padded_token_ratio"]
    return report


def prepare_finish_seconds(predictor: Any, texts: list[str], options: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    job = predictor.prepare(texts, **options)
    prepared = time.perf_counter()
    outputs, _ = predictor.engine.compute([job])
    ran = time.perf_counter()
    predictor.engine.finish(job, outputs[job])
    return {"prepare_s": prepared - started, "finish_s": time.perf_counter() - ran}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default="seq_cls,token_cls")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--long-share", type=float, default=0.05)
    parser.add_argument("--multiple", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=None, help="window_stride [default: the Predictor's]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=40.0, help="Seconds of timed passes per head (bounded).")
    parser.add_argument("--max-passes", type=int, default=15)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    info = {key: value for key, value in machine_info().items() if key in ("cpu", "cores_available", "isa")}
    load_before = os.getloadavg()
    reports = [bench_head(head, args) for head in args.heads.split(",")]
    load_after = os.getloadavg()
    if args.json:
        print(json.dumps({"machine": info, "load_before": load_before, "load_after": load_after, "heads": reports}, indent=2))
        return reports
    print(f"CPU: {info['cpu']} · ISA: {', '.join(info['isa']) or 'none of avx2/avx512/amx'} · "
          f"{info['cores_available']} cores · threads {args.threads}")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    for r in reports:
        print(f"\n{r['head']} · max_length {r['max_length']} · {r['texts']} texts, {r['long_texts']} longer than max_length "
              f"(~{args.multiple}x)")
        print(f"{'mode':<9} {'rows':>6} {'tokens':>8} {'padded':>8} {'median s':>9} {'tokens/s':>9} {'texts/s':>8} "
              f"{'prepare s':>9} {'finish s':>8}")
        for mode, m in r["modes"].items():
            print(f"{mode:<9} {m['rows']:>6} {m['tokens']:>8} {m['padded_tokens']:>8} {m['median_s']:>9.3f} "
                  f"{m['tokens_per_s']:>9.0f} {m['texts_per_s']:>8.1f} {m['prepare_s']:>9.3f} {m['finish_s']:>8.3f}")
        print(f"window / truncate: time {r['time_ratio']:.2f}x for {r['token_ratio']:.2f}x tokens "
              f"({r['padded_token_ratio']:.2f}x padded) -> cost per token {r['cost_per_token']:.2f}x "
              f"(per padded token {r['cost_per_padded_token']:.2f}x)")
    return reports


if __name__ == "__main__":
    main()
