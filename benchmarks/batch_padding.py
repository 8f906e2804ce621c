"""What ``"batch_padding": false`` costs: rows/s on a mixed-length corpus when batches hold rows of one length only
(how bundles of padding-dependent models are served) vs the normal length-bucketed batches, side by side.

Usage:  python -m benchmarks.batch_padding [--rows 512] [--threads 2] [--budget 30] [--out DIR]

The bundle is the real MiniLM (a BERT: padding-independent, so both plans give the same results and only the
batching differs) exported once into ``--out``; the same Predictor runs both plans, called round-robin
(A B A B ...). Prints rows/s, the ratio, the batches each plan makes and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from .corpus import mixed_corpus
from .run import interleaved


def bundle(out: Path) -> Path:
    from headreg.testing import minilm_path

    target = out / "minilm-seq_cls"
    if not (target / "headreg.json").is_file():
        from transformers import AutoModel

        from headreg import attach_head
        from headreg.export import export_onnx
        from headreg.model import quiet_transformers

        with quiet_transformers():
            backbone = AutoModel.from_pretrained(minilm_path())
        export_onnx(attach_head(backbone, "seq_cls", num_labels=2).eval(), target, str(minilm_path()),
                    overwrite=True, progress=False)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "headreg-bench-batch-padding"))
    args = parser.parse_args()

    from headreg.runtime import Predictor

    texts = mixed_corpus(args.rows, seed=0)
    predictor = Predictor(bundle(Path(args.out)), threads=args.threads)
    lengths = [len(e) for e in predictor.encode(texts)]

    def run(padding: bool):
        def call():
            predictor.batch_padding = padding
            predictor.predict(texts)
        return call

    plans = {}
    for name, padding in (("padded batches", True), ("equal lengths only", False)):
        predictor.batch_padding = padding
        plan = predictor.plan(lengths)
        plans[name] = (len(plan), sum(len(b) * max(lengths[i] for i in b) for b in plan))
    times = interleaved({"padded batches": run(True), "equal lengths only": run(False)}, args.budget, 3, 50)
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"{args.rows} rows, {sum(lengths)} tokens (lengths {min(lengths)}-{max(lengths)}), "
          f"threads={args.threads}, load average {' '.join(load)}")
    rates = {}
    for name, seconds in times.items():
        rates[name] = args.rows / statistics.median(seconds)
        batches, padded = plans[name]
        print(f"  {name:20s} {rates[name]:8.1f} rows/s  (median of {len(seconds)}; {batches} batches, "
              f"{padded} tokens computed)")
    print(f"  equal lengths only / padded batches: {rates['equal lengths only'] / rates['padded batches']:.2f}x")


if __name__ == "__main__":
    main()
