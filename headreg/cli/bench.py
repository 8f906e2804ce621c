"""``headreg bench``: latency and throughput of every variant of a bundle, side by side (and against PyTorch)."""

from __future__ import annotations

from typing import Any

import click

from .bundles import load_predictor
from .output import EXIT_FAILURE, console, emit_json, fail, usage_error


@click.command(short_help="Latency and throughput of every variant (and vs PyTorch).", epilog="""\b
Examples:
  headreg bench ./bundle --batch-size 8 --seq-len 128
  headreg bench ./bundle --texts texts.txt --passes 3
  headreg bench ./bundle --compare-torch --model ./my-model --json""")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Rows per batch.")
@click.option("--seq-len", default=None, type=click.IntRange(min=2),
              help="Tokens per synthetic row [default: 128]; with --texts, a truncation cap.")
@click.option("--texts", "texts_file", type=click.Path(exists=True, dir_okay=False),
              help="Benchmark on this corpus (one text per line or JSONL) and compare length bucketing with arrival order.")
@click.option("--rows", default=None, type=click.IntRange(min=1), help="Synthetic rows per pass [default: 4 batches].")
@click.option("--passes", default=5, show_default=True, type=click.IntRange(min=1), help="Timed passes over the corpus.")
@click.option("--max-batch-tokens", default=None, type=click.IntRange(min=1),
              help="Token budget per batch [default: batch-size x seq-len; with --texts, the Predictor's default].")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Threads for onnxruntime and torch alike [default: the CPUs this process may use].")
@click.option("--compare-torch", is_flag=True, help="Also time the PyTorch model (needs headreg[torch]).")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="The PyTorch model for --compare-torch [default: the manifest's source path].")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def bench(bundle: str, batch_size: int, seq_len: int | None, texts_file: str | None, rows: int | None, passes: int,
          max_batch_tokens: int | None, threads: int | None, compare_torch: bool, model_dir: str | None,
          as_json: bool) -> None:
    """Latency p50/p90/p99 and throughput of every variant of BUNDLE, side by side (and against PyTorch).

    Synthetic rows by default; --texts measures your corpus, with length bucketing against arrival order.
    Progress is shown on stderr when it is a terminal (not with --json).
    """
    from ..runtime.cpus import available_cpus
    from ..runtime.predictor import DEFAULT_MAX_BATCH_TOKENS

    corpus = _corpus(texts_file, rows or 4 * batch_size)
    if texts_file is None:
        seq_len = seq_len or 128
    # Both engines get the same thread count: their own defaults differ and would skew the ratio.
    threads = threads or available_cpus()
    # A synthetic run measures exactly --batch-size rows per batch, so its token budget must hold them.
    budget = max_batch_tokens or (batch_size * seq_len if texts_file is None else DEFAULT_MAX_BATCH_TOKENS)
    options = dict(threads=threads, batch_size=batch_size, max_length=seq_len, max_batch_tokens=budget)
    default = load_predictor(bundle, **options)
    engines = _variant_engines(bundle, default, options, arrival_order=texts_file is not None)
    if compare_torch:
        engines += _torch_engines(model_dir, default, threads, quiet=as_json)
    from ..progress import CountProgress
    from ..runtime.bench import measure

    warmup = 1
    from ..errors import PredictionError

    with CountProgress(f"benchmarking {len(engines)} engine(s) on {len(corpus)} rows", (warmup + passes) * len(engines),
                       enabled=False if as_json else None) as bar:
        try:
            results = measure(engines, corpus, batch_size=batch_size, passes=passes, warmup=warmup,
                              on_pass=bar.advance)
        except PredictionError as exc:  # a variant could not answer the rows: the bundle's failure, not the user's
            fail(str(exc), EXIT_FAILURE)
    report = _report(bundle, default, results, batch_size=batch_size, budget=budget, threads=threads)
    if as_json:
        emit_json(report)
    else:
        _print_report(report, results, default.head, batch_size=batch_size, passes=passes, threads=threads)


def _corpus(texts_file: str | None, synthetic_rows: int) -> list[Any]:
    """The texts of --texts (exit 2 when unreadable or empty), else ``synthetic_rows`` synthetic ones."""
    from ..runtime.bench import synthetic_texts
    from ..runtime.inputs import InputError, read_texts

    if texts_file is None:
        return synthetic_texts(synthetic_rows)
    try:
        corpus = read_texts(texts_file)
    except (OSError, UnicodeDecodeError, InputError) as exc:
        usage_error(f"cannot read --texts {texts_file}: {exc}")
    if not corpus:
        usage_error(f"--texts {texts_file} has no texts")
    return corpus


