"""Runtime backends: a model file + thread settings -> ``run(feeds) -> outputs``; the Predictor does not care which.

- ``onnxruntime`` (always installed): the session settings of :mod:`headreg.runtime.session`, the same ones
  export verification uses.
- ``openvino`` (optional, ``pip install 'headreg[openvino]'``): reads the same ``model.onnx`` and runs it in the
  precision the variant names. On a CPU with AVX-512 BF16 or AMX, bf16 is OpenVINO's native fast path
  (onnxruntime's CPU provider has no bf16 MatMul). Imported only when a variant asks for it.

Both are torch-free. A backend may be shared by threads: onnxruntime sessions are thread-safe, and the
OpenVINO backend hands each call its own infer request from a pool.
"""

from __future__ import annotations

import os
import queue
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ..errors import BundleError, require

BACKENDS = ("onnxruntime", "openvino")
# OpenVINO's names for the precisions a variant record may name.
# int8: the graph's own FakeQuantize operations run in int8 and everything between them in bf16 (its accepted
# configuration: 1.5-1.7x bf16 alone, where f32 between them gave 1.45x; it needs a bf16 CPU, see openvino_int8).
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "bf16"}
# CPU flags with native bf16 matmuls (x86: AVX-512 BF16 dot products, AMX tiles).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class Backend(Protocol):
    name: str  # "onnxruntime" | "openvino"
    precision: str  # what the variant record asked for
    input_names: list[str]
    output_names: list[str]
    input_dtype: Any  # numpy integer type of the id inputs
    output_dims: dict[str, list]  # per output its dims: an int where fixed, a name or None where dynamic

    def run(self, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name (``names``: a subset, default all), float32 numpy arrays owned by the caller."""
        ...


class OnnxruntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: Sequence[Any] | None = None,
                 precision: str = "fp32"):
        from .session import create_session

        self.precision = precision
        self.session = create_session(path, threads=threads, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_dtype = np.int32 if self.session.get_inputs()[0].type == "tensor(int32)" else np.int64
        self.output_dims = {o.name: list(o.shape or []) for o in self.session.get_outputs()}

    def run(self, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(names or self.output_names)
        return dict(zip(names, self.session.run(names, dict(feeds))))


STREAMS_ENV = "HEADREG_OPENVINO_STREAMS"


class OpenVINOBackend:
    """OpenVINO on the CPU, with dynamic batch and sequence axes, in the variant's precision.

    ``threads`` sets INFERENCE_NUM_THREADS (default: OpenVINO's choice, all cores). PERFORMANCE_HINT is
    LATENCY: one stream using every thread for each call, which is what a Predictor does (one batch at a
    time per caller); THROUGHPUT would split the threads into streams that only pay off with several
    requests in flight at once.
    """

    name = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str = "bf16",
                 weights: str | os.PathLike | None = None):
        ov = require("openvino", "openvino", f"the {precision} variant (OpenVINO backend)")
        if precision not in OPENVINO_PRECISIONS:
            raise BundleError(f"the OpenVINO backend runs {', '.join(OPENVINO_PRECISIONS)}, not {precision!r}")
        self.precision = precision
        core = ov.Core()
        model = core.read_model(str(path)) if weights is None else core.read_model(str(path), str(weights))
        # Every input gets dynamic batch and sequence axes, whatever the file's annotations say.
        model.reshape({port.get_any_name(): ov.PartialShape([-1, -1]) for port in model.inputs})
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins its threads to cores by default, and every process picks the same ones: two Ray actors,
            # Spark workers or server replicas on one host then share one core (measured: 2 processes x 1 thread
            # 76 rows/s each pinned, 155 each unpinned; benchmarks/scale_out.py). The OS scheduler spreads them.
            "ENABLE_CPU_PINNING": os.environ.get("HEADREG_OPENVINO_PINNING", "0") == "1",
        }
        # `headreg serve --model-workers N` runs N batches at once; one OpenVINO stream runs one call at a time
        # (measured: 2 workers on 1 stream 138 req/s against 216 on one worker), so it asks for N streams,
        # each with the threads one call is given
        streams = max(int(os.environ.get(STREAMS_ENV, "1") or 1), 1)
        if streams > 1:
            config["NUM_STREAMS"] = streams
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads) * streams
        self.compiled = core.compile_model(model, "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self._outputs = {name: self.compiled.output(name) for name in self.output_names}
        self.output_dims = {port.get_any_name(): [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
                            for port in self.compiled.outputs}
        kind = self.compiled.inputs[0].get_element_type().get_type_name()
        self.input_dtype = np.int32 if kind == "i32" else np.int64
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def inference_precision(self) -> str:
        """What OpenVINO actually runs (it falls back to f32 where the CPU has no bf16)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def run(self, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_outputs=False (the default) copies the outputs out of the request, so it can be reused
            results = request.infer({name: feeds[name] for name in self.input_names})
        finally:
            self._requests.put(request)
        return {name: np.asarray(results[self._outputs[name]], dtype=np.float32) for name in (names or self.output_names)}


def open_backend(
    record: Mapping[str, Any], path: str | os.PathLike, *, threads: int | None = None, providers: Sequence[Any] | None = None,
    weights: str | os.PathLike | None = None,
) -> Backend:
    """The backend a variant record names (``backend``, ``precision``), loaded from ``path`` (and an OpenVINO IR's
    ``weights`` file, when given)."""
    backend = str(record.get("backend") or "onnxruntime")
    precision = str(record.get("precision") or "fp32")
    if backend == "onnxruntime":
        # int8 files carry their own (quantized) operators; the session runs whatever the file holds
        return OnnxruntimeBackend(path, threads=threads, providers=providers, precision=precision)
    if backend == "openvino":
        return OpenVINOBackend(path, threads=threads, precision=precision, weights=weights)
    raise BundleError(f"unknown backend {backend!r} in the bundle's variant record; this headreg knows {', '.join(BACKENDS)}")


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when it is not installed (does not import it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino")
    except PackageNotFoundError:
        return None


def bf16_cpu(flags: Sequence[str] | frozenset[str]) -> str | None:
    """The best of ``BF16_CPU_FLAGS`` present in ``flags`` (AMX, listed last), else None."""
    return next((flag for flag in reversed(BF16_CPU_FLAGS) if flag in flags), None)
