"""Calibration and acceptance of reduced-precision variants (int8, bf16): judged the way users see results.

Texts come from the user (``calibration_texts=`` / ``--calibration-texts FILE``) or from the built-in set
(``headreg.data.builtin_texts``). They are de-duplicated and split once, with a fixed seed, into a calibration
part (int8 activation ranges) and a disjoint, held-out acceptance part. On the acceptance texts:

- the held-out texts are one job of the staged bundle's own Predictor; PyTorch's row outputs are computed once,
  by the runtime engine with PyTorch as its backend (the same plan, padding and slicing as production);
- a variant runs the same job through *its* production engine (``Predictor(bundle, variant=...)``: its backend,
  its padding), and each head's runtime postprocess turns both sides' rows into results compared on what a user
  reads: the label (seq_cls), the set of labels over their thresholds (multi_label), the exact set of entity
  spans (token_cls; the token rate is reported beside it), max/mean abs error of the values (regression);
- every disagreement gets the reference's margin (top-2 probability gap, or distance to the threshold), and
  the number below ``near_tie`` is reported: flips of near-ties are expected from any reduced precision.

:func:`engine_invariance` checks that a variant's answer for a text does not depend on its batch: each text
alone vs in batches of mixed lengths, in two orders, and padded to max_length, all through the variant's engine.
:func:`case_invariance` does the same for fp32 on the verification batches, whose batched outputs verification
has computed already.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import HeadregError
from ..runtime.batching import real_span
from ..runtime.engine import cut_rows
from .production import user_view

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# Defaults of the acceptance options (export_onnx keywords, `headreg export` flags; docs/export.md).
MIN_AGREEMENT = 0.99  # fraction of held-out texts whose user-visible result must equal PyTorch's
NEAR_TIE = 0.05  # a disagreement whose reference margin is below this counts as a near-tie (reported)
MAX_ERROR = 0.05  # regression: max abs error allowed, as a fraction of the reference values' std (min 1.0 units)
INVARIANCE_TOLERANCE = 1e-5  # max abs difference of any output, a text alone vs in any batch
MAX_CALIBRATION = 64  # calibration rows; the rest of the texts (up to MAX_ACCEPTANCE) are held out
MAX_ACCEPTANCE = 1000
MIN_TEXTS = 8  # of each part
SPLIT_SEED = 0
REFERENCE_BATCH = 16


class AcceptanceError(HeadregError, ValueError):
    """Calibration texts that cannot be used (too few, wrong shape): a usage error."""


@dataclass
class TextSplit:
    calibration: list[Any]
    acceptance: list[Any]
    record: dict[str, Any] = field(default_factory=dict)


def _digest(texts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def normalize_texts(texts: Sequence[Any], *, pairs: bool) -> list[Any]:
    """Strings and (text, text_pair) tuples; AcceptanceError names the first bad item."""
    out: list[Any] = []
    for index, item in enumerate(texts):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            if not pairs:
                raise AcceptanceError(f"calibration text {index} is a sentence pair, but this model takes single texts")
            out.append((item[0], item[1]))
        else:
            raise AcceptanceError(f"calibration text {index} is {type(item).__name__}; give strings or (text, text_pair)")
    return out


def split_texts(texts: Sequence[Any], *, source: str) -> TextSplit:
    """De-duplicate, shuffle with ``SPLIT_SEED``, and split into disjoint calibration and acceptance parts.

    Calibration takes ``min(MAX_CALIBRATION, half)`` texts, acceptance the rest (capped at MAX_ACCEPTANCE).
    """
    unique = list(dict.fromkeys(texts))
    if len(unique) < 2 * MIN_TEXTS:
        raise AcceptanceError(
            f"{len(unique)} distinct calibration texts ({source}); give at least {2 * MIN_TEXTS}: half calibrate, the "
            "other half are held out to accept the variant"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n_cal = min(MAX_CALIBRATION, len(shuffled) // 2)
    calibration, acceptance = shuffled[:n_cal], shuffled[n_cal : n_cal + MAX_ACCEPTANCE]
    record = {
        "source": source,
        "texts": len(texts),
        "duplicates_dropped": len(texts) - len(unique),
        "seed": SPLIT_SEED,
        "calibration_rows": len(calibration),
        "acceptance_rows": len(acceptance),
        "unused_rows": len(shuffled) - len(calibration) - len(acceptance),
        "calibration_sha256": _digest(calibration),
        "acceptance_sha256": _digest(acceptance),
        "disjoint": not set(calibration) & set(acceptance),
    }
    return TextSplit(calibration, acceptance, record)


# --- what a user sees -------------------------------------------------------------------------------------------------


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Each label's sigmoid (``multi_label``) or the softmax along the last axis, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return 1 / (1 + np.exp(-logits))
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _softmax_margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability along the last axis."""
    p = probabilities(logits, False)
    if p.shape[-1] < 2:
        return np.abs(p[..., 0] - 0.5) * 2
    top = np.sort(p, -1)
    return top[..., -1] - top[..., -2]


