"""``headreg export``, ``headreg verify`` and ``headreg convert``: the verified ONNX export and its re-check.

Importing this module costs only click; torch and onnx are imported when a command runs.
Exit codes: 0 ok, 1 verification failure (report printed, nothing written), 2 usage error.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import click

from .bundles import check_bundle
from .output import EXIT_FAILURE, console, emit_json, fail, usage_error


def _require_export_extra(command: str, modules: tuple[str, ...]) -> None:
    """Exit 2 with one line naming the extra when a module the command needs is missing (a runtime-only install).

    Looked up, not imported: the file checks that follow stay fast, torch is imported when the model loads.
    """
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            usage_error(f"{command} needs {module!r}, which is not installed. Install it with: "
                        "pip install 'headreg[export]'")


RULE = "pass rule, per element: |onnxruntime - PyTorch| <= atol + rtol * |PyTorch|"


def _ratio(value: float) -> str:
    """The worst |diff| as a fraction of what the rule allows: <= 1 passes."""
    return f"{value:.2f}" if value >= 0.01 else f"{value:.0e}"


def print_report(report: Any, *, stderr: bool = False) -> None:
    """Every case: shape, padding, worst diff against the allowed bound, problems."""
    from rich.table import Table

    table = Table(title=report.message().splitlines()[0], title_justify="left")
    outputs = sorted({name for case in report.cases for name in case.outputs})
    for column in ("case", "shape", "lengths", *[f"{name} / allowed" for name in outputs], "status"):
        table.add_column(column)
    for case in report.cases:
        diffs = [_ratio(case.outputs[name].bound_ratio) if name in case.outputs else "-" for name in outputs]
        lengths = ",".join(map(str, case.lengths[:6])) + ("…" if len(case.lengths) > 6 else "")
        status = "[green]pass[/]" if case.passed else "[red]FAIL: " + "; ".join(case.problems) + "[/]"
        table.add_row(case.name, "x".join(map(str, case.shape)), f"{lengths} ({case.padding_side})", *diffs, status)
    out = console(stderr=stderr)
    out.print(table)
    _print_rule(out, report, "'/ allowed'")
    for problem in report.problems:
        out.print(f"[red]✗[/] {problem}")
    for note in report.notes:
        out.print(f"note: {note}")


def _print_rule(out: Any, report: Any, column: str) -> None:
    """The pass rule and how to read the ratio column, a line each (one long line wraps mid-phrase)."""
    out.print(f"{RULE} (atol={report.atol:g}, rtol={report.rtol:g})")
    out.print(f"{column}: the worst |diff| as a fraction of that bound; <= 1 passes")


def print_summary(bundle: Any) -> None:
    from rich.table import Table

    out = console()
    report = bundle.report
    checks = Table(title=f"verified {len(report.cases)} cases: {bundle.path}", title_justify="left")
    for column in ("output", "worst abs diff", "worst / allowed", "verdict"):
        checks.add_column(column)
    for name, diff in report.worst().items():
        ratio = diff.get("bound_ratio", 0.0)
        checks.add_row(name, f"{diff['abs']:.2e}", _ratio(ratio), "[green]pass[/]" if ratio <= 1 else "[red]FAIL[/]")
    out.print(checks)
    _print_rule(out, report, "'worst / allowed'")
    files = Table(title="files", title_justify="left")
    files.add_column("file")
    files.add_column("size", justify="right")
    for name, size in bundle.sizes.items():
        files.add_row(name, f"{size / 1e6:.1f} MB")
    steps = Table(title="steps", title_justify="left")
    for column in ("step", "seconds", "peak RSS"):
        steps.add_column(column, justify="left" if column == "step" else "right")
    for step in bundle.steps:
        steps.add_row(step.name, f"{step.seconds:.1f}", f"{step.peak_rss_mb:.0f} MB")
    steps.add_row("total", f"{sum(s.seconds for s in bundle.steps):.1f}", "")
    out.print(files)
    out.print(steps)
    exporter = bundle.manifest.get("exporter")
    if exporter:
        out.print(f"traced with the {exporter} exporter")
    if bundle.optimization is not None:
        opt = bundle.optimization
        fused = ", ".join(f"{k} {v}" for k, v in opt.get("fused", {}).items()) or "nothing"
        verdict = "kept" if opt["accepted"] else f"not kept: {opt.get('reason', '')}"
        speed = f", {opt['speedup']:.2f}x vs unfused" if opt.get("speedup") else ""
        out.print(f"optimize: fused {fused}{speed}; {verdict}")
    if bundle.int8 is not None:
        int8 = bundle.int8
        quant = int8["quantization"]
        out.print(
            f"int8 ({quant['kind']} {quant['format']}, {quant['method']} calibration on {quant['calibration_rows']} "
            f"texts, size {quant['size_ratio']:.0%} of fp32): {int8['acceptance']['summary']}; "
            f"{_invariant(int8)}; on the production cases {int8['golden_agreement']:.1%} identical results (headreg "
            "verify holds it to one point less)"
        )
    if bundle.bf16 is not None:
        bf16 = bundle.bf16
        out.print(f"bf16 (OpenVINO, padded to {bf16['pad_to_multiple_of']}-token multiples): "
                  f"{bf16['acceptance']['summary']}; {_invariant(bf16)}")
    if bundle.int8_ov is not None:
        out.print(int8_ov_line(bundle.int8_ov))
    variant, reason = bundle.serves_here()
    out.print(f"serves here: {variant} ({reason})")


def _label_names(labels: str | None, id2label_file: str | None) -> Any:
    """--labels a,b,c or --id2label FILE (a JSON list of names, or an object of index -> name), or None."""
    from ..manifest import loads_strict

    if labels is not None and id2label_file is not None:
        usage_error("--labels and --id2label both name the labels; pass one of them")
    if labels is not None:
        return [name.strip() for name in labels.split(",")]
    if id2label_file is None:
        return None
    from pathlib import Path

    try:
        if Path(id2label_file).stat().st_size > 1 << 20:
            raise ValueError("it is larger than 1 MB")
        data = loads_strict(Path(id2label_file).read_text("utf-8"))  # a key given twice would drop a label
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        usage_error(f"cannot read --id2label {id2label_file}: {exc}; give a JSON list of names or "
                    '{"0": "neg", ...}')
    if not isinstance(data, (list, dict)):
        usage_error(f"--id2label {id2label_file} holds a {type(data).__name__}; give a JSON list of names or "
                    '{"0": "neg", ...}')
    return data


def int8_ov_line(result: dict) -> str:
    """One line on the OpenVINO int8 variant: accepted with its figures, or refused with them."""
    record = result.get("record")
    quant = (record or result)["quantization"]
    search = quant["search"]
    tried = ", ".join(f"{t['smooth_quant_alpha']:g}: {t['kept']:.1%}" for t in search["tried"])
    made = (f"NNCF {quant['nncf']}, calibrated on {quant['calibration_rows']} texts, SmoothQuant alpha "
            f"{quant['smooth_quant_alpha']:g} chosen by the calibration texts kept ({tried})")
    control = quant.get("accuracy_control")
    if control is not None:
        outcome = ("used" if control["used"] else control.get("stopped") or
                   f"not used: held-out {'; '.join(control.get('held_out', {}).values())}")
        made += (f"; NNCF accuracy control reverted {len(control.get('reverted', []))} operations to floating point in "
                 f"{control['seconds']:g} s ({outcome})")
    if record is None:
        return f"int8-ov NOT written ({made}): {result['refused']}"
    return (f"int8-ov (OpenVINO, {made}, padded to {record['pad_to_multiple_of']}-token multiples): "
            f"{record['acceptance']['summary']}; {_invariant(record)}")


def _invariant(record: dict) -> str:
    """A variant's batch-invariance figures, as every variant's line gives them."""
    inv = record["batch_invariance"]
    return (f"batch-invariant: max abs diff {inv['max_abs_diff']:.1e} over {inv['checks']} checks "
            f"(tolerance {inv['tolerance']:g})")


EXPORT_EPILOG = """\b
Examples:
  headreg export ./my-model -o ./bundle           # from HeadedModel.save_pretrained
  headreg export ./checkpoint -o ./bundle --quantize int8   # *ForSequenceClassification
  headreg export ./encoder --head seq_cls --num-labels 3 -o ./bundle   # a fresh head
  headreg export ./encoder --head seq_cls --labels neg,pos --pooling mean -o ./bundle
  headreg export ./old-checkpoint -o ./bundle --allow-bin   # pytorch_model.bin only"""


