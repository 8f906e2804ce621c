"""``headreg predict``: the torch-free runtime on texts from the command line, a file or stdin."""

from __future__ import annotations

import json
from typing import Any

import click

from .bundles import VARIANT_CHOICES, load_predictor
from .output import EXIT_FAILURE, cell, console, emit_json, fail, plain, usage_error


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


@click.command(short_help="Predict with an exported bundle (onnxruntime only, no torch).", epilog="""\b
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
@click.option("--variant", type=click.Choice(VARIANT_CHOICES), default=None,
              help="Model variant [default: auto, the rule of docs/runtime.md for this bundle on this machine].")
@click.option("--long-text", type=click.Choice(["truncate", "window"]), default=None,
              help="Texts longer than the bundle's max_length: cut them, or predict over overlapping windows "
                   "[default: truncate].")
@click.option("--window-stride", "window_stride", type=click.IntRange(min=0), default=None,
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
            threads: int | None, variant: str | None, long_text: str | None,
            window_stride: int | None, window_reduce: str | None, max_windows: int | None,
            per_call: tuple[str, ...], verify_files: bool) -> None:
    """Predict with an exported BUNDLE: labels and scores per text (onnxruntime only; torch is not imported).

    Texts come as arguments, from --file, or both.
    """
    from ..errors import PredictionError
    from ..runtime.inputs import InputError, read_texts

    items: list[Any] = list(texts)
    if text_file is not None:
        try:
            from_file = read_texts(text_file)
        except (OSError, UnicodeDecodeError, InputError) as exc:
            usage_error(f"cannot read --file {text_file}: {exc}")
        if not from_file and not items:
            where = "stdin" if text_file == "-" else text_file
            usage_error(f"--file {where} is empty (no lines of text); put one text per line in it, or give texts "
                        "as arguments")
        items += from_file
    if not items:
        usage_error("give texts as arguments or with --file")
    extra = _per_call_options(per_call)
    for name in {"long_text", "window_stride", "window_reduce", "max_windows"} & set(extra):
        usage_error(f"give {name} as --{name.replace('_', '-')}, not --option")
    from ..isolation import stdout_to_stderr

    # A head's postprocess is plugin code: whatever it prints goes to stderr, so stdout holds only the results.
    with stdout_to_stderr():
        # On one's own machine --max-windows is also the ceiling (a server's --max-windows caps its clients).
        ceiling = {"max_windows": max_windows} if max_windows is not None else {}
        predictor = load_predictor(bundle, threads=threads, variant=variant,
                                    batch_size=batch_size, verify_files=verify_files, **ceiling)
        try:
            options = dict(long_text=long_text, window_stride=window_stride, window_reduce=window_reduce,
                           max_windows=max_windows)
            options = {name: value for name, value in options.items() if value is not None}
            results = predictor.predict(items, **options, **extra)
        except InputError as exc:
            usage_error(str(exc))
        except PredictionError as exc:  # the bundle could not answer (its model failed): not the user's input
            fail(str(exc), EXIT_FAILURE)
    if as_json:
        emit_json([
            {"text": item, "result": result} if isinstance(item, str)
            else {"text": item[0], "text_pair": item[1], "result": result}
            for item, result in zip(items, results)
        ])
        return
    from rich.table import Table

    table = Table(title=f"{predictor.head} · {len(items)} text(s) · {predictor.variant}", title_justify="left")
    if predictor.multi_head:  # a column per head that answered (heads= may select some): "prediction (score)"
        answered = [head.name for head in predictor.heads if head.name in results[0]]
        for column in ("#", "text", *answered):
            table.add_column(column, overflow="fold")
        for index, (item, result) in enumerate(zip(items, results)):
            cells = [_prediction_cells(result[name]) for name in answered]
            table.add_row(str(index), cell(_short(item)), *(cell(f"{p} ({s})" if s else p) for p, s in cells))
    else:
        for column in ("#", "text", "prediction", "score"):
            table.add_column(column, overflow="fold")
        for index, (item, result) in enumerate(zip(items, results)):
            table.add_row(str(index), cell(_short(item)), *map(cell, _prediction_cells(result)))
    console().print(table)
