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
   (:func:`_kept`): a text counts as kept when its user-visible result is unchanged (label, label set, entity
   set: :func:`headreg.export.acceptance.agreement`) *and* no probability moved by ``near_tie`` or more. The first
   alpha that keeps ``min_agreement`` of them is taken, else the one that kept most. Why this and not NNCF's own
   ``quantize_with_accuracy_control`` (which returns the quantized operations that move the outputs most to
   floating point): measured on the quickstart MiniLM, it reverted 5 groups (layer 0's QKV and attention scores,
   layer 4's down-projection) in 604 s under load without improving the calibration metric, and held-out agreement
   fell from 98.95% to 95.81%; the SmoothQuant alpha moved held-out agreement from 97.4% (0.5) to 98.95% (0.95)
   and 100% (0.9) at full int8 speed. Ignoring all six down-projections reached 99.5% but ran at 1.26x / 1.36x
   bf16 (1x128 / 32x128) instead of about 1.5x: a slower int8 is not what the variant is for.
3. The result is judged like every variant (:meth:`AcceptanceSet.judge_variant`) on the *held-out* texts, which
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

VARIANT = "int8-ov"
XML_FILE = "model.int8-ov.xml"
BIN_FILE = "model.int8-ov.bin"  # the IR's weights, beside the .xml (OpenVINO reads it by name)
# The variant runs int8 MatMuls (VNNI / AMX int8) with bf16 between them (OpenVINO's INFERENCE_PRECISION_HINT,
# runtime.backends.OPENVINO_PRECISIONS): the record names the bf16 flags, because every x86 CPU with AVX-512 BF16
# (Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later) or AMX also has AVX-512 VNNI; the export checks both.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
REQUIRES_CPU = BF16_CPU_FLAGS
# Batches are padded to a multiple of this many tokens, as for bf16 (see _measured_pad_multiple in the tests).
PAD_MULTIPLE = 32
# SmoothQuant alphas tried, in order (NNCF's default first); each try is one nncf.quantize (MiniLM: ~25 s).
SMOOTH_QUANT_ALPHAS = (0.95, 0.9, 0.85, 0.8, 0.75)


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


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs to a stdout handler it made at import and draws progress bars: either would corrupt
    ``headreg export --json``, so both are silenced while it quantizes."""
    logger = logging.getLogger("nncf")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = []
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


def _probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return 1 / (1 + np.exp(-logits))
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _kept(heads: Sequence[Any], job: Any, expected: Sequence[dict[str, np.ndarray]],
          actual: Sequence[dict[str, np.ndarray]], *, near_tie: float, max_error: float) -> float:
    """The search's metric over a job's texts: the fraction whose result int8 keeps, the lowest head's.

    A text is kept when its user-visible result is the fp32 bundle's (:func:`acceptance.user_view` of the head's
    own postprocess) *and* no probability moved by ``near_tie`` or more: a text that moves that much is what flips
    a near-tied text elsewhere, so the search sees the error before it shows on the held-out texts (regression
    heads: values within the allowed error count as kept).
    """
    worst = 1.0
    for head in heads:
        logits = head.outputs["logits"]
        want = [acc.user_view(r) for r in acc.head_results(head, job, expected)]
        got = [acc.user_view(r) for r in acc.head_results(head, job, actual)]
        multi = acc._is_multi_label(head)
        kept = 0
        for a, b, e, o in zip(want, got, expected, actual):
            if a is None:  # regression: numbers are what users see
                kept += int(np.abs(np.asarray(o[logits], np.float64) - np.asarray(e[logits], np.float64)).max(initial=0.0)
                            <= max_error)
                continue
            drift = np.abs(_probabilities(o[logits], multi) - _probabilities(e[logits], multi)).max(initial=0.0)
            kept += int(a == b and drift < near_tie)
        worst = min(worst, kept / max(len(want), 1))
    return worst


def quantize_int8_ov(fp32_path: Path, staging: Path, acceptance: acc.AcceptanceSet, tokenizer: Any,
                     stage: Callable[..., Any]) -> dict[str, Any]:
    """Quantize, search and judge; ``{"record": variant record}`` or ``{"refused": why, "quantization": ...}``.

    ``stage(variant, record)``: the staged bundle opened as production opens it (a Predictor), serving the
    variant with that record: every candidate and the verdict run through the variant's own engine.
    Files are left in ``staging`` only when the variant is accepted.
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    options = acceptance.options
    fp32 = stage()
    calibration = fp32.prepare(acceptance.split.calibration)
    outputs, failed = fp32.engine.compute([calibration])
    if failed:
        raise failed[calibration]
    expected = outputs[calibration]
    xml = staging / XML_FILE

    def engine_of(candidate: Any) -> Any:
        ov.save_model(candidate, str(xml), compress_to_fp16=False)  # fp16 weights would be a third precision
        return stage(VARIANT, _skeleton()).engine

    def kept_by(candidate: Any) -> float:
        engine = engine_of(candidate)
        actual, errors = engine.compute([calibration])
        if errors:
            return 0.0
        return _kept(engine.heads, calibration, expected, actual[calibration], near_tie=options.near_tie,
                     max_error=options.max_error)

    core = ov.Core()
    model = core.read_model(str(fp32_path))
    model.reshape({port.get_any_name(): ov.PartialShape([-1, -1]) for port in model.inputs})
    dataset = nncf.Dataset(acceptance.calibration_feeds(tokenizer))
    start = time.perf_counter()
    tried: list[dict[str, Any]] = []
    best = None
    for alpha in SMOOTH_QUANT_ALPHAS:
        with _quiet_nncf():
            candidate = nncf.quantize(
                model.clone(), dataset, model_type=nncf.ModelType.TRANSFORMER,
                advanced_parameters=AdvancedQuantizationParameters(
                    smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha)))
        kept = kept_by(candidate)
        tried.append({"smooth_quant_alpha": alpha, "kept": round(kept, 6)})
        if best is None or kept > best[1]:
            best = (alpha, kept, candidate)
        if kept >= options.min_agreement:
            break
    alpha, kept, quantized = best
    quantization = {
        "kind": "static",
        "tool": "nncf",
        "nncf": nncf.__version__,
        "openvino": openvino_version(),
        "method": "quantize",
        "model_type": "transformer",
        "smooth_quant_alpha": alpha,
        "calibration_rows": len(calibration.rows),
        "calibration_source": acceptance.split.record["source"],
        "search": {"metric": "calibration texts whose result is kept and no probability moves by near_tie or more",
                   "target": options.min_agreement, "tried": tried, "chosen": alpha, "kept": round(kept, 6)},
        "fake_quantize_ops": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    engine = engine_of(quantized)
    held_out = _held_out_figures(acceptance, engine)
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


def _held_out_figures(acceptance: acc.AcceptanceSet, engine: Any) -> dict[str, dict[str, Any]]:
    """Per head: the acceptance figures on the held-out texts, ``passed`` and ``summary`` (acceptance's wording)."""
    outputs, failed = engine.compute([acceptance.job], batch_size=acc.REFERENCE_BATCH)
    if failed:
        return {"": {"passed": False, "summary": f"failed on the held-out texts: {failed[acceptance.job]}"}}
    out = {}
    single = len(engine.heads) == 1
    for head in engine.heads:
        figures = acc.agreement(head, acceptance.job, acceptance.expected, outputs[acceptance.job],
                                near_tie=acceptance.options.near_tie)
        ok, detail = acc.accepted(figures, min_agreement=acceptance.options.min_agreement,
                                  max_error=acceptance.options.max_error)
        out["" if single else head.name] = {**figures, "passed": ok, "summary": detail}
    return out


def _skeleton() -> dict[str, Any]:
    """The record a staged bundle is opened with while a candidate is judged."""
    return {"file": XML_FILE, "weights": BIN_FILE, "precision": "int8", "backend": "openvino",
            "requires_cpu": list(REQUIRES_CPU), "pad_to_multiple_of": PAD_MULTIPLE}


def int8_ov_record(judged: dict[str, Any], quantization: dict[str, Any], backend: OpenVINOBackend) -> dict[str, Any]:
    """The manifest record of an accepted OpenVINO int8 variant (docs/bundle-format.md, runtime/variants.py)."""
    flags = cpu_flags()
    return {
        "file": XML_FILE,
        "weights": BIN_FILE,
        "precision": "int8",
        "backend": "openvino",
        "quantization": quantization,
        "requires_cpu": list(REQUIRES_CPU),
        "pad_to_multiple_of": PAD_MULTIPLE,
        **judged,
        "verified_on": {"int8_isa": next((f for f in ("amx_int8", *INT8_CPU_FLAGS) if f in flags), None),
                        "openvino": openvino_version(), "inference_precision": backend.inference_precision},
    }
