"""``--quantize int8-ov``: OpenVINO int8 (NNCF post-training quantization) of the bundle's own fp32 graph.

Why a second int8: onnxruntime's static int8 keeps the feed-forward down-projections in fp32 for accuracy and,
on the CPUs that have bf16, ends up slower than the bf16 variant; OpenVINO runs NNCF's int8 graph (every MatMul
quantized, SmoothQuant moving activation outliers into the weights) well past bf16 on VNNI / AMX CPUs. Its
record is a variant of its own, ``int8-ov``, beside ``int8`` (onnxruntime): a bundle can carry both, and a
machine without OpenVINO still has an int8 to fall back to.

How the graph is made (all recorded in the variant's ``quantization``):

1. ``nncf.quantize`` of ``model.onnx`` read by OpenVINO (unfused), ``ModelType.TRANSFORMER``: every MatMul
   int8, SmoothQuant moving activation outliers into the weights; calibrated on the export's calibration texts,
   each text alone (batch 1, no padding: what serving mostly sees, and no padding token in the ranges).
2. The search is over SmoothQuant's alpha (``SMOOTH_QUANT_ALPHAS``, NNCF's default 0.95 first), judged by
   headreg's own acceptance measure on those calibration texts against the verified fp32 graph
   (:func:`_kept_texts`): a text counts as kept when its user-visible result is unchanged (label, label set,
   entity set: :func:`headreg.export.acceptance.agreement`) *and* no probability moved by ``near_tie`` or more.
   The first alpha that keeps ``min_agreement`` of them is taken, else the one that kept most. The SmoothQuant
   alpha moved held-out agreement on the quickstart MiniLM from 97.4% (0.5) to 98.95% (0.95) and 100% (0.9) at
   full int8 speed.
3. Where that graph misses ``min_agreement`` on the held-out texts (step 4): NNCF's accuracy control
   (``nncf.quantize_with_accuracy_control``) with the alpha chosen, its validation function the same measure run through the variant's engine (each text 1 or 0,
   less a thousandth of its probability drift so that ranking separates candidates), ``max_drop`` = 1 -
   ``min_agreement``: NNCF ranks groups of quantized operations by how much reverting each to floating point
   restores the measure and reverts them greedily. Bounded (``ACCURACY_CONTROL_ITERATIONS`` reverts,
   ``ACCURACY_CONTROL_SECONDS``); its result replaces the plain one where it passes the held-out judgement (the
   plain graph's held-out figures are kept in the record beside it: the held-out texts decided that accuracy
   control runs, never what it does). NNCF validates its candidates compiled with f32 between the int8
   operations; the variant runs bf16 there, so every verdict is taken again through the variant's own engine.
   The operations it reverted to floating point are recorded (``accuracy_control.reverted``: NNCF's ignored
   scope, by name, from its report) with each step's accuracy drop.
4. The result is judged like every variant (:meth:`AcceptanceSet.judge_variant`) on the *held-out* texts, which
   the search never saw, with batches padded to a multiple of ``PAD_MULTIPLE`` tokens as the runtime pads them.

Where the search cannot keep ``min_agreement`` of the held-out results, the variant is refused: nothing is
written for it, the export says so with the figures and the bundle keeps its other variants (bf16 serves where
it did). A refusal is never a failed export: the user asked for something faster, not for something different.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import VerificationError
from ..runtime.backends import BF16_CPU_FLAGS, OpenVINOBackend, openvino_version
from ..runtime.variants import cpu_flags
from . import acceptance as acc
from .bf16 import PAD_MULTIPLE  # the bf16 operations between the int8 ones need bf16's padding (0.0 measured at 16)

VARIANT = "int8-ov"
XML_FILE = "model.int8-ov.xml"
BIN_FILE = "model.int8-ov.bin"  # the IR's weights, beside the .xml (OpenVINO reads it by name)
# The variant runs int8 MatMuls (VNNI / AMX int8) with bf16 between them (OpenVINO's INFERENCE_PRECISION_HINT,
# runtime.backends.OPENVINO_PRECISIONS): the record names the bf16 flags, because every x86 CPU with AVX-512 BF16
# (Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later) or AMX also has AVX-512 VNNI; the export checks both.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
REQUIRES_CPU = BF16_CPU_FLAGS
# SmoothQuant alphas tried, in order (NNCF's default first); each try is one nncf.quantize (MiniLM: ~25 s).
SMOOTH_QUANT_ALPHAS = (0.95, 0.9, 0.85, 0.8, 0.75)
# Where no alpha keeps min_agreement: NNCF's accuracy control, bounded (its ranking compiles one candidate per group
# of quantized operations, about 40 on MiniLM, and ranks again after a revert that does not help).
ACCURACY_CONTROL_ITERATIONS = 8
ACCURACY_CONTROL_SECONDS = 900
DRIFT_WEIGHT = 1e-3


def int8_ov_unavailable(flags: Sequence[str] | frozenset[str] | None = None) -> str | None:
    """Why an OpenVINO int8 variant cannot be made and verified on this machine, or None when it can."""
    import importlib.util

    flags = cpu_flags() if flags is None else flags
    if not set(INT8_CPU_FLAGS) & set(flags):
        return f"this CPU has no int8 dot-product instructions ({' / '.join(INT8_CPU_FLAGS)} missing)"
    if not set(BF16_CPU_FLAGS) & set(flags):
        return f"this CPU has no native bf16 for the operations between the int8 ones ({' / '.join(BF16_CPU_FLAGS)} missing)"
    if openvino_version() is None or importlib.util.find_spec("nncf") is None:
        return "OpenVINO and NNCF are not installed (pip install 'headreg[openvino]')"
    return None


class _Collected(logging.Handler):
    """NNCF's log messages, kept (its accuracy control reports what it reverted only there)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet_nncf(collect: _Collected | None = None) -> Iterator[None]:
    """NNCF logs to a stdout handler it made at import and draws progress bars: either would corrupt
    ``headreg export --json``, so both are silenced while it quantizes (``collect``: its messages kept there)."""
    logger = logging.getLogger("nncf")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = [collect] if collect is not None else []
    logger.setLevel(logging.INFO if collect is not None else logging.ERROR)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