@click.command("export", short_help="Export SOURCE to a verified ONNX bundle.",
               epilog=EXPORT_EPILOG)
@click.argument("source", type=click.Path())
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--head", default=None, help="Attach this fresh head to a backbone SOURCE (see 'headreg heads'); needs --num-labels.")
@click.option("--num-labels", default=None, type=click.IntRange(min=1), help="Labels (outputs) of the fresh --head.")
@click.option("--labels", default=None, metavar="A,B,C",
              help="Label names of the fresh --head, in order (sets --num-labels).")
@click.option("--id2label", "id2label_file", default=None, type=click.Path(dir_okay=False),
              help="JSON file of the fresh --head's label names: a list, or {\"0\": \"neg\", ...}.")
@click.option("--pooling", default=None,
              help="Pooling of the fresh --head's pooled_output: auto | cls | pooler | mean | max | mean_sqrt_len | "
                   "last [default: auto: a sentence-transformers checkpoint's modules.json (Pooling, Dense, "
                   "Normalize), else what transformers' own task model does].")
@click.option("--tokenizer", default=None, type=click.Path(exists=True), help="Tokenizer dir or tokenizer.json [default: SOURCE's].")
@click.option("--opset", default=None, type=click.IntRange(min=14), help="ONNX opset [default: the exporter's].")
@click.option("--atol", default=1e-4, show_default=True, type=click.FloatRange(min=0),
              help="Absolute tolerance of verification.")
