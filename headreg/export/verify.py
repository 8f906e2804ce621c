"""Verification: onnxruntime must reproduce PyTorch on every case, or the export fails.

A case passes when every output is finite, within ``atol`` AND ``rtol`` of PyTorch
(``|ort - torch| <= atol + rtol * |torch|``, elementwise) and the head's decisions are identical.
Token-level outputs are compared on non-padding positions only.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BundleError, VerificationError
from .cases import Case

Decide = Callable[[dict[str, np.ndarray], np.ndarray], Any]


@dataclass
class HeadCheck:
    """One head's decisions, read from a graph's outputs: a multi-head graph is checked head by head.

    ``outputs`` maps the head's own output names (``logits``, ``pooled_output``, extras) to the graph's
    (``sentiment.logits``, ...); None means the graph uses the head's names (a single-head bundle).
    """

    name: str
    decide: Decide
    token_level: bool
    outputs: dict[str, str] | None = None

    def own(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The head's outputs under its own names."""
        if self.outputs is None:
            return outputs
        return {local: outputs[graph] for local, graph in self.outputs.items() if graph in outputs}

    def decisions(self, outputs: dict[str, np.ndarray], mask: np.ndarray) -> Any:
        return self.decide(self.own(outputs), mask)


def as_checks(decide: "Decide | list[HeadCheck] | None", token_outputs: set[str]) -> list[HeadCheck]:
    """A plain ``decide`` callable (one head, graph names = its names) or per-head checks, as a list."""
    if decide is None:
        return []
    if callable(decide):
        return [HeadCheck("", decide, bool(token_outputs))]
    return list(decide)


@dataclass
class OutputDiff:
    max_abs: float
    max_rel: float
    finite: bool
    within: bool
    shape: list[int]
    # max of |ort - torch| / (atol + rtol * |torch|) over the elements: the case passes when it is <= 1.
    # max_rel alone can exceed rtol on a passing case (near-zero references are covered by atol).
    bound_ratio: float = 0.0


@dataclass
class CaseResult:
    name: str
    kind: str
    shape: list[int]
    lengths: list[int]
    padding_side: str
    outputs: dict[str, OutputDiff]
    decision_agreement: float | None  # fraction of decisions equal (the lowest head's); None when no head decides
    problems: list[str] = field(default_factory=list)
    head_agreement: dict[str, float | None] = field(default_factory=dict)  # per head, for multi-head graphs

    @property
    def passed(self) -> bool:
        return not self.problems


class VerificationFailed(VerificationError):
    """Verification failed; ``report`` holds every case."""

    def __init__(self, message: str, report: "Report"):
        super().__init__(message)
        self.report = report


