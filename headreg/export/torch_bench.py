"""The PyTorch side of ``headreg bench --compare-torch``: the exported model as an engine backend.

It lives on the export side (torch, transformers) so that nothing under ``headreg/runtime/`` names torch-side code;
``headreg.runtime.bench.Contender`` runs the backend built here through the runtime engine like any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def torch_backend(model_dir: str | os.PathLike, threads: int | None = None, *, bf16: bool = False) -> Any:
    """An engine backend for the PyTorch model the bundle was exported from (needs ``headreg[torch]``).

    ``bf16``: under ``torch.autocast("cpu", dtype=torch.bfloat16)``, PyTorch's own fast path on CPUs with bf16.
    """
    from ..errors import require

    torch = require("torch", "torch", "bench --compare-torch")
    from .torch_backend import TorchBackend

    model = load_torch_model(model_dir)
    if threads:
        torch.set_num_threads(int(threads))
    return TorchBackend(model, bf16=bf16)


def torch_model_runner(model: Any, *, bf16: bool = False) -> Any:
    """``run(feed) -> logits`` for a model already in memory (``benchmarks/`` times shapes with it): the same
    :class:`TorchBackend` the engine runs, fetching ``logits`` only."""
    from .torch_backend import TorchBackend

    backend = TorchBackend(model, bf16=bf16)
    return lambda feed: backend.run(feed, ["logits"])["logits"]


def load_torch_model(model_dir: str | os.PathLike):
    """A saved headreg model, or a transformers task checkpoint imported through interop."""
    from ..files import MODEL_CONFIG
    from ..loading import load_model
    from ..model import quiet_transformers

    model_dir = Path(model_dir)
    if (model_dir / MODEL_CONFIG).is_file():
        return load_model(model_dir).eval()
    import json

    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from ..interop import from_transformers

    config = json.loads((model_dir / "config.json").read_text())
    token = any(name.endswith("ForTokenClassification") for name in config.get("architectures") or [])
    auto = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    with quiet_transformers():
        return from_transformers(auto.from_pretrained(model_dir, use_safetensors=True)).eval()