@click.option("--rtol", default=1e-3, show_default=True, type=click.FloatRange(min=0),
              help="Relative tolerance of verification.")
@click.option("--max-length", default=None, type=click.IntRange(min=1),
              help="Longest input in tokens the bundle accepts and is verified at; the runtime truncates to it "
                   "[default: a sentence-transformers checkpoint's max_seq_length, else what the backbone's "
                   "position table allows, e.g. 512].")
@click.option("--optimize", is_flag=True, help="Fuse for onnxruntime; kept only if it verifies and is not slower.")
@click.option("--quantize", type=click.Choice(["int8", "int8-ov"]), multiple=True,
              help="Also write an int8 variant (repeat for both): int8 (onnxruntime static, model.int8.onnx) or "
                   "int8-ov (OpenVINO, NNCF post-training int8, model.int8-ov.xml; needs a CPU with VNNI and "
                   "bf16 and headreg[openvino]; left out, with the figures, where it cannot keep --min-agreement).")
@click.option("--calibration-texts", "calibration_file", default=None, type=click.Path(dir_okay=False),
              help="Texts like your traffic (one per line, or JSONL with text/text_pair): int8 calibrates on part, "
                   "is accepted on the held-out rest [default: headreg's built-in texts].")
@click.option("--calibration-method", default="percentile", show_default=True,
              type=click.Choice(["percentile", "minmax", "entropy"]), help="How int8 activation ranges are set.")
@click.option("--min-agreement", "min_agreement", default=0.99, show_default=True,
              type=click.FloatRange(0, 1),
              help="Fraction of held-out texts whose result (label, label set, entity set) must equal PyTorch's.")