@dataclass
class Report:
    """Every case's diffs; ``passed`` only when all cases passed."""

    cases: list[CaseResult]
    atol: float
    rtol: float
    target: str = "model.onnx"
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # bundle-level: changed files, inconsistent manifest
    problems_are: str = "the bundle does not match what was exported"  # what ``problems`` say, in one line

    @property
    def passed(self) -> bool:
        return bool(self.cases) and not self.problems and all(case.passed for case in self.cases)

    @property
    def failures(self) -> list[str]:
        return self.problems + [f"{case.name}: {problem}" for case in self.cases for problem in case.problems]

    def worst(self) -> dict[str, dict[str, float]]:
        worst: dict[str, dict[str, float]] = {}
        for case in self.cases:
            for name, diff in case.outputs.items():
                entry = worst.setdefault(name, {"abs": 0.0, "rel": 0.0, "bound_ratio": 0.0})
                entry["abs"] = max(entry["abs"], diff.max_abs)
                entry["rel"] = max(entry["rel"], diff.max_rel)
                entry["bound_ratio"] = max(entry["bound_ratio"], diff.bound_ratio)
        return worst

    def head_summary(self, name: str, outputs: dict[str, str]) -> dict[str, Any]:
        """One head's part of the verification: worst diffs of its outputs (by the head's own names) and its
        lowest decision agreement over the cases (None when it makes no decisions)."""
        worst = self.worst()
        agreements = [
            case.head_agreement.get(name) if name else case.decision_agreement for case in self.cases
        ]
        decided = [value for value in agreements if value is not None]
        return {
            "worst": {local: worst[graph] for local, graph in outputs.items() if graph in worst},
            "decision_agreement": min(decided) if decided else None,
        }

    def summary(self) -> dict[str, Any]:
        """The manifest's ``verification`` entry."""
        return {
            "passed": self.passed,
            "cases": len(self.cases),
            "atol": self.atol,
            "rtol": self.rtol,
            "worst": self.worst(),
            "target": self.target,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "failures": self.failures,
            "notes": self.notes,
            "case_results": [{**asdict(case), "passed": case.passed} for case in self.cases],
        }

    def raise_for_failure(self) -> None:
        if not self.passed:
            raise VerificationFailed(self.message(), self)

    def message(self) -> str:
        if self.passed:
            return f"{self.target}: {len(self.cases)} cases passed (atol={self.atol:g}, rtol={self.rtol:g})"
        failures = self.failures or ["no cases were checked"]
        shown = "\n  ".join(failures[:12]) + (f"\n  ... and {len(failures) - 12} more" if len(failures) > 12 else "")
        failed = sum(not c.passed for c in self.cases)
        what = (
            f"onnxruntime disagrees with PyTorch in {failed} of {len(self.cases)} cases"
            if failed
            else self.problems_are
        )
        return f"{self.target}: {what} (atol={self.atol:g}, rtol={self.rtol:g}):\n  {shown}"


def _token_mask(value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Select the non-padding positions of a (batch, sequence, ...) output."""
    return value[mask.astype(bool)]


def compare_outputs(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    mask: np.ndarray,
    *,
    token_outputs: set[str],
    atol: float,
    rtol: float,
) -> tuple[dict[str, OutputDiff], list[str]]:
    diffs: dict[str, OutputDiff] = {}
    problems: list[str] = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"output {name!r} is missing from onnxruntime's outputs")
            continue
        if got.shape != want.shape:
            problems.append(f"{name}: shape {list(got.shape)} from onnxruntime, {list(want.shape)} from PyTorch")
            continue
        finite = bool(np.isfinite(got).all())
        if not finite:
            problems.append(f"{name}: onnxruntime produced NaN/Inf")
        if not np.isfinite(want).all():
            problems.append(f"{name}: PyTorch produced NaN/Inf")
        if name in token_outputs:
            got, want = _token_mask(got, mask), _token_mask(want, mask)
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        err = np.abs(got64 - want64)
        err = np.where(np.isnan(err), np.inf, err)
        max_abs = float(err.max()) if err.size else 0.0
        max_rel = float((err / np.maximum(np.abs(want64), 1e-12)).max()) if err.size else 0.0
        allowed = atol + rtol * np.abs(want64)
        within = bool((err <= allowed).all())
        ratio = float((err / np.maximum(allowed, 1e-300)).max()) if err.size else 0.0
        if finite and not within:
            problems.append(f"{name}: |diff| reaches {ratio:.3g}x the allowed atol + rtol*|torch| "
                            f"(max abs diff {max_abs:.3g})")
        diffs[name] = OutputDiff(max_abs, max_rel, finite, within, list(actual[name].shape), ratio)
    return diffs, problems


def decision_agreement(expected: Any, actual: Any, mask: np.ndarray, *, token_level: bool) -> tuple[float, int]:
    """Fraction (and count) of decisions that agree; token decisions only on non-padding positions."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        return 0.0, max(expected.size, 1)
    # Told, not guessed from the shape: multi-label decisions [batch, num_labels] can match the mask's shape.
    if token_level:
        expected, actual = _token_mask(expected, mask), _token_mask(actual, mask)
    # a row of several decisions (multi-label) agrees only when all of them do
    rows_equal = (expected == actual).reshape(expected.shape[0], -1).all(-1) if expected.size else np.array([])
    return (float(rows_equal.mean()) if rows_equal.size else 1.0), int(rows_equal.size)


def check_case(
    case: Case,
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    *,
    decide: Decide | list[HeadCheck] | None,
    token_outputs: set[str],
    atol: float,
    rtol: float,
) -> CaseResult:
    diffs, problems = compare_outputs(expected, actual, case.mask, token_outputs=token_outputs, atol=atol, rtol=rtol)
    per_head: dict[str, float | None] = {}
    if not problems:
        for check in as_checks(decide, token_outputs):
            want = check.decisions(expected, case.mask)
            if want is None:
                per_head[check.name] = None
                continue
            got = check.decisions(actual, case.mask)
            agreement, _ = decision_agreement(want, got, case.mask, token_level=check.token_level)
            per_head[check.name] = agreement
            if agreement < 1.0:
                where = f"head {check.name!r}: " if check.name else ""
                problems.append(f"{where}decisions differ on {100 * (1 - agreement):.1f}% of rows")
    decided = [value for value in per_head.values() if value is not None]
    agreement = min(decided) if decided else None
    info = case.describe()
    heads = {name: value for name, value in per_head.items() if name}
    return CaseResult(
        info["name"], info["kind"], info["shape"], info["lengths"], info["padding_side"], diffs, agreement, problems,
        heads,
    )


def run_onnx(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed)))


