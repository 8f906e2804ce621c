"""The bf16 variant: the same ``model.onnx`` run by OpenVINO in bf16, verified where this machine can check it.

A bf16 record is written only when this CPU has native bf16 (AVX-512 BF16 or AMX), OpenVINO imports, and the
variant passes the same two checks as int8 (:mod:`headreg.export.acceptance`): the same user-visible results as
PyTorch on held-out texts, and batch invariance (a text alone vs in batches of mixed lengths and padded to
max_length, outputs within the tolerance, identical decisions). Otherwise the export says why it has none.

OpenVINO's bf16 kernels are exactly batch-size invariant here, but a row's result changed (logits by ~3e-4)
when the batch's padded length crossed a 16-token block boundary past the row's own length. Padding every
batch to a multiple of ``PAD_MULTIPLE`` tokens removes that, so the record carries ``pad_to_multiple_of`` and the
runtime pads to it for this variant. Measured 0.0 difference with 16, 32 and 64 (and not with 8) on three CPUs:
AVX-512 BF16 on AMD, a Xeon with AMX (``benchmarks/backend_probe.py``) and a Xeon with AVX-512 BF16 but no AMX.
Export's batch-invariance check runs with this padding, so a CPU where 16 did not hold would get no variant.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..manifest import MODEL_FILE
from ..runtime.backends import BF16_CPU_FLAGS, OpenVINOBackend, bf16_cpu, openvino_version
from ..runtime.variants import cpu_flags

# The 16-token block measured on every CPU above. It was 32 until three CPUs showed 16 enough: on the serving
# corpus (median 23 tokens) a row then computes 40 tokens on average instead of 50.
PAD_MULTIPLE = 16


def bf16_unavailable(flags: Sequence[str] | frozenset[str] | None = None) -> str | None:
    """Why a bf16 variant cannot be verified on this machine, or None when it can."""
    flags = cpu_flags() if flags is None else flags
    if bf16_cpu(flags) is None:
        return f"this CPU has no native bf16 ({' / '.join(BF16_CPU_FLAGS)} missing)"
    if openvino_version() is None:
        return "OpenVINO is not installed (pip install 'headreg[openvino]')"
    return None


def bf16_record(judged: dict[str, Any], backend: OpenVINOBackend | None) -> dict[str, Any]:
    """The manifest record of a bf16 variant (format: docs/bundle-format.md, runtime/variants.py): accepted with
    ``judged`` figures, or (``backend=None``) the record a staged bundle is opened with while it is judged."""
    record = {"file": MODEL_FILE, "precision": "bf16", "backend": "openvino", "quantization": None,
              "requires_cpu": list(BF16_CPU_FLAGS), "pad_to_multiple_of": PAD_MULTIPLE}
    if backend is None:
        return record
    return {**record, **judged, "verified_on": {"bf16_isa": bf16_cpu(cpu_flags()), "openvino": openvino_version(),
                                                "inference_precision": backend.inference_precision}}
