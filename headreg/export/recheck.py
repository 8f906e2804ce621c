"""Re-checking a written bundle (``headreg verify``): files, manifest, golden cases, batch invariance, the bundle's
own Predictor on the production cases, int8. Torch-free: the heads' results are compared by their runtime postprocess.

Export verification (:mod:`.verify`) compares two engines on cases it makes; this module re-runs what a bundle
recorded with the onnxruntime installed now, so an upgrade or a changed file shows before production does.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from .acceptance import session_invariance
from .cases import Case
from .verify import Report, compare_cases, load_golden, read_golden, run_cases, run_onnx


def token_outputs_of(manifest: dict[str, Any]) -> set[str]:
    from ..manifest import bundle_heads

    return {
        (entry.get("outputs") or {}).get("logits", "logits")
        for entry in bundle_heads(manifest)
        if entry.get("level") == "token"
    }


def _session_signature(session: Any) -> tuple[dict[str, list], dict[str, list]]:
    """Input and output dims as onnxruntime sees them: torch- and onnx-free, so a runtime-only install verifies."""
    def dims(arg: Any) -> list:
        return [0 if d is None else d for d in arg.shape]

    return {i.name: dims(i) for i in session.get_inputs()}, {o.name: dims(o) for o in session.get_outputs()}


def _bundle_problems(bundle_dir: Path, manifest: dict[str, Any], recorded: dict[str, Any], session: Any) -> list[str]:
    """Files changed since export, or a manifest that no longer describes the graph."""
    from ..manifest import MANIFEST_FILE, bundle_path, sha256_file

    problems = []
    if recorded.get("manifest_sha256") and recorded["manifest_sha256"] != sha256_file(bundle_dir / MANIFEST_FILE):
        problems.append(f"{MANIFEST_FILE} was modified after export (its sha256 differs from the one recorded in "
                        "verification.json); export the bundle again")
    for name, digest in manifest.get("files", {}).items():
        try:
            path = bundle_path(bundle_dir, name)
        except BundleError as exc:
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{name} is listed in the manifest but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name} was modified after export (sha256 differs from the manifest); export again")
    tokenizer = manifest.get("tokenizer", {})
    tok_path = bundle_path(bundle_dir, tokenizer.get("file", "tokenizer.json"), what="tokenizer file")
    if tok_path.is_file() and tokenizer.get("sha256") and sha256_file(tok_path) != tokenizer["sha256"]:
        problems.append(f"{tok_path.name} was modified after export (sha256 differs from the manifest)")
    if session is None:
        return problems
    inputs, outputs = _session_signature(session)
    if list(inputs) != list(manifest.get("inputs", [])):
        problems.append(f"manifest inputs {manifest.get('inputs')} do not match the graph's {list(inputs)}")
    # The manifest is written with sorted keys, so compare names, not order (head extras follow the graph order).
    if sorted(outputs) != sorted(manifest.get("outputs", {})):
        problems.append(f"manifest outputs {list(manifest.get('outputs', {}))} do not match the graph's {list(outputs)}")
    # Compare with the dims recorded at export, not num_labels: an ordinal head has num_labels - 1 logits.
    for name, dims in outputs.items():
        declared = (manifest.get("outputs") or {}).get(name)
        if isinstance(declared, list) and declared != dims:
            problems.append(f"manifest output {name} has dims {declared} but the graph's has {dims}")
    from ..manifest import bundle_heads, is_multi_head

    listed = manifest.get("heads")
    if not is_multi_head(manifest) and isinstance(listed, list):
        effective = bundle_heads(manifest)[0]
        fields = ("head", "postprocess", "postprocess_config", "num_labels", "id2label", "outputs")
        if len(listed) != 1 or any(listed[0].get(key) != effective.get(key) for key in fields):
            problems.append("manifest heads list does not describe the bundle's single head (head, postprocess, "
                            "labels or outputs differ from the top-level fields); export the bundle again")
    elif is_multi_head(manifest) and not listed:
        problems.append("manifest says multi_head but lists no heads; export the bundle again")
    for entry in bundle_heads(manifest):
        id2label, num_labels = entry.get("id2label") or {}, entry.get("num_labels")
        if len(id2label) not in (0, num_labels):
            problems.append(f"head {entry.get('name')!r}: manifest id2label has {len(id2label)} labels, num_labels={num_labels}")
        missing = sorted(set((entry.get("outputs") or {}).values()) - set(outputs))
        if missing:
            problems.append(f"head {entry.get('name')!r} names outputs {missing} that the graph does not have")
    return problems


def _recheck_invariance(report: Report, session: Any, cases: list[Case], actual: list[dict[str, np.ndarray]],
                        manifest: dict[str, Any], token_outputs: set[str], atol: float) -> None:
    """fp32's batch invariance again, as the export measured it: every golden row alone vs in its batch."""
    padding_side = str(manifest.get("padding_side", "right"))
    recorded = (manifest.get("variants", {}).get("fp32", {}) or {}).get("batch_invariance") or {}
    tolerance = float(recorded.get("tolerance", atol))
    record = session_invariance(functools.partial(run_onnx, session), cases, actual, padding_side=padding_side,
                                token_outputs=token_outputs, tolerance=tolerance)
    verdict = "passes" if record["passed"] else "FAILS"
    report.notes.append(f"{report.target}: batch invariance, max abs diff {record['max_abs_diff']:.1e} over "
                        f"{record['checks']} rows alone vs in their batch (tolerance {tolerance:g}): {verdict}")
    if not record["passed"]:
        report.problems.append(
            f"{report.target}: a row's outputs now depend on its batch (max abs diff {record['max_abs_diff']:.2e} on "
            f"{record['worst_output']}, tolerance {tolerance:g}); this onnxruntime build changed the model's "
            "numerics: pin the onnxruntime the bundle was exported with, or export again and re-check"
        )
        report.problems_are = "the bundle is no longer batch-invariant here"