def run_cases(session: Any, cases: list[Case]) -> list[dict[str, np.ndarray] | Exception]:
    """onnxruntime's outputs for every case, or the exception it raised on that case."""
    outputs: list[dict[str, np.ndarray] | Exception] = []
    for case in cases:
        try:
            outputs.append(run_onnx(session, case.inputs))
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            outputs.append(exc)
    return outputs


def compare_cases(
    cases: list[Case],
    expected: list[dict[str, np.ndarray]],
    actual: list[dict[str, np.ndarray] | Exception],
    *,
    decide: Decide | list[HeadCheck] | None,
    token_outputs: set[str],
    atol: float,
    rtol: float,
    target: str = "model.onnx",
) -> Report:
    """Compare onnxruntime's outputs (from :func:`run_cases`) with PyTorch's ``expected`` outputs, case by case."""
    results = []
    for case, want, got in zip(cases, expected, actual):
        if isinstance(got, Exception):
            info = case.describe()
            results.append(
                CaseResult(info["name"], info["kind"], info["shape"], info["lengths"], info["padding_side"], {}, None,
                           [f"onnxruntime failed: {type(got).__name__}: {got}"])
            )
            continue
        results.append(check_case(case, want, got, decide=decide, token_outputs=token_outputs, atol=atol, rtol=rtol))
    return Report(results, atol, rtol, target)


def verify_session(session: Any, cases: list[Case], expected: list[dict[str, np.ndarray]], **checks: Any) -> Report:
    """Run every case through an onnxruntime session and compare with PyTorch's ``expected`` outputs.

    ``checks``: ``decide``, ``token_outputs``, ``atol``, ``rtol`` and optionally ``target``, as in compare_cases.
    """
    return compare_cases(cases, expected, run_cases(session, cases), **checks)


# --- golden cases: written at export, re-checked by `headreg verify` -------------------------------------------


def save_golden(path: str | Path, cases: list[Case], expected: list[dict[str, np.ndarray]]) -> None:
    arrays = {}
    for index, (case, outputs) in enumerate(zip(cases, expected)):
        arrays.update({f"{index}.input.{k}": v for k, v in case.inputs.items()})
        arrays.update({f"{index}.output.{k}": v for k, v in outputs.items()})
    np.savez_compressed(path, **arrays)


