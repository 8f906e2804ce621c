"""Verification of what production runs: a bundle's own Predictor against the same engine over PyTorch.

Export stages the bundle, opens it with :class:`headreg.runtime.Predictor` exactly as production does (the
variant's backend and session options, its padding, length-bucketed batches, windows, the heads' postprocess)
and runs the cases below through ``predictor.engine``; the PyTorch reference runs the *same jobs* through the
same engine with PyTorch as its backend (``engine.with_backend``). Every row's outputs must agree within
atol AND rtol, and every input's result must be the same as a user reads it (labels, label sets, entity spans).
A case that crashes in the engine fails the export: a bundle that verifies cannot crash at predict time on the
shapes verification ran.

The PyTorch rows are kept in ``golden.npz`` (``production.<case>.<row>.<output>``) and the cases in
``verification.json``, so ``headreg verify`` re-runs them torch-free with the installed runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .cases import LONG_TEXT, PAIRS, TEXTS
from .verify import tolerance_figures

PREFIX = "production"


@dataclass
class ProductionCase:
    """One call as a user makes it: ``predictor.predict(inputs, **options)`` (or ``embed``), in batches of ``batch_size``."""

    name: str
    kind: str  # "predict" | "embed"
    inputs: list[Any]
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 3


def production_cases(max_length: int, *, pairs: bool, sentences: bool = False) -> list[ProductionCase]:
    """Mixed lengths over several multi-row batches, a long text read in windows beside short ones, and sentence
    pairs: each through the whole predict path (every output of every row is compared, pooled_output included,
    so embed's rows are covered). ``sentences`` adds a batch of ordinary sentences (headreg.data.sentences): an
    int8 variant's ``golden_agreement`` is counted over every case's inputs, and 30 inputs alone would let one
    near-tie flip move it by 3%."""
    # about 2.5 x max_length tokens of English: three or four windows at the default overlap
    long_text = LONG_TEXT[: max(400, 10 * max_length)]
    cases = [
        # pooled_output is compared row by row here too: embed's rows are the same rows
        ProductionCase("predict: mixed lengths, batches of 8", "predict", [*TEXTS, LONG_TEXT], batch_size=8),
        ProductionCase("predict: long text in windows", "predict", [TEXTS[0], long_text, TEXTS[2]],
                       {"long_text": "window"}, batch_size=4),
    ]
    if sentences:
        from ..data import sentences as corpus

        texts = list(corpus())
        cases.append(ProductionCase(f"predict: {len(texts)} ordinary sentences", "predict", texts, batch_size=16))
    if pairs:
        cases.append(ProductionCase("predict: sentence pairs", "predict", [list(pair) for pair in PAIRS], batch_size=2))
    return cases


def user_view(result: Any) -> Any:
    """The part of a postprocessed result a user acts on (scores aside), or None when it is numeric only."""
    if not isinstance(result, Mapping):
        return None
    if "entities" in result:
        return frozenset((e.get("label"), e.get("start"), e.get("end"), e.get("sequence", 0)) for e in result["entities"])
    if "labels" in result:
        return frozenset(result["labels"])
    if "label" in result:
        return result["label"]
    return None


def views(result: Any, by_head: bool) -> dict[str, Any]:
    """:func:`user_view` of one input's result by head name ("": a single-head bundle's one head)."""
    if by_head and isinstance(result, Mapping):
        return {name: user_view(value) for name, value in result.items()}
    return {"": user_view(result)}


def agreement_counts(engine: Any, want: Sequence[Any], got: Sequence[Any], expected: Sequence[Mapping[str, np.ndarray]],
                     actual: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Per head (by :func:`views`' names), how many inputs' results ``want`` and ``got`` read the same to a user:
    ``{"same", "of", "by": "results"}``. A head that decides nothing (regression) counts the rows whose
    pooled_output points the same way (cosine >= 0.99) in ``expected`` and ``actual`` (``"by": "pooled_output"``)."""
    counts: dict[str, dict[str, Any]] = {}
    pairs = [(views(a, engine.by_head), views(b, engine.by_head)) for a, b in zip(want, got)]
    for head in engine.heads:
        key = head.name if engine.by_head else ""
        decided, by = [(a[key], b.get(key)) for a, b in pairs if key in a], "results"
        if decided and all(a is None for a, _ in decided) and "pooled_output" in head.outputs:
            name = head.outputs["pooled_output"]
            decided, by = [(True, _cosine(a[name], b[name]) >= 0.99) for a, b in zip(expected, actual)], "pooled_output"
        counts[key] = {"same": sum(a == b for a, b in decided), "of": len(decided), "by": by}
    return counts


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def job_for(predictor: Any, case: ProductionCase) -> Any:
    inputs = [tuple(item) if isinstance(item, list) else item for item in case.inputs]
    return predictor.prepare(inputs, case.kind, **case.options)