def _recheck_production(report: Report, bundle_dir: Path, recorded: dict[str, Any], arrays: dict[str, np.ndarray], *,
                        manifest: dict[str, Any], threads: int | None, atol: float, rtol: float) -> None:
    """The production cases again, through the bundle's own Predictor (fp32), against the PyTorch rows recorded
    at export: what predict runs, torch-free. A bundle written before they were recorded says so in a note.
    Variants whose own rows were recorded (``variant_rows``: OpenVINO's) run them again too, held to those rows."""
    production = recorded.get("production") or {}
    if production.get("described") is None:
        report.notes.append("no production cases recorded (exported by an older headreg): the bundle's Predictor "
                            "was not re-run on them; export again to record them")
        return
    for variant in ("fp32", *(production.get("variant_rows") or [])):
        _recheck_variant(report, bundle_dir, manifest, production["described"], arrays, str(variant),
                         threads=threads, atol=atol, rtol=rtol)


def _recheck_variant(report: Report, bundle_dir: Path, manifest: dict[str, Any], described: Any,
                     arrays: dict[str, np.ndarray], variant: str, *, threads: int | None, atol: float, rtol: float) -> None:
    from ..errors import HeadregError
    from ..runtime.predictor import Predictor
    from ..runtime.variants import variant_records, why_not
    from .production import PREFIX, failures, read_cases, variant_prefix, verify_production

    fp32 = variant == "fp32"
    against = "PyTorch's recorded rows" if fp32 else "its own rows recorded at export"
    if not fp32:
        record = variant_records(manifest).get(variant)
        reason = "the manifest has no such variant" if record is None else why_not(record, runs=True)
        if reason is not None:
            report.notes.append(f"the {variant} variant's production cases were not re-run here: {reason}")
            return
    try:
        cases, expected = read_cases(described, arrays, prefix=PREFIX if fp32 else variant_prefix(variant))
        predictor = Predictor(bundle_dir, variant=variant, threads=threads)
        result = verify_production(predictor, cases, expected, atol=atol, rtol=rtol)
    except HeadregError as exc:
        report.problems.append(f"the bundle's Predictor ({variant}) cannot run its production cases: {exc}")
        report.problems_are = "the bundle's own Predictor fails where export verified it"
        return
    verdict = "passes" if result["passed"] else "FAILS"
    report.notes.append(f"the bundle's Predictor ({variant}) on {len(cases)} production cases (mixed-length batches, "
                        f"windows, pairs) against {against}: {verdict}")
    if not result["passed"]:
        report.problems.extend(problem if fp32 else f"{variant}: {problem}" for problem in failures(result))
        report.problems_are = ("the bundle's own Predictor no longer reproduces PyTorch" if fp32 else
                               f"the {variant} variant no longer gives the answers it was accepted with (another "
                               "OpenVINO or CPU than at export, or changed files): export again here")


