"""The ``headreg`` command. Exit codes: 0 ok, 1 verification/prediction failure, 2 usage error.

Every error is one line on stderr, ``error: <what went wrong>; <what to do>``, click's own usage errors
included. Heavy libraries (torch, transformers, onnx) are imported inside the commands that need them, and
arguments are checked before they are imported, so ``headreg --help`` and simple mistakes answer at once.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, NoReturn

import click

from . import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers, and ``--json`` output must always parse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def emit_json(data: Any) -> None:
    """JSON on stdout, keys in the order they were built (label-id order for scores, not string order)."""
    click.echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


# Terminal escapes (CSI, OSC, other ESC sequences), C0/C1 controls and bidi overrides: text from inputs, bundles
# and plugins is shown, never interpreted by the terminal.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
)


def plain(value: Any) -> str:
    """``value`` as a string safe to print: escapes and control characters shown as ``\\x..`` codes."""
    return _ESCAPES.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def cell(value: Any):
    """A table cell that rich shows as it is: never parsed as markup (``[bold]``, ``[/]``), escapes neutralised."""
    from rich.text import Text

    return Text(plain(value))


def console(stderr: bool = False):
    import shutil

    from rich.console import Console

    # Piped output gets a wide table rather than rich's 80-column default.
    return Console(stderr=stderr, highlight=False, width=shutil.get_terminal_size((160, 24)).columns)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def usage_error(message: str) -> NoReturn:
    """Print a usage error and exit 2 (bad arguments, missing files, not a bundle, unknown heads)."""
    fail(message, EXIT_USAGE)


@click.group(context_settings=CONTEXT, epilog="""\b
Examples:
  headreg heads
  headreg export ./my-model -o ./bundle
  headreg predict ./bundle "I loved this film."
Run 'headreg COMMAND --help' for a command's options and examples.""")
@click.version_option(__version__, prog_name="headreg")
def cli() -> None:
    """Attach task heads to Hugging Face encoders, export verified ONNX bundles, serve them without torch."""


@cli.command(short_help="List the installed heads, built-in and from plugins.", epilog="""\b
Examples:
  headreg heads
  headreg heads --filter '*cls' --json
  headreg heads --plugin headreg-plugin-crf""")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@click.option("--filter", "pattern", default="*", show_default=True, help="Wildcard on names and aliases.")
@click.option("--task", default=None, help="Only heads of this task.")
@click.option("--plugin", default=None, help="Only heads from this distribution ('headreg' = built-ins).")
def heads(as_json: bool, pattern: str, task: str | None, plugin: str | None) -> None:
    """List the installed heads, built-in and from plugins: names and aliases for --head, task, origin."""
    from .registry import list_heads

    specs = list_heads(pattern, task=task, plugin=plugin)
    if as_json:
        emit_json([spec.as_dict() for spec in specs])
        return
    from rich.table import Table

    out = console()
    table = Table(title=f"{len(specs)} head(s)", title_justify="left")
    # Names, tasks and distributions are never broken inside a word; aliases and descriptions wrap at words.
    for column in ("name", "aliases", "task", "plugin", "version", "description"):
        table.add_column(column, no_wrap=column not in ("aliases", "description"))
    for spec in specs:
        table.add_row(*map(cell, (spec.name, ",\n".join(spec.aliases), spec.task, spec.plugin, spec.version,
                                  spec.description)))
    if table.__rich_measure__(out, out.options).minimum <= out.width:
        out.print(table)
    else:  # too narrow for the table without breaking words: one block per head
        from rich.padding import Padding
        from rich.text import Text

        out.print(f"{len(specs)} head(s)")
        for spec in specs:
            aliases = f" ({', '.join(spec.aliases)})" if spec.aliases else ""
            out.print()
            out.print(Text.assemble((plain(spec.name), "bold"), plain(aliases)))
            out.print(Padding(cell(f"{spec.description}\ntask: {spec.task}; from {spec.plugin} {spec.version}"),
                              (0, 0, 0, 2)))
    _warn_failed_plugins()