def _variant_engines(bundle: str, default: Any, options: dict[str, Any], *, arrival_order: bool) -> list[Any]:
    """The default variant, every other variant that loads here, and (a corpus) the default in arrival order."""
    from ..errors import HeadregError
    from ..runtime.bench import Contender
    from ..runtime.predictor import Predictor

    records = {k: v for k, v in (default.manifest.get("variants") or {}).items() if isinstance(v, dict)}

    def held_out(variant: str) -> str:
        """A reduced-precision variant's held-out agreement at export, shown beside its speed."""
        figures = records.get(variant, {}).get("acceptance") or {}
        return f", {figures['agreement']:.1%} held-out" if isinstance(figures.get("agreement"), (int, float)) else ""

    engines = [Contender(f"{default.variant} ({default.backend.name}{held_out(default.variant)}, default)", default)]
    for variant in sorted(records):
        if variant != default.variant:
            try:
                other = Predictor(bundle, variant=variant, **options)
            except HeadregError as exc:  # e.g. bf16 on a CPU without it, or OpenVINO not installed
                click.echo(f"skipping variant {variant}: {exc}", err=True)
                continue
            engines.append(Contender(f"{variant} ({other.backend.name}{held_out(variant)})", other))
    if arrival_order:
        engines.append(Contender(f"{default.variant} ({default.backend.name}), arrival order", default, bucket=False))
    return engines


def _torch_engines(model_dir: str | None, default: Any, threads: int, *, quiet: bool) -> list[Any]:
    """PyTorch's fastest CPU configurations (fp32; bf16 autocast where the CPU has native bf16), or exit 2."""
    from ..errors import MissingExtraError, SaveLoadError
    from ..export.torch_bench import torch_backend
    from ..progress import status
    from ..runtime.backends import bf16_cpu
    from ..runtime.bench import Contender, source_model_dir
    from ..runtime.variants import cpu_flags

    source = model_dir or source_model_dir(default)
    if source is None:
        usage_error("--compare-torch needs the PyTorch model: the manifest names none that exists here; pass --model DIR")
    modes = [("torch fp32", False)] + ([("torch bf16 autocast", True)] if bf16_cpu(cpu_flags()) else [])
    try:
        with status(f"loading the PyTorch model in {source} ...", enabled=False if quiet else None):
            return [Contender(name, default, backend=torch_backend(source, threads=threads, bf16=bf16)) for name, bf16 in modes]
    except (MissingExtraError, SaveLoadError, OSError, ValueError) as exc:
        usage_error(f"--compare-torch cannot load the PyTorch model in {source}: {exc}")


def _report(bundle: str, default: Any, results: list[Any], *, batch_size: int, budget: int, threads: int) -> dict[str, Any]:
    """What --json prints: every engine's figures, its ratio to the faster PyTorch, and the machine."""
    import os

    from ..runtime.variants import cpu_flags

    torch_result = max((r for r in results if r.engine.startswith("torch ")), key=lambda r: r.throughput, default=None)
    arrival = next((r for r in results if r.engine.endswith("arrival order")), None)
    report = {
        "bundle": bundle, "head": default.head, "batch_size": batch_size, "max_length": default.max_length,
        "max_batch_tokens": budget, "threads": threads, "engines": [r.as_dict() for r in results],
        "torch_baseline": torch_result.engine if torch_result is not None else None,
        "machine": {"isa": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                                                 "amx_int8"}), "load_average": list(os.getloadavg())},
    }
    if torch_result is not None:
        for entry, result in zip(report["engines"], results):
            entry["vs_torch"] = result.throughput / torch_result.throughput
    if arrival is not None:
        report["bucketing_speedup"] = results[0].throughput / arrival.throughput
    return report


def _print_report(report: dict[str, Any], results: list[Any], head: str, *, batch_size: int, passes: int,
                  threads: int) -> None:
    from rich.table import Table

    with_torch = report["torch_baseline"] is not None
    mean_tokens = results[0].tokens / max(results[0].rows, 1)
    table = Table(
        title=f"{head} · batch {batch_size} · {mean_tokens:.0f} tokens/row on average · {passes} passes",
        title_justify="left",
    )
    columns = ("engine", "p50 ms", "p90 ms", "p99 ms", "rows/s", "padding") + (("vs torch",) if with_torch else ())
    for column in columns:
        table.add_column(column, justify="left" if column == "engine" else "right")
    for entry, result in zip(report["engines"], results):
        table.add_row(
            result.engine, f"{result.percentile(50):.1f}", f"{result.percentile(90):.1f}", f"{result.percentile(99):.1f}",
            f"{result.throughput:.1f}", f"{result.padded_tokens / max(result.tokens, 1) - 1:.0%}",
            *([f"{entry['vs_torch']:.2f}x" if "vs_torch" in entry else ""] if with_torch else []),
        )
    out = console()
    out.print(table)
    machine = report["machine"]
    out.print(f"{threads} threads · CPU {' '.join(machine['isa']) or 'baseline x86-64'} · load average "
              f"{machine['load_average'][0]:.1f}" + (f" · vs torch: against {report['torch_baseline']}, the faster "
                                                      "PyTorch" if with_torch else ""))
    if "bucketing_speedup" in report:
        out.print(f"length bucketing vs arrival order: {report['bucketing_speedup']:.2f}x throughput")