def is_multi_label(head: Any) -> bool:
    """Whether the head scores each label on its own (a sigmoid): the problem type its class declares
    (``HeadBase.problem_type``), recorded in the bundle manifest's head entry."""
    return (head.manifest.get("head") or {}).get("problem_type") == "multi_label_classification"


def head_results(head: Any, job: Any, rows: Sequence[Mapping[str, np.ndarray]]) -> list[Any]:
    """One head's runtime postprocess on a truncated job's rows (one row per input), with the bundle's config."""
    return head.run(rows, [row.encoding for row in job.rows], job.inputs, head.config)


def agreement(head: Any, job: Any, expected: Sequence[Mapping[str, np.ndarray]],
              actual: Sequence[Mapping[str, np.ndarray]], *, near_tie: float = NEAR_TIE) -> dict[str, Any]:
    """Figures of one variant's rows against the reference's over the acceptance texts, for one head."""
    logits = head.outputs["logits"]
    want_views = [user_view(r) for r in head_results(head, job, expected)]
    got_views = [user_view(r) for r in head_results(head, job, actual)]
    if all(view is None for view in want_views):  # regression: numbers are what users see
        err = np.stack([np.abs(np.asarray(b[logits], np.float64) - np.asarray(a[logits], np.float64)).ravel()
                        for a, b in zip(expected, actual)]) if expected else np.zeros((0, 1))
        ref = np.stack([np.asarray(a[logits], np.float64).ravel() for a in expected]) if expected else np.zeros((0, 1))
        return {
            "metric": "abs error of values",
            "texts": int(err.shape[0]),
            "max_abs_error": float(err.max()) if err.size else 0.0,
            "mean_abs_error": float(err.mean()) if err.size else 0.0,
            "reference_std": float(ref.std()) if ref.size else 0.0,
        }
    token_level = head.level == "token"
    tokens = tokens_same = 0
    margins: list[float] = []
    same = 0
    for want, got, a, b in zip(expected, actual, want_views, got_views):
        if token_level:
            decided = np.asarray(want[logits]).argmax(-1) == np.asarray(got[logits]).argmax(-1)
            tokens += decided.size
            tokens_same += int(decided.sum())
        if a == b:
            same += 1
        else:
            margins.append(_margin(head, np.asarray(want[logits], np.float64), np.asarray(got[logits], np.float64)))
    texts = len(want_views)
    margins.sort()
    multi_label = is_multi_label(head)
    figures = {
        "metric": "identical entity sets per text" if token_level else
                  "identical label sets per text" if multi_label else "identical decisions per text",
        "texts": texts,
        "identical": same,
        "agreement": round(same / texts, 6) if texts else 1.0,
        "disagreements": texts - same,
        "near_ties": sum(m < near_tie for m in margins),
        "near_tie": near_tie,
        "disagreement_margins": [round(m, 4) for m in margins[:20]],
    }
    if token_level:
        figures["token_agreement"] = round(tokens_same / tokens, 6) if tokens else 1.0
        figures["tokens"] = tokens
    return figures


def _margin(head: Any, want: np.ndarray, got: np.ndarray) -> float:
    """How far the reference was from changing its answer on this text (smallest over the changed decisions)."""
    from ..runtime import postprocess as post

    if is_multi_label(head):
        probs, other = probabilities(want, True), probabilities(got, True)
        thresholds = post.thresholds_for(post.Context(manifest=head.manifest, config=head.config), probs.shape[-1])
        flipped = (probs > thresholds) != (other > thresholds)
        return float(np.abs(probs - thresholds)[flipped].min()) if flipped.any() else 0.0
    if head.level == "token" and want.ndim == 2:
        changed = want.argmax(-1) != got.argmax(-1)
        gaps = _softmax_margin(want)
        return float(gaps[changed].min()) if changed.any() else float(gaps.min()) if gaps.size else 0.0
    return float(_softmax_margin(want))