def _warn_failed_plugins() -> None:
    from .plugins import plugin_infos

    failed = [info for info in plugin_infos() if info.status == "failed"]
    if failed:
        names = ", ".join(f"{info.distribution}" for info in failed)
        click.echo(f"warning: {len(failed)} plugin(s) failed to load ({names}); see 'headreg plugins'", err=True)


@cli.command(short_help="List plugins: loaded, failed (with the error) and disabled.", epilog="""\b
Examples:
  headreg plugins
  HEADREG_LOAD_PLUGINS=crf headreg plugins     # allowlist
  HEADREG_DISABLE_PLUGINS=ordinal headreg plugins""")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def plugins(as_json: bool) -> None:
    """List plugins: loaded, failed (with the error) and disabled (HEADREG_LOAD_PLUGINS / HEADREG_DISABLE_PLUGINS)."""
    from .plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        emit_json([info.as_dict() for info in infos])
        return
    from rich.table import Table

    table = Table(title=f"{len(infos)} plugin(s)", title_justify="left")
    for column in ("entry point", "distribution", "version", "status", "heads", "error"):
        table.add_column(column, overflow="fold")
    styles = {"loaded": "green", "failed": "red", "disabled": "yellow"}
    for info in infos:
        status = cell(info.status)
        status.stylize(styles.get(info.status, ""))
        table.add_row(cell(info.name), cell(info.distribution), cell(info.version), status, cell(", ".join(info.heads)),
                      cell(info.error or ""))
    console().print(table)


# --- predict / bench: the torch-free runtime (torch only for bench --compare-torch) -------------------------------


def check_bundle(path: str) -> None:
    """Exit 2 when ``path`` is not a bundle at all (a saved model, a missing file); torch-free."""
    from .errors import BundleError
    from .manifest import read_manifest

    try:
        read_manifest(path)
    except BundleError as exc:
        usage_error(str(exc))


def _load_predictor(bundle: str, **options: Any):
    """A Predictor, or exit: 2 when BUNDLE is not a bundle, 1 when it is one that fails its load checks."""
    from .errors import BundleError
    from .runtime import Predictor

    check_bundle(bundle)
    try:
        return Predictor(bundle, **options)
    except BundleError as exc:
        fail(f"{exc}", EXIT_FAILURE)