@click.option("--near-tie", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Disagreements whose PyTorch margin is below this are reported as near-ties.")
@click.option("--max-error", default=0.05, show_default=True, type=click.FloatRange(min=0),
              help="Regression heads: max abs error allowed, times max(std of the values, 1).")
@click.option("--bf16", is_flag=True,
              help="Also add a bf16 variant (OpenVINO runs model.onnx in bf16), judged like int8; needs a CPU with "
                   "AVX-512 BF16 or AMX and headreg[openvino].")
@click.option("--exporter", type=click.Choice(["auto", "torchscript", "dynamo"]), default="auto", show_default=True,
              help="torch.onnx exporter; auto: TorchScript (fast), dynamo when TorchScript fails or does not verify "
                   "(dynamo first with --optimize).")
@click.option("--allow-bin", is_flag=True,
              help="Load weights stored only as pytorch_model.bin, with torch.load(weights_only=True).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only (no progress).")
def export(source: str, out_dir: str, head: str | None, num_labels: int | None, labels: str | None,
           id2label_file: str | None, pooling: str | None, tokenizer: str | None,
           opset: int | None, atol: float, rtol: float, max_length: int | None, optimize: bool, quantize: tuple[str, ...],
           calibration_file: str | None, calibration_method: str, min_agreement: float, near_tie: float,
           max_error: float, bf16: bool, exporter: str, allow_bin: bool, overwrite: bool, as_json: bool) -> None:
    """Export SOURCE to a verified ONNX bundle in DIR (-o).

    SOURCE is a directory saved by HeadedModel.save_pretrained, a transformers checkpoint with a task
    head, or a backbone with --head NAME --num-labels N (a fresh, untrained head). Nothing is written unless
    onnxruntime reproduces PyTorch on every verification case. Steps are shown on stderr on a terminal.
    """
    _require_export_extra("headreg export", ("torch", "transformers", "onnx"))  # reading the source may need torch
    # Everything that can be checked from the files is checked before the model is loaded.
    plan = _checked_source(source, out_dir, head=head, num_labels=num_labels, tokenizer=tokenizer, allow_bin=allow_bin,
                           overwrite=overwrite, pooling=pooling, id2label=_label_names(labels, id2label_file))
    calibration_texts = _calibration_texts(calibration_file, reduced_precision=bool(quantize) or bf16)
    from ..export.pipeline import ExportOptionError, ExportOptions

    try:
        options = ExportOptions(
            exporter=exporter, opset=opset, max_length=max_length, atol=atol, rtol=rtol, optimize=optimize,
            quantize=quantize, bf16=bf16, calibration_texts=calibration_texts, calibration_method=calibration_method,
            min_agreement=min_agreement, near_tie=near_tie, max_error=max_error,
        )
    except ExportOptionError as exc:
        usage_error(str(exc))
    bundle = _export_or_exit(plan, out_dir, options, overwrite=overwrite, as_json=as_json)
    if as_json:
        emit_json(bundle.summary())
    else:
        print_summary(bundle)


def _checked_source(source: str, out_dir: str, *, head: str | None, num_labels: int | None, tokenizer: str | None,
                    allow_bin: bool, overwrite: bool, pooling: str | None, id2label: Any) -> Any:
    """What SOURCE holds (a SourcePlan), or exit 2: the output place, the source's files, a tokenizer (no torch)."""
    from pathlib import Path

    from ..atomic import check_target
    from ..errors import SaveLoadError, UnknownHeadError
    from ..export.source import SourceError, inspect_source
    from ..manifest import BUNDLE_KIND, is_bundle

    try:
        check_target(Path(out_dir), overwrite=overwrite, replaceable=is_bundle, what=BUNDLE_KIND, protect=[source])
    except SaveLoadError as exc:
        usage_error(str(exc))
    try:
        plan = inspect_source(source, head=head, num_labels=num_labels, tokenizer=tokenizer, allow_bin=allow_bin,
                              pooling=pooling, id2label=id2label)
    except (SourceError, UnknownHeadError) as exc:
        usage_error(str(exc))
    if plan.tokenizer is None:
        usage_error(f"no tokenizer found in {source}; pass --tokenizer DIR_OR_TOKENIZER_JSON")
    if tokenizer is not None and Path(tokenizer).is_file():  # read now, not after the model has loaded
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(tokenizer)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
            usage_error(f"--tokenizer {tokenizer} is not a tokenizer.json tokenizers can read "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); pass the tokenizer's "
                        "directory or its tokenizer.json")
    if plan.pickled:
        click.echo(f"note: loading {plan.path}/pytorch_model.bin with torch.load(weights_only=True) (--allow-bin): "
                   "tensors only, no arbitrary objects", err=True)
    return plan


def _calibration_texts(path: str | None, *, reduced_precision: bool) -> list[Any] | None:
    """The texts of --calibration-texts, or exit 2 (unreadable, too few, or no variant to calibrate)."""
    if path is None:
        return None
    from ..export.acceptance import AcceptanceError, split_texts
    from ..runtime.inputs import InputError, read_texts

    if not reduced_precision:
        usage_error("--calibration-texts calibrates and accepts a reduced-precision variant: add --quantize int8 "
                    "and/or --bf16")
    try:
        texts = read_texts(path)
        split_texts(texts, source="user")  # too few texts: said before torch loads
    except (OSError, UnicodeDecodeError, InputError, AcceptanceError) as exc:
        usage_error(f"cannot use --calibration-texts {path}: {exc}")
    return texts