def _check_golden_size(path: str | Path, max_bytes: int) -> None:
    """Refuse a golden file whose arrays would take more than ``max_bytes`` before any is read (a zip bomb,
    or a .npy header declaring a huge shape over a few bytes of data)."""
    import zipfile

    from numpy.lib import format as npy

    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                total += info.file_size
                if total > max_bytes:
                    raise BundleError(f"{path} unpacks to more than {max_bytes >> 20} MB; it is not what 'headreg export' wrote")
                with archive.open(info) as member:
                    version = npy.read_magic(member)
                    reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
                    if reader is None:
                        raise BundleError(f"{path}: {info.filename} uses .npy format {version}, which golden files never do")
                    shape, _, dtype = reader(member)
                    if dtype.hasobject:
                        raise BundleError(f"{path}: {info.filename} holds Python objects; golden files hold numbers only")
                    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                    if declared > info.file_size:
                        raise BundleError(f"{path}: {info.filename} declares {declared} bytes of data but holds {info.file_size}")
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable golden file: {exc}") from exc


def load_golden(path: str | Path, descriptions: list[dict[str, Any]]) -> tuple[list[Case], list[dict[str, np.ndarray]]]:
    from ..manifest import GOLDEN_MAX_BYTES

    _check_golden_size(path, GOLDEN_MAX_BYTES)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable golden file: {exc}") from exc
    if not isinstance(descriptions, list) or not all(isinstance(info, dict) and isinstance(info.get("name"), str)
                                                     and isinstance(info.get("kind"), str) for info in descriptions):
        raise BundleError(f"{path}: the verification record's case list is malformed; export the bundle again")
    cases, expected = [], []
    for index, info in enumerate(descriptions):
        inputs = {k.split(".", 2)[2]: v for k, v in arrays.items() if k.startswith(f"{index}.input.")}
        outputs = {k.split(".", 2)[2]: v for k, v in arrays.items() if k.startswith(f"{index}.output.")}
        if "attention_mask" not in inputs or not outputs:
            raise BundleError(f"{path} has no data for case {index} ({info.get('name')}); export the bundle again")
        cases.append(Case(info["name"], info["kind"], inputs, info.get("padding_side", "right")))
        expected.append(outputs)
    return cases, expected


# --- headreg verify DIR -----------------------------------------------------------------------------------------