def _kept_texts(heads: Sequence[Any], job: Any, expected: Sequence[dict[str, np.ndarray]],
                actual: Sequence[dict[str, np.ndarray]], *, near_tie: float,
                max_error: float) -> tuple[list[bool], list[float]]:
    """The search's measure, text by text: (kept, drift) with every head counted.

    A text is kept when its user-visible result is the fp32 bundle's (:func:`acceptance.user_view` of the head's
    own postprocess) *and* no probability moved by ``near_tie`` or more: a text that moves that much is what flips
    a near-tied text elsewhere, so the search sees the error before it shows on the held-out texts (regression
    heads: values within the allowed error count as kept). ``drift``: the largest probability movement (or
    value error, regression) over the text's heads.
    """
    kept = [True] * len(expected)
    drift = [0.0] * len(expected)
    for head in heads:
        logits = head.outputs["logits"]
        want = [acc.user_view(r) for r in acc.head_results(head, job, expected)]
        got = [acc.user_view(r) for r in acc.head_results(head, job, actual)]
        sigmoid = acc.is_multi_label(head)
        for index, (a, b, e, o) in enumerate(zip(want, got, expected, actual)):
            if a is None:  # regression: numbers are what users see
                moved = float(np.abs(np.asarray(o[logits], np.float64) - np.asarray(e[logits], np.float64)).max(initial=0.0))
                ok = moved <= max_error
            else:
                moved = float(np.abs(acc.probabilities(o[logits], sigmoid) - acc.probabilities(e[logits], sigmoid)).max(initial=0.0))
                ok = a == b and moved < near_tie
            kept[index] = kept[index] and ok
            drift[index] = max(drift[index], moved)
    return kept, drift