def _export_or_exit(plan: Any, out_dir: str, options: Any, *, overwrite: bool, as_json: bool) -> Any:
    """Load the source and export it: the Bundle, or exit with the report (1), a usage error (2) or 130."""
    from ..atomic import Terminated
    from ..errors import HeadConfigError, SaveLoadError, VerificationError
    from ..export.pipeline import ExportOptionError, Step, export_onnx, peak_rss_mb
    from ..export.source import SourceError, load_source
    from ..export.tokenizer import TokenizerError
    from ..export.trace import ExportError
    from ..export.verify import VerificationFailed
    from ..progress import StepProgress

    progress = StepProgress(enabled=False if as_json else None)
    try:
        try:
            progress("load", "start", {})
            start = time.perf_counter()
            loaded = load_source(plan.path, plan=plan)
            load_step = Step("load", round(time.perf_counter() - start, 3), round(peak_rss_mb(), 1))
            progress("load", "done", {"kind": plan.kind, "seconds": load_step.seconds})
            if loaded.untrained:
                click.echo(f"warning: head {loaded.model.head_name!r} is freshly initialised (untrained): the "
                           "bundle's predictions are random until you train it", err=True)
            if options.max_length is None and loaded.max_length is not None:  # a sentence-transformers max_seq_length
                options = dataclasses.replace(options, max_length=loaded.max_length)
            bundle = export_onnx(loaded.model, out_dir, loaded.tokenizer, options, overwrite=overwrite,
                                 source=loaded.info, progress=progress)
        finally:  # the spinner stops before anything below prints
            progress.stop()
        bundle.steps.insert(0, load_step)
        return bundle
    except VerificationFailed as exc:
        if as_json:
            emit_json({"passed": False, "error": str(exc), "report": exc.report.to_dict()})
        else:
            print_report(exc.report, stderr=True)
        fail(f"verification failed, no bundle was written to {out_dir}; see the cases above, and "
             "docs/export.md for what is checked", EXIT_FAILURE)
    except (VerificationError, ExportError, TokenizerError) as exc:
        fail(f"{exc}; no bundle was written to {out_dir}", EXIT_FAILURE)
    except (SourceError, SaveLoadError, HeadConfigError, ExportOptionError) as exc:
        usage_error(str(exc))
    except (KeyboardInterrupt, Terminated) as exc:
        if getattr(exc, "written", None) is not None:
            fail(f"interrupted after the export had finished: the bundle in {out_dir} is complete and verified", 130)
        fail(f"interrupted; no bundle was written to {out_dir}", 130)


@click.command("verify", short_help="Re-check a bundle with the installed onnxruntime (no torch needed).",
               epilog="""\b
Examples:
  headreg verify ./bundle
  headreg verify ./bundle --json""")
@click.argument("bundle_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def verify(bundle_dir: str, threads: int | None, as_json: bool) -> None:
    """Re-run the bundle's golden cases with the installed onnxruntime and check its files and manifest.

    Needs no torch: outputs against the golden ones, and the bundle's own Predictor on the production cases
    (each result as a user reads it)."""
    from ..errors import BundleError
    from ..export.recheck import verify_bundle
    from ..manifest import is_bundle

    if not is_bundle(bundle_dir):  # not a bundle at all: exit 2; a broken one is verify's to report (--json too)
        check_bundle(bundle_dir)
    try:
        report = verify_bundle(bundle_dir, threads=threads)
    except BundleError as exc:
        if as_json:
            emit_json({"passed": False, "error": str(exc)})
        fail(str(exc), EXIT_FAILURE)
    if as_json:
        emit_json(report.to_dict())
    else:
        print_report(report)
    if not report.passed:
        message = report.message().replace("\n", " ", 1)
        fail(message if message.rstrip().endswith("export the bundle again") else f"{message}; export the bundle again",
             EXIT_FAILURE)


@click.command("convert", short_help="Rewrite a pytorch_model.bin checkpoint as safetensors.",
               epilog="""\b
Example:
  headreg convert ./old-checkpoint ./checkpoint && headreg export ./checkpoint -o ./bundle""")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty TARGET.")
def convert(source: str, target: str, overwrite: bool) -> None:
    """Copy the checkpoint SOURCE to TARGET with model.safetensors instead of pytorch_model.bin.

    The .bin is read once with torch.load(weights_only=True) (tensors only); config and tokenizer files are
    copied as they are. headreg loads TARGET without unpickling anything.
    """
    from ..export.source import SourceError, convert_to_safetensors

    _require_export_extra("headreg convert", ("torch", "safetensors"))
    try:
        written = convert_to_safetensors(source, target, overwrite=overwrite)
    except SourceError as exc:
        usage_error(str(exc))
    click.echo(f"wrote {written}/model.safetensors (read {source}/pytorch_model.bin with torch.load(weights_only=True))",
               err=True)