def verify_bundle(bundle_dir: str | Path, *, threads: int | None = None) -> Report:
    """Re-run a bundle's golden cases with the installed onnxruntime and re-check files and manifest.

    >>> verify_bundle("bundle/").passed     # doctest: +SKIP
    True
    """

    from ..manifest import (
        GOLDEN_FILE,
        VERIFICATION_FILE,
        VERIFICATION_MAX_BYTES,
        bundle_path,
        head_output_problems,
        read_json_file,
        read_manifest,
    )
    from ..runtime.session import create_session

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for name in (VERIFICATION_FILE, GOLDEN_FILE):
        if not (bundle_dir / name).is_file():
            raise BundleError(f"{bundle_dir} has no {name}; it was not written by 'headreg export' or is incomplete")
    try:
        recorded = read_json_file(bundle_dir / VERIFICATION_FILE, VERIFICATION_MAX_BYTES)
        descriptions = recorded["case_results"]
        settings = manifest["verification"]
        atol, rtol = float(settings["atol"]), float(settings["rtol"])
    except (BundleError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{bundle_dir} has an unreadable verification record: {exc}") from exc
    model_file = manifest.get("variants", {}).get("fp32", {}).get("file", "model.onnx")
    model_path = bundle_path(bundle_dir, model_file, what="fp32 model file")
    try:
        session = create_session(model_path, threads=threads)
    except Exception as exc:  # onnxruntime's own exception types
        problems = _bundle_problems(bundle_dir, manifest, recorded, None)
        return Report([], atol, rtol, model_file, problems=problems + [f"onnxruntime cannot load {model_file}: {exc}"])
    problems = _bundle_problems(bundle_dir, manifest, recorded, session)
    mismatched = head_output_problems(manifest, _session_signature(session)[1])
    if mismatched:  # a head over a graph of another kind: its checks and postprocess would not run on these outputs
        return Report([], atol, rtol, model_file, problems=problems + mismatched)
    arrays = read_golden(bundle_dir / GOLDEN_FILE)
    cases, expected = load_golden(bundle_dir / GOLDEN_FILE, descriptions, arrays)
    token_outputs = token_outputs_of(manifest)
    actual = run_cases(session, cases)
    report = compare_cases(cases, expected, actual, token_outputs=token_outputs, atol=atol, rtol=rtol, target=model_file)
    report.problems.extend(problems)
    if report.passed:
        _recheck_invariance(report, session, cases, actual, manifest, token_outputs, atol)
    if report.passed:
        _recheck_production(report, bundle_dir, recorded, arrays, manifest=manifest, threads=threads, atol=atol,
                            rtol=rtol)
    if manifest.get("variants", {}).get("int8"):
        _recheck_int8(report, bundle_dir, manifest, recorded, arrays, threads=threads)
    return report


def _recheck_int8(report: Report, bundle_dir: Path, manifest: dict[str, Any], recorded: dict[str, Any],
                  arrays: dict[str, np.ndarray], *, threads: int | None) -> None:
    """The onnxruntime int8 variant's decision agreement again: its own Predictor on the production cases, each
    input's result as a user reads it against the one PyTorch's recorded rows give; held to :func:`_int8_floor`."""
    from ..manifest import bundle_path
    from ..runtime.predictor import Predictor
    from ..runtime.variants import select_variant
    from .production import case_rows, read_cases, variant_agreement

    int8 = manifest["variants"]["int8"]
    try:
        bundle_path(bundle_dir, str(int8.get("file")), what="int8 model file")
    except BundleError as exc:  # missing, or leads out of the bundle
        report.problems.append(f"onnxruntime cannot load {int8.get('file')}: {exc} (with --quantize int8)")
        return
    described = (recorded.get("production") or {}).get("described")
    try:
        select_variant(manifest, "int8")  # BundleError where this machine cannot run it (backend, CPU)
        if described is None:
            raise BundleError("no production cases recorded (exported by an older headreg); export again to record them")
    except BundleError as exc:
        report.notes.append(f"{int8.get('file')}: decision agreement not re-checked here: {exc}")
        return
    try:
        cases, expected = read_cases(described, arrays)
        predictor = Predictor(bundle_dir, variant="int8", threads=threads)
        agreement = min(variant_agreement(predictor, cases, expected, case_rows(predictor, cases)).values(), default=1.0)
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises onnxruntime's own types
        report.problems.append(f"the int8 variant's Predictor cannot run the production cases: {exc}; export again "
                               "with --quantize int8")
        return
    figures = _int8_floor(int8)
    if isinstance(figures, str):
        report.problems.append(f"{int8['file']}: {figures}")
        return
    at_export, floor, held_to = figures
    verdict = "passes" if agreement >= floor else "FAILS"
    report.notes.append(f"{int8['file']}: decision agreement {agreement:.1%} on the production cases, required >= "
                        f"{floor:.1%} ({held_to}: {at_export:.1%}): {verdict}")
    if agreement < floor:
        report.problems.append(f"{int8['file']}: decision agreement {agreement:.1%} on the production cases is below "
                               f"the {floor:.1%} it is held to ({held_to}: {at_export:.1%}); export again")


def _int8_floor(int8: dict[str, Any]) -> tuple[float, float, str] | str:
    """(figure at export, the floor verify holds int8 to, what that figure is), or why the record has none.

    Counted on the production cases: that figure less one point. Counted on other texts (a bundle exported before
    golden_agreement_on was recorded): the held-out agreement it was accepted at (``acceptance.min_agreement``).
    A format-1 record: its own min_agreement."""
    try:
        if int8.get("golden_agreement_on") == "production cases":
            return float(int8["golden_agreement"]), float(int8["golden_agreement"]) - 0.01, "at export"
        if "golden_agreement" in int8:
            floor = float((int8.get("acceptance") or {})["min_agreement"])
            return floor, floor, "accepted at, on held-out texts"
        return float(int8["decision_agreement"]), float(int8.get("min_agreement", 0.95)), "at export, on other texts"
    except (KeyError, TypeError, ValueError) as exc:
        return f"the manifest's int8 record has no usable agreement figure ({type(exc).__name__}: {exc}); export again"