def _short(text: Any, width: int = 70) -> str:
    text = " || ".join(text) if isinstance(text, (tuple, list)) else str(text)
    text = plain(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def _prediction_cells(result: Any) -> tuple[str, str]:
    """(prediction, score) for the table view of any head's result."""
    if isinstance(result, dict):
        if "label" in result and "score" in result:
            return str(result["label"]), f"{result['score']:.4f}"
        if "labels" in result and isinstance(result.get("scores"), dict):
            chosen = result["labels"]
            return ", ".join(chosen) or "(none)", ", ".join(f"{result['scores'][label]:.3f}" for label in chosen)
        if "values" in result:
            return ", ".join(f"{value:.4g}" for value in result["values"]), ""
        if "entities" in result:
            spans = [f"{e['word']} [{e['label']}]" for e in result["entities"]]
            return "; ".join(spans) or "(no entities)", ", ".join(f"{e['score']:.3f}" for e in result["entities"])
    return json.dumps(result, default=str), ""


def _per_call_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--option NAME=VALUE`` pairs as Predictor keywords; the Predictor checks names and values (InputError)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name.isidentifier():
            usage_error(f"--option takes NAME=VALUE (e.g. --option thresholds=0.3), got {pair!r:.60}")
        if name in options:
            usage_error(f"--option {name}=... is given twice")
        try:
            options[name] = json.loads(text)
        except ValueError:
            options[name] = text  # aggregation=max: a plain string
    return options


@cli.command(short_help="Predict with an exported bundle (onnxruntime only, no torch).", epilog="""\b
Examples:
  headreg predict ./bundle "I loved this film." "The service was terrible."
  headreg predict ./bundle --file texts.txt --json > predictions.json
  cat texts.jsonl | headreg predict ./bundle --file - --variant int8
  headreg predict ./ner-bundle "Angela Merkel visited Paris." --option aggregation=max --option 'ignore_labels=["O"]'
  headreg predict ./tags-bundle "a text" --option thresholds=0.3""")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="One text per line, or JSONL with text/text_pair ('-' reads stdin).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only (scores in label-id order).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Most rows per model run.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@click.option("--quantized", is_flag=True, help="Use the bundle's int8 variant.")
@click.option("--variant", type=click.Choice(["auto", "fp32", "int8", "bf16"]), default=None,
              help="Model variant [default: auto, the rule of docs/runtime.md for this bundle on this machine].")
@click.option("--long-text", type=click.Choice(["truncate", "window"]), default=None,
              help="Texts longer than the bundle's max_length: cut them, or predict over overlapping windows "
                   "[default: truncate].")
@click.option("--window-stride", "--window-overlap", "window_stride", type=click.IntRange(min=0), default=None,
              help="With --long-text window: tokens neighbouring windows share (the overlap, not the step) "
                   "[default: a quarter of a window].")
@click.option("--window-reduce", type=click.Choice(["mean", "max", "first"]), default=None,
              help="With --long-text window, sequence heads: combine the windows' logits by mean, max or the "
                   "first window's [default: mean].")
@click.option("--max-windows", type=click.IntRange(min=1), default=None,
              help="With --long-text window: the most windows one text may need; a longer text is refused, "
                   "not cut [default: 256].")
@click.option("--option", "per_call", multiple=True, metavar="NAME=VALUE",
              help="A per-call option of the head, as in Predictor.predict (docs/runtime.md): thresholds, aggregation, "
              "ignore_labels, a plugin head's own; VALUE is JSON where it parses as JSON, else a string. Repeatable.")
@click.option("--verify-files", is_flag=True,
              help="Also check the model file's sha256 against the manifest (small files always are).")
def predict(bundle: str, texts: tuple[str, ...], text_file: str | None, as_json: bool, batch_size: int,
            threads: int | None, quantized: bool, variant: str | None, long_text: str | None,
            window_stride: int | None, window_reduce: str | None, max_windows: int | None,
            per_call: tuple[str, ...], verify_files: bool) -> None:
    """Predict with an exported BUNDLE: labels and scores per text (onnxruntime only; torch is not imported).

    Texts come as arguments, from --file, or both.
    """
    from .runtime.inputs import InputError, read_texts

    items: list[Any] = list(texts)
    if text_file is not None:
        try:
            items += read_texts(text_file)
        except (OSError, UnicodeDecodeError, InputError) as exc:
            usage_error(f"cannot read --file {text_file}: {exc}")
    if not items:
        usage_error("give texts as arguments or with --file")
    if quantized and variant not in (None, "int8"):
        usage_error(f"--quantized asks for int8 but --variant asks for {variant}; give one of them")
    extra = _per_call_options(per_call)
    for name in {"long_text", "window_stride", "window_overlap", "window_reduce", "max_windows"} & set(extra):
        usage_error(f"give {name} as --{name.replace('_', '-')}, not --option")
    from .plugins import stdout_to_stderr

    # A head's postprocess is plugin code: whatever it prints goes to stderr, so stdout holds only the results.
    with stdout_to_stderr():
        predictor = _load_predictor(bundle, threads=threads, quantized=quantized, variant=variant,
                                    batch_size=batch_size, verify_files=verify_files)
        try:
            options = dict(long_text=long_text, window_stride=window_stride, window_reduce=window_reduce,
                           max_windows=max_windows)
            options = {name: value for name, value in options.items() if value is not None}
            results = predictor.predict(items, **options, **extra)
        except InputError as exc:
            usage_error(str(exc))
    if as_json:
        emit_json([
            {"text": item, "result": result} if isinstance(item, str)
            else {"text": item[0], "text_pair": item[1], "result": result}
            for item, result in zip(items, results)
        ])
        return
    from rich.table import Table

    table = Table(title=f"{predictor.head} · {len(items)} text(s) · {predictor.variant}", title_justify="left")
    if predictor.multi_head:  # a column per head: "prediction (score)"
        for column in ("#", "text", *(head.name for head in predictor.heads)):
            table.add_column(column, overflow="fold")
        for index, (item, result) in enumerate(zip(items, results)):
            cells = [_prediction_cells(result[head.name]) for head in predictor.heads]
            table.add_row(str(index), cell(_short(item)), *(cell(f"{p} ({s})" if s else p) for p, s in cells))
    else:
        for column in ("#", "text", "prediction", "score"):
            table.add_column(column, overflow="fold")
        for index, (item, result) in enumerate(zip(items, results)):
            table.add_row(str(index), cell(_short(item)), *map(cell, _prediction_cells(result)))
    console().print(table)


@cli.command(short_help="Latency and throughput of every variant (and vs PyTorch).", epilog="""\b
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
    from .errors import HeadregError
    from .runtime.bench import Engine, measure, source_model_dir, synthetic_texts
    from .runtime.inputs import InputError, read_texts
    from .runtime.predictor import DEFAULT_MAX_BATCH_TOKENS, Predictor
    from .runtime.variants import cpu_flags

    if texts_file is not None:
        try:
            corpus = read_texts(texts_file)
        except (OSError, UnicodeDecodeError, InputError) as exc:
            usage_error(f"cannot read --texts {texts_file}: {exc}")
        if not corpus:
            usage_error(f"--texts {texts_file} has no texts")
    else:
        seq_len = seq_len or 128
        corpus = synthetic_texts(rows or 4 * batch_size)
    import os

    # Both engines get the same thread count: their own defaults differ and would skew the ratio.
    from .runtime.cpus import available_cpus

    threads = threads or available_cpus()
    # A synthetic run measures exactly --batch-size rows per batch, so its token budget must hold them.
    budget = max_batch_tokens or (batch_size * seq_len if texts_file is None else DEFAULT_MAX_BATCH_TOKENS)
    options = dict(threads=threads, batch_size=batch_size, max_length=seq_len, max_batch_tokens=budget)
    default = _load_predictor(bundle, **options)
    engines = [Engine(f"{default.variant} ({default.backend.name}, default)", default)]
    for variant in sorted(k for k, v in (default.manifest.get("variants") or {}).items() if isinstance(v, dict)):
        if variant != default.variant:
            try:
                other = Predictor(bundle, variant=variant, **options)
            except HeadregError as exc:  # e.g. bf16 on a CPU without it, or OpenVINO not installed
                click.echo(f"skipping variant {variant}: {exc}", err=True)
                continue
            engines.append(Engine(f"{variant} ({other.backend.name})", other))
    if texts_file is not None:
        engines.append(Engine(f"{default.variant} ({default.backend.name}), arrival order", default, bucket=False))
    if compare_torch:
        source = model_dir or source_model_dir(default)
        if source is None:
            usage_error("--compare-torch needs the PyTorch model: the manifest names none that exists here; pass --model DIR")
        from .errors import MissingExtraError, SaveLoadError
        from .export.torch_bench import torch_runner
        from .runtime.backends import bf16_cpu

        from .progress import status

        # PyTorch's fastest CPU configuration: bf16 autocast where the CPU has native bf16, else fp32
        torch_modes = [("torch fp32", False)] + ([("torch bf16 autocast", True)] if bf16_cpu(cpu_flags()) else [])
        try:
            with status(f"loading the PyTorch model in {source} ...", enabled=False if as_json else None):
                for name, bf16 in torch_modes:
                    engines.append(Engine(name, default, runner=torch_runner(source, threads=threads, bf16=bf16)))
        except (MissingExtraError, SaveLoadError, OSError, ValueError) as exc:
            usage_error(f"--compare-torch cannot load the PyTorch model in {source}: {exc}")
    from .progress import CountProgress

    warmup = 1
    with CountProgress(f"benchmarking {len(engines)} engine(s) on {len(corpus)} rows", (warmup + passes) * len(engines),
                       enabled=False if as_json else None) as bar:
        results = measure(engines, corpus, batch_size=batch_size, passes=passes, warmup=warmup, on_pass=bar.advance)
    torch_results = [r for r in results if r.engine.startswith("torch ")]
    torch_result = max(torch_results, key=lambda r: r.throughput) if torch_results else None
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
    if as_json:
        emit_json(report)
        return
    from rich.table import Table

    mean_tokens = results[0].tokens / max(results[0].rows, 1)
    table = Table(
        title=f"{default.head} · batch {batch_size} · {mean_tokens:.0f} tokens/row on average · {passes} passes",
        title_justify="left",
    )
    columns = ("engine", "p50 ms", "p90 ms", "p99 ms", "rows/s", "padding") + (("vs torch",) if torch_result else ())
    for column in columns:
        table.add_column(column, justify="left" if column == "engine" else "right")
    for entry, result in zip(report["engines"], results):
        table.add_row(
            result.engine, f"{result.percentile(50):.1f}", f"{result.percentile(90):.1f}", f"{result.percentile(99):.1f}",
            f"{result.throughput:.1f}", f"{result.padded_tokens / max(result.tokens, 1) - 1:.0%}",
            *([f"{entry['vs_torch']:.2f}x" if "vs_torch" in entry else ""] if torch_result else []),
        )
    out = console()
    out.print(table)
    machine = report["machine"]
    out.print(f"{threads} threads · CPU {' '.join(machine['isa']) or 'baseline x86-64'} · load average "
              f"{machine['load_average'][0]:.1f}" + (f" · vs torch: against {torch_result.engine}, the faster PyTorch"
                                                      if torch_result is not None else ""))
    if arrival is not None:
        out.print(f"length bucketing vs arrival order: {report['bucketing_speedup']:.2f}x throughput")


# --- serve: the HTTP server (headreg[serve]; torch is not imported) ----------------------------------------------


@cli.command(short_help="Serve bundles over HTTP with batching across requests.", epilog="""\b
Examples:
  headreg serve ./bundle --port 8080
  headreg serve sentiment=./bundle ner=./ner-bundle --threads 2""")
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE [NAME=BUNDLE ...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--max-batch-tokens", default=2048, show_default=True, type=click.IntRange(min=1),
              help="Tokens per batch, across requests (also caps rows x longest row).")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Rows per batch.")
@click.option("--max-concurrent-requests", default=512, show_default=True, type=click.IntRange(min=1),
              help="Requests in flight at once; more are answered 429 with Retry-After.")
@click.option("--max-input-texts", default=128, show_default=True, type=click.IntRange(min=1),
              help="Texts per request; more are answered 422.")
@click.option("--payload-limit", default=2_000_000, show_default=True, type=click.IntRange(min=1),
              help="Bytes per request body; more are answered 413.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="onnxruntime threads per model [default: the CPUs this process may use, container quota included].")
@click.option("--variant", default=None, help="Model variant for every bundle [default: each bundle's default].")
@click.option("--api-key", envvar="HEADREG_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /info and /v1 [env: HEADREG_API_KEY].")
@click.option("--keep-alive", default=75.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds an idle connection stays open (keep it above your load balancer's idle timeout).")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="One JSON line per request on stderr.")
@click.option("--default-model", default=None, metavar="NAME",
              help="The model the root TEI routes (/embed, /predict, /rerank, ...) answer for [default: the only one served].")
def serve(bundles: tuple[str, ...], host: str, port: int, max_batch_tokens: int, max_batch_size: int,
          max_concurrent_requests: int, max_input_texts: int, payload_limit: int, threads: int | None,
          variant: str | None, api_key: str | None, keep_alive: float, access_log: bool,
          default_model: str | None) -> None:
    """Serve bundles over HTTP with batching across requests (see docs/serving.md).

    A bundle is served under its directory name, or under NAME when given as NAME=PATH.
    """
    from .errors import require

    for module in ("uvicorn", "starlette", "prometheus_client"):
        try:
            require(module, "serve", "headreg serve")
        except ImportError as exc:
            usage_error(str(exc))
    from .runtime.cpus import available_cpus
    from .serve.app import ServeConfig, configure_logging, create_app, listen, serve as run_server
    from .serve.names import parse_bundle_args

    try:
        named = parse_bundle_args(bundles)
    except ValueError as exc:
        usage_error(str(exc))
    if default_model is not None and default_model not in named:
        usage_error(f"--default-model {default_model!r} is not among the served models ({', '.join(named)}); "
                    "name one of them")
    try:
        sock = listen(host, port)
    except OSError as exc:
        usage_error(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port (0 picks a free one) "
                    "or stop what is using this one")
    port = sock.getsockname()[1]
    threads = threads or available_cpus()
    configure_logging(access=access_log)
    predictors = {
        name: _load_predictor(path, threads=threads, variant=variant, max_batch_tokens=max_batch_tokens,
                              batch_size=max_batch_size)
        for name, path in named.items()
    }
    config = ServeConfig(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                         max_concurrent_requests=max_concurrent_requests, max_input_texts=max_input_texts,
                         payload_limit=payload_limit, api_key=api_key or None, default_model=default_model)
    click.echo(
        f"serving {', '.join(f'{n} ({plain(p.head)}, {p.variant})' for n, p in predictors.items())} on http://{host}:{port} "
        f"with {threads} thread(s) per model",
        err=True,
    )
    sys.exit(run_server(create_app(predictors, config), host=host, port=port, keep_alive=keep_alive, sock=sock))


# --- export / verify: headreg/export/commands.py (torch and onnx are imported only when they run) ----------------

from .export.commands import convert as _convert_command, export as _export_command, verify as _verify_command  # noqa: E402

cli.add_command(_export_command)
cli.add_command(_verify_command)
cli.add_command(_convert_command)


def _click_error(exc: click.ClickException) -> str:
    """click's message in headreg's style: ``what; what to do``."""
    message = exc.format_message().rstrip(".")
    message = message[:1].lower() + message[1:]
    context = getattr(exc, "ctx", None)
    if isinstance(exc, click.NoSuchOption) and context is not None and context.command.name == "predict":
        from .runtime.inputs import RUNTIME_OPTIONS

        name = exc.option_name.lstrip("-").replace("-", "_")
        if name in RUNTIME_OPTIONS:  # a head's per-call option, typed as a flag
            return f"no such option '{exc.option_name}'; per-call options go through --option: --option {name}=VALUE"
    if isinstance(exc, click.UsageError) and context is not None:
        if message.endswith("?"):  # "no such option '--x'. Did you mean '--y'?" ends a sentence already
            return f"{message} See '{context.command_path} --help'"
        return f"{message}; see '{context.command_path} --help'"
    return message


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one error style and exit code 2 for every usage error, click's included."""
    from .errors import PluginError, UnknownHeadError

    try:
        code = cli.main(args=argv, prog_name="headreg", standalone_mode=False)
    except click.UsageError as exc:
        usage_error(_click_error(exc))
    except click.ClickException as exc:  # bad file contents and the like: click's other errors
        fail(_click_error(exc), exc.exit_code)
    except click.Abort:
        fail("interrupted", 130)
    except UnknownHeadError as exc:
        usage_error(str(exc))
    except PluginError as exc:
        fail(str(exc), EXIT_FAILURE)
    finally:
        if argv is None:  # the process's own command line: it exits next
            skip_final_collection()
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def skip_final_collection() -> None:
    """Spare an exiting process the garbage collector's last pass over every object it holds.

    After importing torch and transformers that pass takes about a second on a 2-core machine, after the
    command's work is done (measured in benchmarks/export_speed.py). Frozen objects are left to the OS; atexit
    handlers, weakref finalizers and module teardown still run, and headreg closes its files explicitly.
    Called only where the process exits next: a caller of ``main([...])`` keeps collecting.
    """
    import gc

    gc.freeze()


if __name__ == "__main__":
    main()
