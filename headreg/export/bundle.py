"""The bundle's manifest (``headreg.json``, see docs/bundle-format.md) and what goes into it.

The manifest holds everything the torch-free runtime needs: head, labels, postprocess, pooling,
input/output names, max_length, tokenizer settings, file hashes and the verification summary.
"""

from __future__ import annotations

import datetime
import importlib.metadata
from pathlib import Path
from typing import Any

from .._version import __version__
from ..manifest import FORMAT, FORMAT_VERSION, INT8_FILE, MODEL_FILE, TOKENIZER_FILE, sha256_file
from ..pooling import is_decoder

VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "optimum", "tokenizers", "numpy")


def normalized_config(config: Any) -> Any:
    """optimum's normalized view (hidden_size, num_layers, num_attention_heads, vocab_size) of any config."""
    from optimum.utils import NormalizedConfigManager, NormalizedTextConfig

    try:
        return NormalizedConfigManager.get_normalized_config_class(config.model_type)(config)
    except (KeyError, NotImplementedError, AttributeError):
        return NormalizedTextConfig(config)


def backbone_info(config: Any) -> dict[str, Any]:
    normalized = normalized_config(config)
    return {
        "model_type": config.model_type,
        "hidden_size": getattr(normalized, "hidden_size", None),
        "num_hidden_layers": getattr(normalized, "num_layers", None),
        "num_attention_heads": getattr(normalized, "num_attention_heads", None),
        "vocab_size": getattr(normalized, "vocab_size", None),
        "max_position_embeddings": _declared_positions(config),
        "is_decoder": is_decoder(config),
    }


def position_limit(model: Any) -> int | None:
    """The longest input the backbone's position tables allow, or None when it declares no limit.

    Derived from how the model builds its position ids, not from its name: the backbone runs once on a short
    input of one repeated token under a function mode that sees every embedding lookup, and each learned
    position table (an embedding module named for positions) reports the index its first position used.
    RoBERTa-style tables start after the padding index (514 rows -> 512 positions), OPT's and mpnet's after a
    fixed offset, nystromformer's at 2; a table of ``n`` rows starting at ``k`` holds ``n - k`` positions.
    The declared ``max_position_embeddings`` caps the result (rotary models have no table, only that).
    """
    declared = _declared_positions(model.config)
    tables = _position_tables(model.backbone)
    if not tables:
        return declared
    first = _first_positions(model, tables)
    limits = [rows - first[name] for name, rows in tables.items() if name in first]
    if not limits:
        return declared
    limit = min(limits + ([declared] if declared else []))
    # A model may pad its input further before the lookup (Longformer: to a multiple of its attention window),
    # so the limit is run once; when that overruns a table, the longest length that does not is searched.
    if _runs(model, limit):
        return limit
    low, high = 1, limit - 1
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if _runs(model, middle) else (low, middle - 1)
    # nothing runs: not a position problem; verification reports what does fail
    return low if _runs(model, low) else limit


def _declared_positions(config: Any) -> int | None:
    """``max_position_embeddings`` when it is a limit (XLNet declares -1: none)."""
    declared = getattr(config, "max_position_embeddings", None)
    return declared if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0 else None


_POSITION_NAMES = ("position_embeddings", "positions_embed", "embed_positions", "wpe")


def _position_tables(backbone: Any) -> dict[str, int]:
    """Absolute position tables: embedding modules named for positions (relative-position biases excluded)."""
    tables = {}
    for name, module in backbone.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        weight = getattr(module, "weight", None)  # num_embeddings is not named alike everywhere (I-BERT: num_)
        if leaf in _POSITION_NAMES and getattr(weight, "dim", lambda: 0)() == 2:
            tables[name] = int(weight.shape[0])
    return tables


