"""Scale-out overhead: single-process Predictor vs Ray Data (1 and 2 actors x 1 thread) vs Spark local[2].

    python -m benchmarks.scale_out                 # 20,000 rows (the real MiniLM, seq_cls head); minutes
    python -m benchmarks.scale_out --rows 2000     # a shorter run

The realistic-text corpus (``benchmarks.corpus.mixed_corpus``: real sentences, 4-100 words) is repeated to
``--rows`` rows. Every configuration runs the same rows with the same bundle and variant; the engines add
only their plumbing around ``Predictor.predict`` (one Predictor per actor / Python worker, 1 onnxruntime
thread each). Each round runs every configuration once, in turn (interleaved), after the local Ray cluster
and Spark session are up; a configuration's time is the wall time of its whole job, so the engines' times
include starting their actors / workers and loading the bundle there. A Spark session keeps its Python
workers (and their Predictors) between jobs, so its rounds after the first measure warm workers; a Ray Data
job starts its actors every time.

Reported per configuration (best round): steady rows/s and whole-job rows/s, each as a percentage of the
single process at the same total number of threads (target >= 85% steady). Steady: Ray Data from its first
output batch to its last (the actors are up and loaded; the whole job when it produced a single batch), Spark and the single process the whole job (Spark's
warm rounds reuse loaded workers). Job: the whole job's wall time, engine start-up included. With the CPU ISA
and the load average, since other processes on a shared machine take cores from every configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.corpus import mixed_corpus

ROOT = Path(__file__).resolve().parent
TARGET = 0.85


def corpus(rows: int, distinct: int = 2000) -> list[str]:
    """``distinct`` realistic texts repeated (in the same order) to ``rows`` rows."""
    base = mixed_corpus(min(rows, distinct), seed=0)
    return [base[i % len(base)] for i in range(rows)]


def isa() -> list[str]:
    from .machine import isa as cpu_isa

    return cpu_isa()


def default_bundle(out: Path) -> Path:
    """The real MiniLM with a seq_cls head, exported once (the same bundle ``benchmarks.run`` builds)."""
    from benchmarks import engines

    bundle = out / "bundles" / "minilm"
    if not (bundle / "headreg.json").is_file():
        engines.build_bundle("minilm", engines.build_model("minilm"), out, rebuild=False)
    return bundle


# --- the configurations ----------------------------------------------------------------------------------------


def single_process(bundle: Path, texts: list[str], threads: int, variant: str | None) -> Callable[[], Any]:
    from headreg.runtime import Predictor

    predictor = Predictor(bundle, threads=threads, variant=variant)
    predictor.predict(texts[:32])  # onnxruntime's first-run setup is not part of the throughput

    def job() -> int:
        return len(predictor.predict(texts))

    return job


def ray_data(bundle: Path, texts: list[str], actors: int, variant: str | None, batch_size: int) -> Callable[[], Any]:
    import ray

    from headreg.integrations.ray import BundlePredictor

    def job() -> tuple[int, float]:
        ds = ray.data.from_items([{"text": text} for text in texts], override_num_blocks=max(4 * actors, len(texts) // batch_size))
        ds = ds.map_batches(
            BundlePredictor, fn_constructor_kwargs={"bundle": str(bundle), "variant": variant},
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1, batch_size=batch_size,
            batch_format="pandas",
        )
        rows, first, first_rows = 0, None, 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(batch["label"])
            if first is None:  # the actors are up and have loaded the bundle
                first, first_rows = time.perf_counter(), rows
        if first is None or rows == first_rows:  # one batch in all: no steady period to measure
            return rows, None
        return rows, (rows - first_rows) / (time.perf_counter() - first)

    return job


def spark_local(spark: Any, bundle: Path, texts: list[str], variant: str | None) -> Callable[[], Any]:
    from pyspark.sql import functions as F

    from headreg.integrations.spark import predict_udf

    udf = predict_udf(bundle, output="label", threads=1, variant=variant)
    df = spark.createDataFrame([(text,) for text in texts], "text string").repartition(8).cache()
    df.count()  # materialised before timing: the job measures the UDF, not the driver's serialisation

    def job() -> int:
        df.select(udf(F.col("text")).alias("label")).write.format("noop").mode("overwrite").save()
        return len(texts)

    return job


def start_spark(slots: int):
    from pyspark.sql import SparkSession

    if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
        raise RuntimeError("Spark needs Java 17 (JAVA_HOME or java on PATH)")
    spark = (
        SparkSession.builder.master(f"local[{slots}]").appName("headreg-scale-out")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.shuffle.partitions", str(2 * slots))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# --- run -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per job (default 20000)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle (default: the real MiniLM, seq_cls)")
    parser.add_argument("--variant", default=None, help="bundle variant (default: the Predictor's choice)")
    parser.add_argument("--batch-size", type=int, default=256, help="Ray Data rows per batch (default 256)")
    parser.add_argument("--skip", default="", help="comma-separated: ray, spark")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or default_bundle(args.out)
    texts = corpus(args.rows)
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "command": "python -m benchmarks.scale_out " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": len(texts), "bundle": str(bundle), "isa": isa(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_before": load_before,
    }
    print(f"{len(texts)} rows; ISA {' '.join(report['isa']) or '?'}; {report['cores_available']} cores; "
          f"load average {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}", flush=True)

    # name: (total threads, job)
    configs: dict[str, tuple[int, Callable[[], int]]] = {
        "single process, 1 thread": (1, single_process(bundle, texts, 1, args.variant)),
        "single process, 2 threads": (2, single_process(bundle, texts, 2, args.variant)),
    }
    from headreg.runtime import Predictor

    report["variant"] = Predictor(bundle, threads=1, variant=args.variant).variant
    started: list[Callable[[], None]] = []
    try:
        if "ray" not in skip:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     object_store_memory=200 * 2**20)
            started.append(ray.shutdown)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.wait_for_min_actors_s = 600  # all actors up before the first batch: "steady" starts with all of them
            configs["Ray Data, 1 actor x 1 thread"] = (1, ray_data(bundle, texts, 1, args.variant, args.batch_size))
            configs["Ray Data, 2 actors x 1 thread"] = (2, ray_data(bundle, texts, 2, args.variant, args.batch_size))
        if "spark" not in skip:
            spark = start_spark(2)
            started.append(spark.stop)
            configs["Spark local[2], 1 thread each"] = (2, spark_local(spark, bundle, texts, args.variant))

        seconds: dict[str, list[float]] = {name: [] for name in configs}
        steady: dict[str, list[float]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            for name, (_, job) in configs.items():
                start = time.perf_counter()
                done = job()
                elapsed = time.perf_counter() - start
                done, rate = done if isinstance(done, tuple) else (done, None)
                rate = rate or len(texts) / elapsed
                assert done == len(texts), f"{name} returned {done} rows for {len(texts)}"
                seconds[name].append(elapsed)
                steady[name].append(rate)
                print(f"  round {round_ + 1} {name:32s} {elapsed:7.1f} s  {len(texts) / elapsed:7.1f} rows/s job, "
                      f"{rate:7.1f} rows/s steady  (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for stop in reversed(started):
            stop()

    results = {}
    for name, (threads, _) in configs.items():
        results[name] = {"threads": threads, "seconds": seconds[name], "rows_per_s_job": len(texts) / min(seconds[name]),
                         "rows_per_s": max(steady[name])}
    for name, result in results.items():
        baseline = results[f"single process, {result['threads']} thread{'s' if result['threads'] > 1 else ''}"]
        result["vs_single_process_pct"] = 100.0 * result["rows_per_s"] / baseline["rows_per_s"]
        result["job_vs_single_process_pct"] = 100.0 * result["rows_per_s_job"] / baseline["rows_per_s"]
    report["results"] = results
    report["load_average_after"] = os.getloadavg()

    print(f"\n{'configuration':34s} {'threads':>7s} {'rows/s':>8s} {'vs single':>10s} {'job rows/s':>11s} {'vs single':>10s}")
    for name, result in results.items():
        flag = "" if name.startswith("single") else ("  ok" if result["vs_single_process_pct"] >= 100 * TARGET else "  below 85%")
        print(f"{name:34s} {result['threads']:7d} {result['rows_per_s']:8.1f} {result['vs_single_process_pct']:9.0f}% "
              f"{result['rows_per_s_job']:11.1f} {result['job_vs_single_process_pct']:9.0f}%{flag}")
    after = report["load_average_after"]
    print(f"\nvariant {report['variant']}; best of {args.rounds} rounds; load average before {load_before[0]:.1f}, "
          f"after {after[0]:.1f} (on {report['cores_available']} cores)")
    (args.out / "scale_out.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'scale_out.json'}")
    return report


if __name__ == "__main__":
    main()