def quantize_int8_ov(fp32_path: Path, staging: Path, acceptance: acc.AcceptanceSet,
                     stage: Callable[..., Any]) -> dict[str, Any]:
    """Quantize, search and judge; ``{"record": variant record}`` or ``{"refused": why, "quantization": ...}``.

    ``stage(variant, record)``: the staged bundle opened as production opens it (a Predictor), serving the
    variant with that record: every candidate and the verdict run through the variant's own engine.
    Files are left in ``staging`` only when the variant is accepted.
    """
    import nncf
    import openvino as ov

    options = acceptance.options
    calibration = acceptance.calibration
    outputs, failed = stage().engine.compute([calibration])
    if failed:
        raise failed[calibration]
    expected = outputs[calibration]
    xml = staging / XML_FILE

    def engine_of(candidate: Any) -> Any:
        ov.save_model(candidate, str(xml), compress_to_fp16=False)  # fp16 weights would be a third precision
        return stage(VARIANT, _skeleton()).engine

    def kept_by(candidate: Any) -> tuple[float, Any]:
        """The fraction of the calibration texts ``candidate`` keeps, through the variant's engine; that engine."""
        engine = engine_of(candidate)
        actual, errors = engine.compute([calibration])
        if errors:
            return 0.0, engine
        kept, _ = _kept_texts(engine.heads, calibration, expected, actual[calibration], near_tie=options.near_tie,
                              max_error=options.max_error)
        return sum(kept) / max(len(kept), 1), engine

    core = ov.Core()
    model = core.read_model(str(fp32_path))
    model.reshape({port.get_any_name(): ov.PartialShape([-1, -1]) for port in model.inputs})
    dataset = nncf.Dataset(acceptance.calibration_feeds())
    start = time.perf_counter()
    tried: list[dict[str, Any]] = []
    best = None
    for alpha in SMOOTH_QUANT_ALPHAS:
        with _quiet_nncf():
            candidate = nncf.quantize(model.clone(), dataset, model_type=nncf.ModelType.TRANSFORMER,
                                      advanced_parameters=_smooth_quant(alpha))
        kept, _ = kept_by(candidate)
        tried.append({"smooth_quant_alpha": alpha, "kept": round(kept, 6)})
        if best is None or kept > best[1]:
            best = (alpha, kept, candidate)
        if kept >= options.min_agreement:
            break
    alpha, kept, quantized = best
    engine = engine_of(quantized)
    held_out = _held_out_figures(acceptance, engine)
    controlled = None
    if not all(figures["passed"] for figures in held_out.values()):
        restored, controlled = _accuracy_control(model, dataset, alpha, calibration, expected, engine, options)
        controlled["plain_held_out"] = {head: figures["summary"] for head, figures in held_out.items()}
        if restored is not None:
            restored_kept, restored_engine = kept_by(restored)  # through the variant's own engine, in its precision
            controlled["kept"] = round(restored_kept, 6)
            controlled["fake_quantize_ops"] = _fake_quantize_ops(restored)
            restored_held_out = _held_out_figures(acceptance, restored_engine)
            controlled["held_out"] = {head: figures["summary"] for head, figures in restored_held_out.items()}
            controlled["used"] = all(figures["passed"] for figures in restored_held_out.values())
            if controlled["used"]:
                kept, quantized, engine, held_out = controlled["kept"], restored, restored_engine, restored_held_out
    quantization = {
        "kind": "static",
        "tool": "nncf",
        "nncf": nncf.__version__,
        "openvino": openvino_version(),
        "method": "quantize_with_accuracy_control" if controlled and controlled["used"] else "quantize",
        "model_type": "transformer",
        "smooth_quant_alpha": alpha,
        "calibration_rows": len(calibration.rows),
        "calibration_source": acceptance.split.record["source"],
        "search": {"metric": "calibration texts whose result is kept and no probability moves by near_tie or more",
                   "target": options.min_agreement, "tried": tried, "chosen": alpha, "kept": round(kept, 6)},
        "fake_quantize_ops": _fake_quantize_ops(quantized),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if controlled is not None:
        quantization["accuracy_control"] = controlled
    failed_heads = [f"{head + ': ' if head else ''}{figures['summary']}" for head, figures in held_out.items()
                    if not figures["passed"]]
    refusal = None
    if failed_heads:
        refusal = {"refused": f"the int8 graph changes too many held-out results: {'; '.join(failed_heads)}",
                   "held_out": held_out}
    else:
        try:  # the full judgement every variant gets: the same figures again, and batch invariance
            judged = acceptance.judge_variant(VARIANT, engine)
        except VerificationError as exc:
            refusal = {"refused": str(exc), "held_out": held_out}
    if refusal is not None:
        xml.unlink(missing_ok=True)
        (staging / BIN_FILE).unlink(missing_ok=True)
        return {**refusal, "quantization": quantization}
    quantization["size_ratio"] = round((xml.stat().st_size + (staging / BIN_FILE).stat().st_size)
                                       / fp32_path.stat().st_size, 4)
    return {"record": int8_ov_record(judged, quantization, engine.backend)}


def _smooth_quant(alpha: float) -> Any:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    return AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha))


class _OutOfTime(BaseException):
    """Raised through NNCF (a BaseException: NNCF's ``except Exception`` must not take it for a failed metric)."""