def _repeated_token(model: Any, length: int):
    import torch

    token = min(1000, max(int(getattr(model.config, "vocab_size", 2) or 2) // 2, 1))
    return torch.full((1, length), token, dtype=torch.long)


def _runs(model: Any, length: int) -> bool:
    """Whether the backbone runs an unpadded input of ``length`` tokens without overrunning an embedding table."""
    import torch

    from .trace import eval_mode

    ids = _repeated_token(model, length)
    with eval_mode(model), torch.no_grad():
        try:
            model.encode(ids, torch.ones_like(ids))
        except (IndexError, RuntimeError):  # an overrun table, or a buffer of that size (token types) too short
            return False
    return True


def _first_positions(model: Any, tables: dict[str, int]) -> dict[str, int]:
    """Table name -> the row the first position of an unpadded input reads (the table's offset)."""
    import torch
    from torch.overrides import TorchFunctionMode

    from .trace import eval_mode

    modules = dict(model.backbone.named_modules())
    owners = {}
    for name in tables:
        for tensor in [*modules[name].parameters(recurse=False), *modules[name].buffers(recurse=False)]:
            if tensor.dim() == 2 and tensor.shape[0] == tables[name]:
                owners[tensor.data_ptr()] = name
    seen: dict[str, int] = {}

    class Lookups(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.nn.functional.embedding:
                indices, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
                name = owners.get(weight.data_ptr())
                if name is not None and indices.numel():
                    seen[name] = int(indices.min())
            return func(*args, **kwargs)

    ids = _repeated_token(model, 3)
    with eval_mode(model), torch.no_grad(), Lookups():
        model.encode(ids, torch.ones_like(ids))
    return seen


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"headreg": __version__}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _str_label_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``id2label`` keyed by strings, as JSON keys are."""
    if isinstance(data.get("id2label"), dict):
        data["id2label"] = {str(k): v for k, v in data["id2label"].items()}
    return data


def build_manifest(
    model: Any,
    *,
    graph_outputs: dict[str, list],
    input_names: tuple[str, ...],
    opset: int,
    max_length: int,
    padding_side: str,
    tokenizer: Any,
    staging: Path,
    variants: dict[str, Any],
    verification: dict[str, Any],
    source: dict[str, Any],
    exporter: str,
    batch_padding: bool = True,
    head_verification: Any = lambda member: None,
) -> dict[str, Any]:
    """The ``headreg.json`` dict for a bundle whose files are already in ``staging``.

    ``heads`` lists every head (a single-head model gives a one-element list); a single-head bundle also keeps
    the top-level ``head``, ``postprocess_config``, ``num_labels``, ``id2label`` and ``pooling`` of format 1.
    """
    heads = [head_entry(member, head_verification(member)) for member in model.members()]
    files = {
        name: sha256_file(staging / name)
        for variant in variants.values() if isinstance(variant, dict)
        for name in (variant["file"], variant.get("weights")) if name
    }
    single = {}
    if not model.multi_head:
        only = heads[0]
        single = {
            "head": {key: only[key] for key in ("plugin", "plugin_version", "task", "level", "problem_type", "postprocess",
                                                "config")}
            | {"name": only["head"]},
            "postprocess_config": only["postprocess_config"],
            "num_labels": only["num_labels"],
            "id2label": only["id2label"],
            "pooling": only["pooling"],
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "headreg_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "multi_head": bool(model.multi_head),
        "heads": heads,
        **single,
        "backbone": backbone_info(model.config),
        "inputs": list(input_names),
        "outputs": graph_outputs,
        "output_axes": output_axes(model, graph_outputs),
        "opset": opset,
        "exporter": exporter,
        "max_length": max_length,
        "padding_side": padding_side,
        # false: the model's outputs change with padding, so the runtime batches only rows of equal length
        "batch_padding": batch_padding,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": sha256_file(staging / TOKENIZER_FILE),
            "pad_token_id": tokenizer.pad_token_id,
            "pad_token": tokenizer.pad_token,
            "pair": True,
        },
        "files": files,
        "variants": variants,
        "verification": verification,
        "source": source,
        "versions": versions(),
    }


def head_entry(member: Any, verification: dict[str, Any] | None) -> dict[str, Any]:
    """One head of the manifest's ``heads`` list: what the runtime needs to postprocess it on its own."""
    spec, head = member.spec, member.head
    return {
        "name": member.name,
        "head": spec.name,
        "plugin": spec.plugin,
        "plugin_version": spec.version or (__version__ if spec.builtin else ""),
        "task": spec.task,  # what a server says a model does, without importing the plugin that registered it
        "level": head.level,
        "problem_type": head.problem_type,
        "postprocess": spec.postprocess,
        "config": _str_label_keys(head.config.to_dict()),
        "postprocess_config": _str_label_keys(dict(head.manifest())),
        "num_labels": head.config.num_labels,
        "id2label": {str(k): v for k, v in head.config.labels().items()},
        "pooling": member.pooling.as_dict(),
        "outputs": dict(member.outputs),
        "result_fields": spec.fields,
        "verification": verification,
    }


def output_axes(model: Any, graph_outputs: dict[str, list]) -> dict[str, str]:
    """Per graph output: "token", "row" or "shared" (what the runtime engine slices per row).

    A head's logits and pooled features follow its export contract (symbolic_axes); any other output (a plugin's
    extra) follows its traced dims: a leading symbolic axis is the batch, a second one the sequence. Recorded, so
    the runtime never has to guess from dims an exporter may leave symbolic (GPT-2's pooled width after a Reshape).
    """
    from ..manifest import axes_from_dims
    from .trace import symbolic_axes

    declared = {name: ("token" if count == 2 else "row") for name, count in symbolic_axes(model).items()}
    return {name: declared[name] if name in declared else axes_from_dims(dims) for name, dims in graph_outputs.items()}


def file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def fp32_record() -> dict[str, Any]:
    """The fp32 variant's record (docs/bundle-format.md, headreg/runtime/variants.py)."""
    return {"file": MODEL_FILE, "precision": "fp32", "backend": "onnxruntime", "quantization": None, "optimized": False}


def int8_record(int8: dict[str, Any]) -> dict[str, Any]:
    """The int8 variant's record: its file and backend, then what quantization and acceptance found (``int8``;
    only ``quantization`` while the staged bundle is judged)."""
    return {"file": INT8_FILE, "precision": "int8", "backend": "onnxruntime", **int8}
