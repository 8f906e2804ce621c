"""Trace a HeadedModel to ONNX with ``torch.onnx.export``: dynamic batch and sequence axes, named outputs.

The graph's outputs are ``logits``, ``pooled_output`` and then the head's ``export_extras()`` in order; a
multi-head model's are ``pooled_output`` (+ ``pooled_output.<pooling>`` per further pooling) and then
``{head}.logits`` and ``{head}.<extra>`` per head (``model.graph_output_names()``).
``export_onnx`` tries the TorchScript exporter first and falls back to dynamo (see ``AUTO_ORDER``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import HeadregError

EXPORTERS = ("dynamo", "torchscript")
# exporter="auto": TorchScript traces MiniLM-L6 in ~1.7 s against dynamo's ~7.6 s and its graph ran as fast or
# faster (docs/performance.md); dynamo is the fallback for models TorchScript cannot trace or whose graph fails
# verification (data-dependent Python control flow gets baked into a TorchScript trace).
AUTO_ORDER = ("torchscript", "dynamo")
# With --optimize, dynamo first: onnxscript's ORT fusions recognise attention in the dynamo graph only (the fused
# dynamo graph runs about as fast as the unfused TorchScript one).
AUTO_ORDER_OPTIMIZE = ("dynamo", "torchscript")
BATCH, SEQUENCE = "batch", "sequence"
# Above this many bytes of weights the protobuf limit forces a .onnx.data side file.
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2
# Trace with a batch and length that are neither 0 nor 1, which torch.export would specialise.
TRACE_BATCH, TRACE_LENGTH = 2, 16


class ExportError(HeadregError, RuntimeError):
    """The model could not be traced to an ONNX graph that fits the bundle contract."""


class ExportWrapper(nn.Module):
    """Presents a (multi-)headed model as the graph the bundle promises: fixed inputs in, a tuple of named outputs out."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = tuple(model.graph_output_names())

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        outputs = self.model.graph_outputs(input_ids, attention_mask, token_type_ids)
        return tuple(outputs[name] for name in self.output_names)


def input_names_for(model: Any) -> tuple[str, ...]:
    names = ("input_ids", "attention_mask")
    return names + ("token_type_ids",) if model.accepts_token_type_ids else names


