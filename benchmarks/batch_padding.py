"""What ``"batch_padding": false`` costs: rows/s on a mixed-length corpus when batches hold rows of one length only
(how bundles of padding-dependent models are served) vs the normal length-bucketed batches, side by side.

Usage:  python -m benchmarks.batch_padding [--rows 512] [--threads 1] [--rounds 5] [--out DIR]

The bundle is the real MiniLM (a BERT: padding-independent, so both plans give the same results and only the
batching differs) exported once into ``--out``; the same Predictor runs both plans, called round-robin
(A B A B ...). Prints rows/s (wall and per CPU-second), the ratios, the batches each plan makes and the load
average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from .corpus import mixed_corpus


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
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "headreg-bench-batch-padding"))
    args = parser.parse_args()

    from headreg.runtime import Predictor

    texts = mixed_corpus(args.rows, seed=0)
    predictor = Predictor(bundle(Path(args.out)), threads=args.threads)
    lengths = [len(e) for e in predictor.encode(texts)]

    engines = {name: predictor.engine.with_layout(batch_padding=padding)
               for name, padding in (("padded batches", True), ("equal lengths only", False))}
    plans = {}
    for name, engine in engines.items():
        plan = engine.plan(lengths)
        plans[name] = (len(plan), sum(len(b) * max(lengths[i] for i in b) for b in plan))
    # Wall time and this process's CPU time per run, A B A B ...: on a shared machine the wall time swings with
    # the neighbours' load, the CPU time far less (with one thread no worker spins, so CPU time is work done).
    wall: dict[str, list[float]] = {name: [] for name in plans}
    cpu: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            (answer,) = engine.run([predictor.prepare(texts)])  # what predict() runs, over this engine
            assert not isinstance(answer, BaseException), answer
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"{args.rows} rows, {sum(lengths)} tokens (lengths {min(lengths)}-{max(lengths)}), threads={args.threads}, "
          f"{args.rounds} rounds, load average {' '.join(load)}")
    rates = {}
    for name in plans:
        rates[name] = (args.rows / statistics.median(wall[name]), args.rows / statistics.median(cpu[name]))
        batches, padded = plans[name]
        print(f"  {name:20s} {rates[name][0]:8.1f} rows/s wall, {rates[name][1]:8.1f} rows per CPU-second "
              f"({batches} batches, {padded} tokens computed)")
    ratio = [rates["equal lengths only"][i] / rates["padded batches"][i] for i in (0, 1)]
    print(f"  equal lengths only / padded batches: {ratio[0]:.2f}x wall, {ratio[1]:.2f}x CPU")


if __name__ == "__main__":
    main()