def accepted(figures: Mapping[str, Any], *, min_agreement: float, max_error: float) -> tuple[bool, str]:
    """Whether the figures pass the thresholds, and a sentence saying how they compare."""
    if "max_abs_error" in figures:
        limit = max_error * max(figures["reference_std"], 1.0)
        ok = figures["max_abs_error"] <= limit
        return ok, (f"max abs error {figures['max_abs_error']:.3g} (mean {figures['mean_abs_error']:.3g}) over "
                    f"{figures['texts']} held-out texts; allowed {limit:.3g} (max_error={max_error:g} x max(std, 1))")
    ok = figures["agreement"] >= min_agreement
    detail = (f"{figures['agreement']:.2%} {figures['metric']} ({figures['identical']}/{figures['texts']} held-out "
              f"texts; {figures['disagreements']} differ, {figures['near_ties']} of them near-ties < {figures['near_tie']:g})")
    if "token_agreement" in figures:
        detail += f", {figures['token_agreement']:.2%} of tokens"
    return ok, detail + f"; required {min_agreement:.2%}"


# --- batch invariance ---------------------------------------------------------------------------------------------------


class _Invariance:
    """A text's outputs alone vs in a batch, row by row: the core of every batch-invariance record. ``decisions``:
    whether the heads' results are compared too (``decisions_differ``), which needs the engine's jobs."""

    def __init__(self, *, tolerance: float, decisions: bool = False):
        self.tolerance = tolerance
        self.worst = 0.0
        self.worst_output: str | None = None
        self.decisions_differ = 0 if decisions else None
        self.checks = 0

    def compare(self, alone: Mapping[str, np.ndarray], batched: Mapping[str, np.ndarray]) -> None:
        """One row's own outputs (padding cut away) run alone vs in a batch."""
        self.checks += 1
        for output, value in batched.items():
            if np.shape(alone[output]) != np.shape(value):
                raise ValueError(f"output {output} has shape {np.shape(value)} in a batch, "
                                 f"{np.shape(alone[output])} alone")
            self.note(output, alone[output], value)

    def note(self, output: str, alone: Any, batched: Any) -> None:
        """Keep the largest |batched - alone| seen so far and the output it was on."""
        batched = np.asarray(batched, np.float64)
        diff = float(np.abs(batched - np.asarray(alone, np.float64)).max()) if batched.size else 0.0
        if diff > self.worst:
            self.worst, self.worst_output = diff, output

    def record(self, **extra: Any) -> dict[str, Any]:
        decided = {} if self.decisions_differ is None else {"decisions_differ": self.decisions_differ}
        return {
            "passed": self.worst <= self.tolerance and not self.decisions_differ,
            "tolerance": self.tolerance,
            "max_abs_diff": self.worst,
            "worst_output": self.worst_output,
            **extra,
            "checks": self.checks,
            **decided,
        }


def engine_invariance(engine: Any, job: Any, *, max_length: int, tolerance: float = INVARIANCE_TOLERANCE,
                      batch_size: int = 8) -> dict[str, Any]:
    """Each row of a truncated ``job`` alone vs the same row in batches, through ``engine`` (the variant's
    production engine: its padding to a block multiple included): mixed lengths (two orders) and padded to
    max_length. Passes when every output of every row is within ``tolerance`` (max abs) of its value alone and
    every head's result (as a user reads it) is identical.
    """
    rows = list(job.rows)
    alone = [engine.run_rows([row])[0] for row in rows]
    groups = [list(range(i, min(i + batch_size, len(rows)))) for i in range(0, len(rows), batch_size)]
    reverse = list(range(len(rows)))[::-1]
    layouts = {
        "mixed lengths": (groups, None),
        "mixed lengths, reversed": ([reverse[i : i + batch_size] for i in range(0, len(rows), batch_size)], None),
        "padded to max_length": (groups, max_length),
    }
    tally = _Invariance(tolerance=tolerance, decisions=True)
    batched: list[dict[str, np.ndarray] | None] = [None] * len(rows)
    for plan, width in layouts.values():
        for group in plan:
            for index, out in zip(group, engine.run_rows([rows[i] for i in group], width=width)):
                tally.compare(alone[index], out)
                batched[index] = out
    for head in engine.heads:
        for a, b in zip(head_results(head, job, alone), head_results(head, job, batched)):
            tally.decisions_differ += int(user_view(a) != user_view(b))
    return tally.record(texts=len(rows), layouts=list(layouts), padding_side=engine.layout.padding_side)


