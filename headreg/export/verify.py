"""Verification of the graph: onnxruntime must reproduce PyTorch on every case, or the export fails.

A case passes when every output is finite and within ``atol`` AND ``rtol`` of PyTorch
(``|ort - torch| <= atol + rtol * |torch|``, elementwise). Token-level outputs are compared on non-padding
positions only. The heads' results (labels, label sets, entities) are compared where production computes them:
the bundle's own Predictor on the production cases (:mod:`.production`), with the heads' runtime postprocess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, VerificationError
from .cases import Case

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
    problems: list[str] = field(default_factory=list)

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

    def head_summary(self, outputs: dict[str, str], decision_agreement: float | None) -> dict[str, Any]:
        """One head's part of the verification: worst diffs of its outputs (by the head's own names), and the
        share of the production cases' inputs it answered as PyTorch did (None when it makes no decisions)."""
        worst = self.worst()
        return {"worst": {local: worst[graph] for local, graph in outputs.items() if graph in worst},
                "decision_agreement": decision_agreement}

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


def tolerance_figures(reference: Any, value: Any, *, atol: float, rtol: float) -> tuple[float, float, float]:
    """The one tolerance rule, over the elements: (max |value - reference|, max |diff| / |reference|, max |diff| /
    (atol + rtol * |reference|)). NaN counts as an infinite difference; within the tolerance when the last is <= 1."""
    reference, value = np.asarray(reference, np.float64), np.asarray(value, np.float64)
    if not reference.size:
        return 0.0, 0.0, 0.0
    err = np.abs(value - reference)
    err = np.where(np.isnan(err), np.inf, err)
    allowed = atol + rtol * np.abs(reference)
    return (float(err.max()), float((err / np.maximum(np.abs(reference), 1e-12)).max()),
            float((err / np.maximum(allowed, 1e-300)).max()))


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
        max_abs, max_rel, ratio = tolerance_figures(want, got, atol=atol, rtol=rtol)
        within = ratio <= 1.0
        if finite and not within:
            problems.append(f"{name}: |diff| reaches {ratio:.3g}x the allowed atol + rtol*|torch| "
                            f"(max abs diff {max_abs:.3g})")
        diffs[name] = OutputDiff(max_abs, max_rel, finite, within, list(actual[name].shape), ratio)
    return diffs, problems


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
    token_outputs: set[str],
    atol: float,
    rtol: float,
    target: str = "model.onnx",
) -> Report:
    """Compare onnxruntime's outputs (from :func:`run_cases`) with PyTorch's ``expected`` outputs, case by case."""
    results = []
    for case, want, got in zip(cases, expected, actual):
        if isinstance(got, Exception):
            diffs, problems = {}, [f"onnxruntime failed: {type(got).__name__}: {got}"]
        else:
            diffs, problems = compare_outputs(want, got, case.mask, token_outputs=token_outputs, atol=atol, rtol=rtol)
        results.append(CaseResult(**case.describe(), outputs=diffs, problems=problems))
    return Report(results, atol, rtol, target)


# --- golden cases: written at export, re-checked by `headreg verify` -------------------------------------------


def save_golden(path: str | Path, cases: list[Case], expected: list[dict[str, np.ndarray]],
                extra: dict[str, np.ndarray] | None = None) -> None:
    """The verification cases' inputs and PyTorch's outputs (``extra``: more arrays, e.g. production.py's rows)."""
    arrays = dict(extra or {})
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


def read_golden(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a golden file, after its size is checked (never unpickled)."""
    from ..manifest import GOLDEN_MAX_BYTES

    _check_golden_size(path, GOLDEN_MAX_BYTES)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable golden file: {exc}") from exc


def load_golden(path: str | Path, descriptions: list[dict[str, Any]],
                arrays: dict[str, np.ndarray] | None = None) -> tuple[list[Case], list[dict[str, np.ndarray]]]:
    arrays = read_golden(path) if arrays is None else arrays
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
