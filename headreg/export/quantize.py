"""``--quantize int8``: onnxruntime *static* (calibrated) QDQ int8 of the unfused fp32 graph.

Static quantization fixes every activation scale at export, from calibration texts, so a text's int8 result
does not depend on what else shares its batch (dynamic int8 computes one activation scale per batch, and a
text's answer moved with its batchmates). Choices, measured on the fine-tuned quickstart MiniLM
(docs/performance.md, ``benchmarks/int8.py``):

- QDQ format, QUInt8 activations x QInt8 per-channel weights (onnxruntime's recommendation for x86 with VNNI);
- only MatMuls with a constant weight: the attention score/context MatMuls and the head's Gemms stay fp32
  (they cost little and quantizing them only adds error);
- except the down-projections (a weight with more rows than columns: the feed-forward output layer), whose input,
  the activation function's output, has a few huge channels that one per-tensor scale cannot cover. Quantized
  alone they caused most of the error (MiniLM, logits max drift 0.54 of 0.71 from all; the QKV, attention
  output and up projections 0.08, 0.04, 0.27), so they stay fp32;
- percentile calibration (onnxruntime's default 99.999th percentile) agreed with PyTorch more often than
  min/max, which lets rare outliers stretch the scales; entropy is available too.

The graph is quantized before any fusion and without its ``value_info``: onnxruntime's quantizer fails on
fused (com.microsoft) graphs and on stale shape annotations.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

METHODS = ("percentile", "minmax", "entropy")
DEFAULT_METHOD = "percentile"
# Where int8 is the default (headreg.runtime.variants): an int8 dot-product instruction. On x86 without VNNI
# onnxruntime's u8s8 kernels can saturate 16-bit intermediate sums, so results would not be the verified ones.
INT8_REQUIRES_CPU = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
CALIBRATION_BATCH = 8


def strip_value_info(source: Path, target: Path) -> None:
    """Copy the graph without value_info: stale shape annotations make the quantizer fail
    ("Unable to find data type for weight_name=..."), and onnxruntime re-infers shapes anyway."""
    import onnx

    model = onnx.load(str(source))
    del model.graph.value_info[:]
    onnx.save(model, str(target))


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # The quantizer logs a pre-processing hint on the root logger every time, and onnxruntime's histogram
    # calibrators print() their progress to stdout, which would corrupt `headreg export --json`.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def calibration_batches(feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The calibration rows as batches of one shape, for any number of rows (>= 1).

    onnxruntime's histogram calibrators (percentile, entropy) stack every batch's activations into one array,
    so every batch must have the same rows and width, not just the same width: 34 rows in batches of 8 left a
    short last batch and a raw "inhomogeneous shape" error. The rows are re-padded to one width and cut into
    equal batches of the largest size up to CALIBRATION_BATCH that divides their count. The histograms are
    those of the same rows whatever the cut, and a batch stays small enough to bound the calibration memory.
    """
    if not feeds:
        raise ValueError("int8 calibration needs at least one calibration row")
    width = max(feed["attention_mask"].shape[1] for feed in feeds)

    def widen(feed: dict[str, np.ndarray], name: str) -> np.ndarray:
        # on the side the feed is padded on: a left-padded decoder's rows keep their last token last
        pad = width - feed[name].shape[1]
        left = bool((feed["attention_mask"][:, 0] == 0).any())
        return np.pad(feed[name], ((0, 0), (pad, 0) if left else (0, pad)))

    rows = {name: np.concatenate([widen(feed, name) for feed in feeds]) for name in feeds[0]}
    count = len(rows["attention_mask"])
    size = max(d for d in range(1, min(CALIBRATION_BATCH, count) + 1) if count % d == 0)
    return [{name: value[start : start + size] for name, value in rows.items()} for start in range(0, count, size)]


def quantize_static_int8(
    fp32_path: Path, int8_path: Path, calibration: Sequence[dict[str, np.ndarray]], *, method: str = DEFAULT_METHOD
) -> dict[str, Any]:
    """Write ``int8_path`` (static QDQ int8) calibrated on ``calibration`` feeds; return the quantization record."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    batches = calibration_batches(calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    clean = int8_path.with_name(int8_path.stem + ".prep.onnx")
    graph = onnx.load(str(fp32_path), load_external_data=False)
    weights = {init.name: tuple(init.dims) for init in graph.graph.initializer}
    matmuls = [node for node in graph.graph.node if node.op_type == "MatMul" and node.input[1] in weights
               and node.input[0] not in weights and len(weights[node.input[1]]) == 2]
    quantized = [node.name for node in matmuls if weights[node.input[1]][0] <= weights[node.input[1]][1]]
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    try:
        strip_value_info(fp32_path, clean)
        with _quiet_quantizer():
            quantize_static(
                str(clean), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=calibrate, nodes_to_quantize=quantized, extra_options={"MatMulConstBOnly": True},
            )
    finally:
        clean.unlink(missing_ok=True)
        for leftover in int8_path.parent.glob("augmented_model*.onnx"):
            leftover.unlink(missing_ok=True)
    return {
        "kind": "static",
        "format": "qdq",
        "method": method,
        "per_channel": True,
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "op_types": ["MatMul"],
        "weights_only_matmuls": True,
        "quantized_matmuls": len(quantized),
        "fp32_matmuls": len(matmuls) - len(quantized),
        "kept_fp32": "projections to fewer outputs than inputs (feed-forward down-projections, token classifiers)",
        "calibration_rows": int(sum(len(feed["attention_mask"]) for feed in batches)),
        "size_ratio": round(int8_path.stat().st_size / fp32_path.stat().st_size, 4),
    }


def quantize_dynamic_int8(fp32_path: Path, int8_path: Path) -> dict[str, Any]:
    """onnxruntime dynamic int8 (per-channel QInt8 weights), for side-by-side benchmarks only: its activation
    scales come from each batch, so a text's result depends on its batchmates; bundles never ship it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    clean = int8_path.with_name(int8_path.stem + ".prep.onnx")
    try:
        strip_value_info(fp32_path, clean)
        with _quiet_quantizer():
            quantize_dynamic(str(clean), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        clean.unlink(missing_ok=True)
    return {"kind": "dynamic", "per_channel": True, "weight_type": "QInt8"}