def alone_outputs(run: Run, cases: Sequence[Any], *, padding_side: str) -> list[list[Any] | None]:
    """Each row of each verification batch run alone (batch 1, its real tokens only): per case, per row, the
    outputs or the exception the run raised; None for a case of one unpadded row, which is that row alone already."""
    results: list[list[Any] | None] = []
    for case in cases:
        mask = case.inputs["attention_mask"]
        if mask.shape[0] == 1 and mask.all():
            results.append(None)
            continue
        rows: list[Any] = []
        width = mask.shape[1]
        for position, length in enumerate(mask.sum(1).astype(int).tolist()):
            span = real_span(width, length, padding_side)
            try:
                rows.append(run({name: value[position : position + 1, span] for name, value in case.inputs.items()}))
            except Exception as exc:  # onnxruntime raises its own exception types per failure
                rows.append(exc)
        results.append(rows)
    return results


def session_invariance(run: Run, cases: Sequence[Any], outputs: Sequence[dict[str, np.ndarray]], *,
                       padding_side: str, token_outputs: set[str], tolerance: float = INVARIANCE_TOLERANCE) -> dict[str, Any]:
    """:func:`alone_outputs` then :func:`case_invariance`, for a caller with nothing to run beside the batch-1 runs."""
    return case_invariance(cases, outputs, alone_outputs(run, cases, padding_side=padding_side),
                           padding_side=padding_side, token_outputs=token_outputs, tolerance=tolerance)


def case_invariance(cases: Sequence[Any], outputs: Sequence[dict[str, np.ndarray]], alone: Sequence[list[Any] | None],
                    *, padding_side: str, token_outputs: set[str],
                    tolerance: float = INVARIANCE_TOLERANCE) -> dict[str, Any]:
    """Every row of the verification batches alone (:func:`alone_outputs`) vs in its batch (``outputs``).

    The verification batches mix lengths, padding per row and positions in the batch, and one is padded to
    max_length: this is :func:`engine_invariance`'s check on outputs verification computed already, at the cost
    of the batch-1 runs only (outputs only: the heads' results are compared on the engine's rows).
    """
    tally = _Invariance(tolerance=tolerance)
    layouts, errors = [], []
    for case, batch_outputs, rows in zip(cases, outputs, alone):
        if rows is None:
            continue
        layouts.append(case.name)
        mask = case.inputs["attention_mask"]
        for position, single in enumerate(rows):
            if isinstance(single, Exception):
                errors.append(f"{case.name} row {position} alone: {type(single).__name__}: {single}")
                continue
            # an output without a batch axis (a head's constant) is compared whole: it must not move either
            axes = {name: "shared" if value.shape[:1] != mask.shape[:1] or single[name].shape[:1] != (1,) else
                    "token" if name in token_outputs else "row" for name, value in batch_outputs.items()}
            mine = cut_rows(np.ones((1, int(mask[position].sum())), np.int64), single, axes, padding_side)[0]
            tally.compare(mine, cut_rows(mask, batch_outputs, axes, padding_side)[position])
    record = tally.record(texts=tally.checks, layouts=layouts, padding_side=padding_side)
    if errors:
        record.update(passed=False, errors=errors[:5])
    return record


# --- the outputs a model's heads read per token -----------------------------------------------------------------


def token_outputs_of(model: Any) -> set[str]:
    return {name for member in model.members() for name in member.token_outputs}



# --- one acceptance set per export, shared by every reduced-precision variant ------------------------------------------


@dataclass
class AcceptanceOptions:
    """The thresholds a reduced-precision variant must meet (export_onnx keywords; docs/export.md)."""

    min_agreement: float = MIN_AGREEMENT
    near_tie: float = NEAR_TIE
    max_error: float = MAX_ERROR
    invariance_tolerance: float = INVARIANCE_TOLERANCE
    invariance_texts: int = 24