def _head_checks(manifest: dict[str, Any], graph_outputs: dict[str, list]) -> tuple[list[HeadCheck] | None, list[str]]:
    """Each bundle head's decisions() (imports the head classes, so torch), or notes saying why not.

    A head is built only when its size fits its logits in the graph: a crafted ``num_labels`` must not make
    verify allocate a head far larger than the model it checks.
    """
    from ..manifest import bundle_heads, is_multi_head

    checks, notes = [], []
    for entry in bundle_heads(manifest):
        outputs = dict(entry.get("outputs") or {})
        width = (graph_outputs.get(outputs.get("logits", "logits")) or [None])[-1]
        num_labels = (entry.get("config") or {}).get("num_labels")
        if not isinstance(width, int) or not isinstance(num_labels, int) or num_labels > width + 1:
            notes.append(f"decisions not compared: head {entry.get('name')!r}: its num_labels ({num_labels}) does not "
                         f"fit the graph's logits {outputs.get('logits', 'logits')!r} (width {width})")
            continue
        try:
            from ..heads.base import build_config
            from ..registry import get_head

            spec = get_head(entry["head"])
            head_cls = spec.load_class()
            config = build_config(head_cls.config_class, spec.name, dict(entry.get("config", {})))
            head = head_cls(config, int(manifest["backbone"]["hidden_size"]))
        except ImportError as exc:
            if "torch" in str(exc):  # a runtime-only install: expected, not a failure
                notes.append("checked with onnxruntime only (torch is not installed): files, manifest and every output "
                             "against the golden outputs; decisions and the int8 variant are compared with "
                             "headreg[torch] installed")
                break
            notes.append(f"decisions not compared: head {entry.get('name')!r} cannot be imported here ({exc})")
            continue
        except Exception as exc:  # plugin missing, changed config fields: verify the numbers anyway
            notes.append(f"decisions not compared: head {entry.get('name')!r} could not be built here ({exc})")
            continue
        identity = all(local == graph for local, graph in outputs.items())
        name = str(entry.get("name")) if is_multi_head(manifest) else ""
        checks.append(HeadCheck(name, head.decisions, entry.get("level") == "token", None if identity else outputs))
    return (checks or None), notes


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
                        manifest: dict[str, Any], decide: Any, token_outputs: set[str], atol: float) -> None:
    """fp32's batch invariance again, as the export measured it: every golden row alone vs in its batch."""
    from .acceptance import alone_outputs, case_invariance

    padding_side = str(manifest.get("padding_side", "right"))
    recorded = (manifest.get("variants", {}).get("fp32", {}) or {}).get("batch_invariance") or {}
    tolerance = float(recorded.get("tolerance", atol))
    run = functools.partial(run_onnx, session)
    record = case_invariance(cases, actual, alone_outputs(run, cases, padding_side=padding_side),
                             padding_side=padding_side, token_outputs=token_outputs, decide=decide, tolerance=tolerance)
    verdict = "passes" if record["passed"] else "FAILS"
    report.notes.append(f"{report.target}: batch invariance, max abs diff {record['max_abs_diff']:.1e} over "
                        f"{record['checks']} rows alone vs in their batch (tolerance {tolerance:g}), "
                        f"{record['decisions_differ']} decisions differ: {verdict}")
    if not record["passed"]:
        report.problems.append(
            f"{report.target}: a row's outputs now depend on its batch (max abs diff {record['max_abs_diff']:.2e} on "
            f"{record['worst_output']}, tolerance {tolerance:g}); this onnxruntime build changed the model's "
            "numerics: pin the onnxruntime the bundle was exported with, or export again and re-check"
        )
        report.problems_are = "the bundle is no longer batch-invariant here"


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
    cases, expected = load_golden(bundle_dir / GOLDEN_FILE, descriptions)
    decide, notes = _head_checks(manifest, _session_signature(session)[1])
    token_outputs = token_outputs_of(manifest)
    actual = run_cases(session, cases)
    report = compare_cases(cases, expected, actual, decide=decide, token_outputs=token_outputs, atol=atol, rtol=rtol,
                           target=model_file)
    report.problems.extend(problems)
    report.notes.extend(notes)
    if report.passed:
        _recheck_invariance(report, session, cases, actual, manifest, decide, token_outputs, atol)
    int8 = manifest.get("variants", {}).get("int8")
    if int8 and decide is not None:
        from .quantize import golden_agreement

        try:
            int8_session = create_session(bundle_path(bundle_dir, int8["file"], what="int8 model file"), threads=threads)
        except Exception as exc:  # missing or corrupt file: onnxruntime's own exception types
            report.problems.append(f"onnxruntime cannot load {int8['file']}: {exc}; export again with --quantize int8")
            return report
        agreement = golden_agreement(int8_session, cases, expected, decide)
        # format-1 bundles recorded decision_agreement/min_agreement; later ones the golden figure itself
        recorded = float(int8.get("golden_agreement", int8.get("decision_agreement", 0.0)))
        floor = recorded - 0.01 if "golden_agreement" in int8 else float(int8.get("min_agreement", 0.95))
        verdict = "passes" if agreement >= floor else "FAILS"
        report.notes.append(f"{int8['file']}: decision agreement {agreement:.1%} on the golden texts, required >= "
                            f"{floor:.1%} (at export: {recorded:.1%}): {verdict}")
        if agreement < floor:
            report.problems.append(f"{int8['file']}: decision agreement {agreement:.1%} on the golden texts is below "
                                   f"the {floor:.1%} it was exported at (less one point); export again")
    return report