def rows_of(engine: Any, job: Any, batch_size: int) -> list[dict[str, np.ndarray]] | BaseException:
    """A job's row outputs as the engine computes them for ``predict`` (planned, padded, cut), or its failure."""
    outputs, failed = engine.compute([job], batch_size=batch_size)
    return failed[job] if job in failed else outputs[job]


def case_rows(predictor: Any, cases: Sequence[ProductionCase]) -> list[list[dict[str, np.ndarray]] | BaseException]:
    """:func:`rows_of` every case through ``predictor``'s own engine."""
    return [rows_of(predictor.engine, job_for(predictor, case), case.batch_size) for case in cases]


def compare_rows(expected: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]], *,
                 atol: float, rtol: float) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Worst |diff| per output over the rows, and what fails: non-finite values, shapes, |diff| > atol + rtol|ref|."""
    worst: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    if len(expected) != len(actual):
        return worst, [f"{len(actual)} rows, the reference has {len(expected)}"]
    for index, (want, got) in enumerate(zip(expected, actual)):
        for name, reference in want.items():
            value = got.get(name)
            if value is None:
                problems.append(f"row {index}: output {name!r} is missing")
                continue
            reference, value = np.asarray(reference, dtype=np.float64), np.asarray(value, dtype=np.float64)
            if reference.shape != value.shape:
                problems.append(f"row {index}: {name} has shape {list(value.shape)}, the reference {list(reference.shape)}")
                continue
            if not np.isfinite(value).all():
                problems.append(f"row {index}: {name} has NaN/Inf")
                continue
            max_abs, _, ratio = tolerance_figures(reference, value, atol=atol, rtol=rtol)
            entry = worst.setdefault(name, {"abs": 0.0, "bound_ratio": 0.0})
            entry["abs"], entry["bound_ratio"] = max(entry["abs"], max_abs), max(entry["bound_ratio"], ratio)
            if ratio > 1.0:
                problems.append(f"row {index}: {name} differs by up to {max_abs:.3g} ({ratio:.3g}x the allowed "
                                "atol + rtol*|ref|)")
    return worst, problems


def check_case(predictor: Any, case: ProductionCase, expected: Sequence[Mapping[str, np.ndarray]],
               *, atol: float, rtol: float, actual: Any = None) -> dict[str, Any]:
    """Run ``case`` through ``predictor.engine`` (the production engine of its variant) and hold it to the
    reference rows ``expected``: outputs row by row, then results as a user reads them. ``actual``: the rows (or
    failure) :func:`rows_of` gave already."""
    engine = predictor.engine
    record: dict[str, Any] = {"name": case.name, "kind": case.kind, "inputs": len(case.inputs)}
    try:
        job = job_for(predictor, case)
    except Exception as exc:  # noqa: BLE001 - reported as the case's failure
        return {**record, "passed": False, "problems": [f"prepare failed: {type(exc).__name__}: {exc}"]}
    record["rows"] = len(job.rows)
    if actual is None:
        actual = rows_of(engine, job, case.batch_size)
    if isinstance(actual, BaseException):
        return {**record, "passed": False, "problems": [f"the engine failed: {actual}"]}
    worst, problems = compare_rows(expected, actual, atol=atol, rtol=rtol)
    record["worst"] = worst
    if not problems:
        want, got = engine.finish_safely(job, expected), engine.finish_safely(job, actual)
        for side, result in (("reference", want), ("production", got)):
            if isinstance(result, BaseException):
                problems.append(f"postprocess of the {side} rows failed: {result}")
        if not problems and case.kind == "predict":
            differ = [index for index, (a, b) in enumerate(zip(want, got))
                      if views(a, engine.by_head) != views(b, engine.by_head)]
            record["decisions_equal"] = f"{len(want) - len(differ)}/{len(want)}"
            record["agreement"] = agreement_counts(engine, want, got, expected, actual)
            if differ:
                problems.append(f"inputs {differ[:8]} get a different result than PyTorch's")
    return {**record, "passed": not problems, "problems": problems}


def reference_rows(predictor: Any, reference: Any, cases: Sequence[ProductionCase]) -> list[list[dict[str, np.ndarray]]]:
    """The reference engine's (PyTorch's) row outputs for every case; a failure there is the model's own."""
    from .trace import ExportError

    rows = []
    for case in cases:
        computed = rows_of(reference, job_for(predictor, case), case.batch_size)
        if isinstance(computed, BaseException):
            raise ExportError(f"PyTorch failed on the verification case {case.name!r}: {computed}")
        rows.append(computed)
    return rows