@dataclass
class AcceptanceSet:
    """Held-out texts as one job of the staged bundle, PyTorch's rows for it (computed once, through the engine)
    and the thresholds: what every reduced-precision variant is held to."""

    split: TextSplit
    job: Any  # the held-out texts, prepared by the staged bundle's Predictor (truncated: one row per text)
    expected: list[dict[str, np.ndarray]]  # PyTorch's row outputs, aligned with job.rows
    options: AcceptanceOptions
    max_length: int
    calibration: Any  # the calibration texts, prepared by the same Predictor (truncated: one row per text)
    engine: Any  # the staged bundle's fp32 engine: calibration batches are planned and padded as it runs them

    def calibration_feeds(self, batch_size: int = 8) -> list[dict[str, np.ndarray]]:
        """The calibration texts as model inputs, in the batches the staged bundle's engine plans and pads."""
        rows = self.calibration.rows
        plan = self.engine.plan([len(row.encoding) for row in rows], batch_size=batch_size)
        return [self.engine.pad([rows[index].encoding for index in batch]) for batch in plan]

    def judge_variant(self, name: str, engine: Any) -> dict[str, Any]:
        """``{"acceptance": ..., "batch_invariance": ...}`` for a variant run by ``engine`` (its production engine:
        ``Predictor(bundle, variant=name).engine``); VerificationError when it fails either."""
        from ..errors import VerificationError

        per_head = self.held_out(engine)
        if isinstance(per_head, BaseException):
            raise VerificationError(f"{name} failed on the held-out texts: {per_head}; it is not shipped")
        if len(per_head) == 1:  # a single head: its figures are the record
            figures = next(iter(per_head.values()))
            ok, detail = figures["passed"], figures["summary"]
            acceptance = dict(figures)
        else:  # every head must pass; the record keeps each head's figures and the lowest agreement
            ok = all(f["passed"] for f in per_head.values())
            detail = "; ".join(f"{head}: {f['summary']}" for head, f in per_head.items())
            agreements = [f["agreement"] for f in per_head.values() if "agreement" in f]
            acceptance = {"passed": ok, "summary": detail, "heads": per_head,
                          **({"agreement": min(agreements)} if agreements else {})}
        acceptance.update(min_agreement=self.options.min_agreement, max_error=self.options.max_error,
                          texts_split=self.split.record)
        invariance = engine_invariance(engine, self.invariance_job(), max_length=self.max_length,
                                       tolerance=self.options.invariance_tolerance)
        if not invariance["passed"]:
            raise VerificationError(
                f"{name} is not batch-invariant: a text's outputs move by up to {invariance['max_abs_diff']:.3g} "
                f"({invariance['worst_output']}) between running alone and in a batch, above the "
                f"{invariance['tolerance']:g} allowed, and {invariance['decisions_differ']} decisions change; "
                "it is not shipped"
            )
        if not ok:
            raise VerificationError(
                f"{name} model does not match PyTorch closely enough on held-out texts: {detail}. Export without "
                f"it, train the head further (near-tied scores flip first), give calibration texts like your "
                "traffic (--calibration-texts), or lower --min-agreement / --max-error"
            )
        return {"acceptance": acceptance, "batch_invariance": invariance}

    def held_out(self, engine: Any) -> dict[str, dict[str, Any]] | BaseException:
        """Per head (key "" for a single head): the figures of ``engine``'s rows on the held-out texts, with
        ``passed`` and ``summary``; or how the engine failed on them."""
        outputs, failed = engine.compute([self.job], batch_size=REFERENCE_BATCH)
        if self.job in failed:
            return failed[self.job]
        single = len(engine.heads) == 1
        per_head = {}
        for head in engine.heads:
            figures = agreement(head, self.job, self.expected, outputs[self.job], near_tie=self.options.near_tie)
            ok, detail = accepted(figures, min_agreement=self.options.min_agreement, max_error=self.options.max_error)
            per_head["" if single else head.name] = {**figures, "passed": ok, "summary": detail}
        return per_head

    def invariance_job(self) -> Any:
        """The held-out texts most likely to move: mixed lengths, shortest and longest included."""
        rows = self.job.rows
        by_length = sorted(range(len(rows)), key=lambda i: len(rows[i].encoding))
        count = min(self.options.invariance_texts, len(by_length))
        picks = sorted({by_length[round(k * (len(by_length) - 1) / max(count - 1, 1))] for k in range(count)})
        return subset_job(self.job, picks)


def subset_job(job: Any, indices: Sequence[int]) -> Any:
    """The rows ``indices`` of a truncated job (one row per text) as a job of their own."""
    from ..runtime.engine import Job

    chosen = [job.rows[index] for index in indices]
    return Job([job.inputs[row.item] for row in chosen],
               [type(row)(position, row.encoding) for position, row in enumerate(chosen)], job.config, job.kind,
               job.options)


def build_acceptance_set(predictor: Any, reference: Any, texts: Sequence[Any], *, source: str,
                         options: AcceptanceOptions) -> AcceptanceSet:
    """Split the texts, prepare the held-out part as the staged bundle's Predictor does and compute PyTorch's rows
    once through ``reference`` (the predictor's engine over PyTorch)."""
    split = split_texts(texts, source=source)
    job, calibration = predictor.prepare(split.acceptance), predictor.prepare(split.calibration)
    outputs, failed = reference.compute([job], batch_size=REFERENCE_BATCH)
    if job in failed:
        raise HeadregError(f"PyTorch failed on the held-out texts: {failed[job]}")
    return AcceptanceSet(split, job, outputs[job], options, predictor.max_length, calibration, predictor.engine)