class _CompiledBackend:
    """A candidate NNCF compiled for its accuracy control, behind the engine's backend interface (``like``: the
    variant's own backend, whose inputs and outputs it has)."""

    name = "openvino"

    def __init__(self, compiled: Any, like: Any):
        self.compiled, self.precision = compiled, like.precision
        self.input_names, self.output_names = like.input_names, like.output_names
        self.input_dtype, self.output_dims = like.input_dtype, like.output_dims
        self._outputs = {name: compiled.output(name) for name in self.output_names}

    def run(self, feeds: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        results = self.compiled.create_infer_request().infer({name: feeds[name] for name in self.input_names})
        return {name: np.asarray(results[self._outputs[name]], dtype=np.float32) for name in (names or self.output_names)}


def _accuracy_control(model: Any, dataset: Any, alpha: float, calibration: Any, expected: Sequence[dict[str, np.ndarray]],
                      engine: Any, options: Any) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control`` with the search's measure as its validation function, on the
    calibration texts: NNCF ranks groups of quantized operations by how much reverting each to floating point
    restores the measure and reverts them greedily until ``min_agreement`` of the texts are kept. Bounded by
    ``ACCURACY_CONTROL_ITERATIONS`` reverts and ``ACCURACY_CONTROL_SECONDS``; (model or None, record)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    started = time.perf_counter()
    deadline = started + ACCURACY_CONTROL_SECONDS
    validations = [0]

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        if time.perf_counter() > deadline:
            raise _OutOfTime
        validations[0] += 1
        indices = list(items)
        job = acc.subset_job(calibration, indices)
        candidate = engine.with_backend(_CompiledBackend(compiled, engine.backend))
        outputs, failed = candidate.compute([job])
        if failed:
            return 0.0, [0.0] * len(indices)
        kept, drift = _kept_texts(candidate.heads, job, [expected[i] for i in indices], outputs[job],
                                  near_tie=options.near_tie, max_error=options.max_error)
        # kept (1 or 0) less a thousandth of the drift: ties between candidates go to the one that moves less
        values = [float(k) - DRIFT_WEIGHT * d for k, d in zip(kept, drift)]
        return sum(values) / max(len(values), 1), values

    record: dict[str, Any] = {
        "tool": "nncf.quantize_with_accuracy_control", "smooth_quant_alpha": alpha,
        "validation": "the search's measure on the calibration texts, each text kept (1) or not (0) less "
                      f"{DRIFT_WEIGHT:g} x its largest probability movement; NNCF compiles its candidates with f32 "
                      "between the int8 operations",
        "max_drop": round(1 - options.min_agreement, 6), "max_iterations": ACCURACY_CONTROL_ITERATIONS,
        "max_seconds": ACCURACY_CONTROL_SECONDS, "used": False,
    }
    log = _Collected()
    try:
        with _quiet_nncf(log):
            restored = nncf.quantize_with_accuracy_control(
                model.clone(), dataset, nncf.Dataset(list(range(len(calibration.rows)))), validate,
                max_drop=1 - options.min_agreement, drop_type=nncf.DropType.ABSOLUTE,
                model_type=nncf.ModelType.TRANSFORMER, advanced_quantization_parameters=_smooth_quant(alpha),
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    max_num_iterations=ACCURACY_CONTROL_ITERATIONS, num_ranking_workers=1))
    except _OutOfTime:
        restored = None
        record["stopped"] = f"out of time ({ACCURACY_CONTROL_SECONDS} s): the plain quantization is kept"
    record.update(seconds=round(time.perf_counter() - started, 1), validations=validations[0], **_restorer_report(log.messages))
    return restored, record


def _restorer_report(messages: Sequence[str]) -> dict[str, Any]:
    """What NNCF's accuracy restorer reported: the operations it reverted to floating point, by name (its ignored
    scope), each step's accuracy drop and how it ended. NNCF returns only the model; this is in its log."""
    reverted: list[str] = []
    steps: list[str] = []
    for message in messages:
        if message.startswith("Reverted ") or message.startswith("Accuracy drop"):
            steps.append(" ".join(message.split()))
        if "were reverted back to the floating-point precision" in message:
            reverted = [line.strip() for line in message.splitlines()[1:] if line.strip()]
    ended = [m for m in messages if m.startswith(("Algorithm completed", "The algorithm could not", "Maximum number",
                                                   "All layers have been checked"))]
    return {"reverted": reverted, "steps": steps, "ended": ended}


def _fake_quantize_ops(model: Any) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def _held_out_figures(acceptance: acc.AcceptanceSet, engine: Any) -> dict[str, dict[str, Any]]:
    """Per head: the acceptance figures on the held-out texts, ``passed`` and ``summary`` (acceptance's wording)."""
    figures = acceptance.held_out(engine)
    if isinstance(figures, BaseException):
        return {"": {"passed": False, "summary": f"failed on the held-out texts: {figures}"}}
    return figures


def _skeleton() -> dict[str, Any]:
    """The record a staged bundle is opened with while a candidate is judged."""
    return {"file": XML_FILE, "weights": BIN_FILE, "precision": "int8", "backend": "openvino",
            "requires_cpu": list(REQUIRES_CPU), "pad_to_multiple_of": PAD_MULTIPLE}


def int8_ov_record(judged: dict[str, Any], quantization: dict[str, Any], backend: OpenVINOBackend) -> dict[str, Any]:
    """The manifest record of an accepted OpenVINO int8 variant (docs/bundle-format.md, runtime/variants.py)."""
    flags = cpu_flags()
    return {
        **_skeleton(),
        "quantization": quantization,
        **judged,
        "verified_on": {"int8_isa": next((f for f in ("amx_int8", *INT8_CPU_FLAGS) if f in flags), None),
                        "openvino": openvino_version(), "inference_precision": backend.inference_precision},
    }