def verify_production(predictor: Any, cases: Sequence[ProductionCase], expected: Sequence[Sequence[Mapping[str, np.ndarray]]],
                      *, atol: float, rtol: float, actual: Sequence[Any] | None = None) -> dict[str, Any]:
    """Every case through the predictor's own engine against the reference rows: the record the bundle keeps
    (``passed``, per case its figures and problems). ``actual``: each case's rows computed already."""
    actual = list(actual) if actual is not None else [None] * len(cases)
    results = [check_case(predictor, case, rows, atol=atol, rtol=rtol, actual=mine)
               for case, rows, mine in zip(cases, expected, actual)]
    return {"passed": all(result["passed"] for result in results), "variant": predictor.variant,
            "atol": atol, "rtol": rtol, "cases": results}


def agreements(records: Sequence[Mapping[str, Any]], *, results_only: bool = False) -> dict[str, float | None]:
    """Per head, the fraction of the cases' inputs that read as PyTorch's (their ``agreement`` counts summed);
    ``results_only``: None for a head whose results decide nothing (counted by pooled_output)."""
    totals: dict[str, list[Any]] = {}
    for record in records:
        for name, count in (record.get("agreement") or {}).items():
            tally = totals.setdefault(name, [0, 0, count["by"]])
            tally[0], tally[1] = tally[0] + count["same"], tally[1] + count["of"]
    return {name: None if results_only and by != "results" else same / total if total else 1.0
            for name, (same, total, by) in totals.items()}


def variant_agreement(predictor: Any, cases: Sequence[ProductionCase], expected: Sequence[Sequence[Mapping[str, np.ndarray]]],
                      actual: Sequence[Any]) -> dict[str, float | None]:
    """Per head, how many of the predict cases' inputs a variant's rows (``actual``, through ``predictor``'s own
    engine and postprocess) answer as PyTorch's rows (``expected``) do: :func:`check_case`'s counts with no
    tolerance on the numbers, an int8 variant's ``golden_agreement``, which ``headreg verify`` holds it to. A case
    whose rows or results cannot be compared (a failing engine or postprocess) raises a PredictionError."""
    from ..errors import PredictionError

    records = [check_case(predictor, case, want, atol=np.inf, rtol=0.0, actual=got)
               for case, want, got in zip(cases, expected, actual) if case.kind == "predict"]
    for record in records:
        if "agreement" not in record:
            raise PredictionError(f"{record['name']}: {'; '.join(record['problems'])}")
    return agreements(records)


def failures(record: Mapping[str, Any]) -> list[str]:
    return [f"{case['name']}: {problem}" for case in record.get("cases", []) for problem in case.get("problems", [])]


# --- kept in the bundle, for headreg verify ---------------------------------------------------------------------------


def describe(cases: Sequence[ProductionCase]) -> list[dict[str, Any]]:
    return [asdict(case) for case in cases]


def variant_prefix(variant: str) -> str:
    """Where a variant's own rows on the production cases are kept in ``golden.npz`` (PyTorch's: ``PREFIX``)."""
    return f"{PREFIX}[{variant}]"


def golden_arrays(expected: Sequence[Sequence[Mapping[str, np.ndarray]]], prefix: str = PREFIX) -> dict[str, np.ndarray]:
    return {f"{prefix}.{c}.{r}.{name}": np.asarray(value) for c, rows in enumerate(expected)
            for r, row in enumerate(rows) for name, value in row.items()}


def read_cases(described: Any, arrays: Mapping[str, np.ndarray],
               prefix: str = PREFIX) -> tuple[list[ProductionCase], list[list[dict]]]:
    """The cases ``verification.json`` describes and their reference rows from ``golden.npz`` (BundleError if
    malformed); ``prefix``: whose rows (:func:`variant_prefix`)."""
    from ..errors import BundleError

    if not isinstance(described, list):
        raise BundleError("the verification record's production cases are malformed; export the bundle again")
    cases, expected = [], []
    for c, info in enumerate(described):
        try:
            case = ProductionCase(str(info["name"]), str(info["kind"]), list(info["inputs"]), dict(info.get("options") or {}),
                                  int(info.get("batch_size") or 3))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"production case {c} of the verification record is malformed ({exc}); export again") from exc
        if case.kind not in ("predict", "embed") or not 1 <= case.batch_size <= 1024 or len(case.inputs) > 1024:
            raise BundleError(f"production case {c} of the verification record is malformed; export the bundle again")
        rows: dict[int, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            parts = key.split(".", 3)
            if len(parts) == 4 and parts[0] == prefix and parts[1] == str(c) and parts[2].isdigit():
                rows.setdefault(int(parts[2]), {})[parts[3]] = value
        cases.append(case)
        expected.append([rows[r] for r in sorted(rows)])
    return cases, expected