@contextlib.contextmanager
def export_mode(model: nn.Module):
    """Eval mode and eager attention for the duration of an export, restored afterwards.

    Eager attention because transformers-5 ``sdpa`` graphs defeat onnxruntime's attention fusion and
    some backbones (DeBERTa-v2) have no sdpa path at all; eager exports on every architecture we test.
    """
    backbone = model.backbone
    previous = getattr(backbone.config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(backbone, "set_attn_implementation")
    if switch:
        backbone.set_attn_implementation("eager")
    # Mixture-of-experts layers: transformers' default grouped_mm routes with aten::histc (no ONNX symbolic)
    # and a custom op dynamo cannot convert; batched_mm gathers each token's experts' weights instead, the
    # same sums with only indexing and batched matmuls, which both exporters trace.
    experts = getattr(backbone.config, "_experts_implementation", None)
    switch_experts = experts not in (None, "eager", "batched_mm") and hasattr(backbone, "set_experts_implementation")
    if switch_experts:
        backbone.set_experts_implementation("batched_mm")
    try:
        with eval_mode(model), _traceable_longformer(backbone):
            yield
    finally:
        if switch:
            backbone.set_attn_implementation(previous)
        if switch_experts:
            backbone.set_experts_implementation(experts)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the duration, then the mode the model was in: a model being trained comes back training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _banded_attention(self, hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                      is_global_attn=None, output_attentions=False):
    """LongformerSelfAttention's local attention as one masked (batch, heads, length, length) product: each query
    sees the keys within ``one_sided_attn_window_size`` of it, padded keys get the same ``finfo.min`` and padded
    queries the same zero probabilities as in the sliding-chunk kernel, so the sums are the model's own."""
    if is_global_attn or output_attentions:  # global tokens need the chunked kernel's data-dependent indexing
        return type(self).forward(self, hidden_states, attention_mask, is_index_masked, is_index_global_attn,
                                  is_global_attn, output_attentions)
    batch, length, _ = hidden_states.shape
    heads, dim = self.num_heads, self.head_dim

    def split(states):
        return states.view(batch, length, heads, dim).transpose(1, 2)

    query = split(self.query(hidden_states) / math.sqrt(dim))
    scores = query @ split(self.key(hidden_states)).transpose(-1, -2)
    masked_key = (attention_mask != 0)[:, None, None, :]
    scores = scores + masked_key.to(scores.dtype) * torch.finfo(scores.dtype).min
    positions = torch.arange(length, device=hidden_states.device)
    outside = (positions[:, None] - positions[None, :]).abs() > self.one_sided_attn_window_size
    probs = torch.softmax(scores.masked_fill(outside, float("-inf")), dim=-1, dtype=torch.float32)
    probs = probs.masked_fill(is_index_masked[:, None, :, None], 0.0).type_as(scores)
    output = probs @ split(self.value(hidden_states))
    return (output.transpose(1, 2).reshape(batch, length, heads * dim),)


def _no_window_padding(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, pad_token_id):
    return 0, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds


@contextlib.contextmanager
def _traceable_longformer(backbone: nn.Module):
    """Longformer pads every input to a multiple of its window in Python and reshapes its sliding chunks by that
    padded length: a TorchScript trace bakes the trace length in (the graph failed at batch 1 length 1), and
    dynamo stops on the data-dependent padding. While tracing, the window padding is skipped and the local
    attention runs as a banded mask over the whole length (:func:`_banded_attention`): the same function of the
    real tokens, verified against the unpatched model afterwards like every export, at the price of memory
    quadratic in the length instead of linear (length x length scores per head)."""
    from transformers.models.longformer import modeling_longformer as longformer

    if not isinstance(backbone, longformer.LongformerModel):
        yield
        return
    layers = [m for m in backbone.modules() if isinstance(m, longformer.LongformerSelfAttention)]
    for layer in layers:
        layer.forward = _banded_attention.__get__(layer)
    backbone._pad_to_window_size = _no_window_padding.__get__(backbone)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
        del backbone._pad_to_window_size


def dummy_inputs(model: Any, input_names: tuple[str, ...], *, padded_row: bool = False) -> dict[str, torch.Tensor]:
    """Trace inputs from optimum's text input generator (random ids of the model's vocabulary).

    ``padded_row``: the second row gets padding on the model's side, so a TorchScript trace records the
    masked path rather than a shortcut taken when the mask is all ones.
    """
    from optimum.utils import DummyTextInputGenerator, NormalizedTextConfig

    config = NormalizedTextConfig(model.backbone.config)
    generator = DummyTextInputGenerator("feature-extraction", config, batch_size=TRACE_BATCH, sequence_length=TRACE_LENGTH)
    inputs = {name: generator.generate(name, framework="pt").long() for name in input_names}
    # No padding in the trace sample: a fully masked row would be a different graph path (and NaN in ORT).
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if padded_row:
        pad = slice(0, TRACE_LENGTH // 4) if getattr(model, "_decoder", False) else slice(-TRACE_LENGTH // 4, None)
        inputs["attention_mask"][1, pad] = 0
    if "token_type_ids" in inputs:
        inputs["token_type_ids"] = inputs["token_type_ids"].clamp(0, 1)
    return inputs


@contextlib.contextmanager
def quiet_exporters():
    """The exporters (and onnxscript's rewriter) warn about torchvision, pytree internals and axis renames; none
    of it is actionable."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _expm1(g, x):
    return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0)))


def _rms_norm(g, x, normalized_shape, weight, eps):
    from torch.onnx import symbolic_helper as helper

    axes = list(range(-len(helper._get_const(normalized_shape, "is", "normalized_shape")), 0))
    eps = torch.finfo(torch.float32).eps if helper._is_none(eps) else helper._get_const(eps, "f", "eps")
    mean_square = g.op("ReduceMean", g.op("Mul", x, x), axes_i=axes, keepdims_i=1)
    normed = g.op("Div", x, g.op("Sqrt", g.op("Add", mean_square, g.op("Constant", value_t=torch.tensor(eps)))))
    return normed if helper._is_none(weight) else g.op("Mul", normed, weight)


# ONNX symbolics TorchScript lacks for ops text backbones use (Apertus' xIELU activation: expm1; DiffLlama's
# torch.rms_norm), registered only while a TorchScript export runs. exp(x) - 1 is within 1e-7 of expm1 in
# float32, far inside verification's atol; rms_norm is its definition, x / sqrt(mean(x^2) + eps) * weight.
TORCHSCRIPT_SYMBOLICS = {"aten::expm1": _expm1, "aten::rms_norm": _rms_norm}


@contextlib.contextmanager
def _torchscript_symbolics(opset: int):
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    for name, symbolic in TORCHSCRIPT_SYMBOLICS.items():
        register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        for name in TORCHSCRIPT_SYMBOLICS:
            unregister_custom_op_symbolic(name, opset)


@dataclass
class TraceResult:
    opset: int
    exporter: str
    output_dims: dict[str, list]  # graph output -> dims, as the manifest records them


def trace(model: Any, path: str | Path, *, opset: int | None = None, exporter: str = "dynamo") -> TraceResult:
    """Export ``model`` (a HeadedModel) to ``path`` and check that batch and sequence axes stayed symbolic."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    input_names = input_names_for(model)
    wrapper = ExportWrapper(model, input_names)
    output_names = wrapper.output_names
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    symbolic = symbolic_axes(model)
    with export_mode(model), torch.no_grad(), quiet_exporters():
        wrapper.eval()
        inputs = dummy_inputs(model, input_names, padded_row=exporter == "torchscript")
        try:
            if exporter == "dynamo":
                batch, sequence = torch.export.Dim(BATCH), torch.export.Dim(SEQUENCE)
                torch.onnx.export(
                    wrapper,
                    (),
                    str(path),
                    kwargs=inputs,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    opset_version=opset,
                    dynamo=True,
                    external_data=external,
                    dynamic_shapes={name: {0: batch, 1: sequence} for name in input_names},
                    verbose=False,
                )
            else:
                axes = {name: {0: BATCH, 1: SEQUENCE} for name in input_names}
                axes.update({name: dict(zip((0, 1), (BATCH, SEQUENCE)[:count])) for name, count in symbolic.items()})
                with _torchscript_symbolics(opset or 17):
                    torch.onnx.export(
                        wrapper,
                        tuple(inputs[name] for name in input_names),
                        str(path),
                        input_names=list(input_names),
                        output_names=list(output_names),
                        opset_version=opset or 17,
                        dynamo=False,
                        dynamic_axes=axes,
                    )
        except ExportError:
            raise
        except Exception as exc:  # the exporters raise many types; say which step failed and how to go on
            hint = " Try exporter='torchscript' (--exporter torchscript)." if exporter == "dynamo" else ""
            raise ExportError(f"torch.onnx.export ({exporter}) failed: {type(exc).__name__}: {exc}.{hint}") from exc
    data_file = path.with_name(path.name + ".data")
    if data_file.exists() and not external:
        raise ExportError(f"the exporter wrote {data_file.name} for a model below 2 GB; expected one self-contained file")
    opset_used, output_dims = check_graph(path, input_names, output_names, symbolic=symbolic)
    if not external and any(isinstance(d, str) for name, dims in output_dims.items() for d in dims[symbolic.get(name, 0):]):
        output_dims = _fix_trailing_dims(path, wrapper, inputs, symbolic)
    return TraceResult(opset_used, exporter, output_dims)


def _fix_trailing_dims(path: Path, wrapper: ExportWrapper, inputs: dict[str, torch.Tensor],
                       symbolic: dict[str, int]) -> dict[str, list]:
    """Write the fixed sizes PyTorch gives into output axes the exporter left symbolic (FlauBERT's pooled_output
    came out as ``["batch", "Gatherpooled_output_dim_1"]``, which onnxruntime resolves to the hidden size: the
    manifest and the graph must say the same)."""
    import onnx

    with export_mode(wrapper.model), torch.no_grad():
        shapes = {name: tuple(value.shape) for name, value in zip(wrapper.output_names, wrapper(**inputs))}
    graph = onnx.load(str(path))
    for value in graph.graph.output:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis >= symbolic.get(value.name, 0) and dim.dim_param and axis < len(shapes[value.name]):
                dim.dim_value = shapes[value.name][axis]  # clears dim_param (a oneof)
    onnx.save(graph, str(path))
    return {v.name: _dims(v) for v in graph.graph.output}


def _dims(value: Any) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def graph_signature(path: str | Path) -> tuple[dict[str, list], dict[str, list], int]:
    """(input dims, output dims, default-domain opset) of an ONNX file, without loading external weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = {v.name: _dims(v) for v in model.graph.input}
    outputs = {v.name: _dims(v) for v in model.graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return inputs, outputs, opset


def symbolic_axes(model: Any) -> dict[str, int]:
    """Graph output -> how many leading axes must stay symbolic: batch (+ sequence for per-token logits)."""
    axes = {}
    for member in model.members():
        axes[member.outputs["pooled_output"]] = 1
        axes[member.outputs["logits"]] = 2 if member.head.level == "token" else 1
    return axes


def check_graph(path: Path, input_names: tuple[str, ...], output_names: tuple[str, ...], *,
                symbolic: dict[str, int]) -> tuple[int, dict[str, list]]:
    """Raise ExportError unless the graph has the promised names and symbolic batch/sequence axes; else return
    its (opset, output dims)."""
    inputs, outputs, opset = graph_signature(path)
    if tuple(inputs) != input_names or tuple(outputs) != output_names:
        raise ExportError(
            f"exported graph has inputs {list(inputs)} and outputs {list(outputs)}; expected {list(input_names)} "
            f"and {list(output_names)}"
        )
    problems = [f"input {name} dims {dims}" for name, dims in inputs.items() if any(isinstance(d, int) for d in dims[:2])]
    for name, count in symbolic.items():
        if any(isinstance(d, int) for d in outputs[name][:count]):
            problems.append(f"output {name} dims {outputs[name]}")
    if problems:
        raise ExportError(
            "batch/sequence axes were fixed during export (the graph would only accept the trace shape): "
            + "; ".join(problems)
        )
    return opset, outputs
