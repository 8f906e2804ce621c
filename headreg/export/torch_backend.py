"""PyTorch as an engine backend: a headed model run on the runtime's padded feeds.

Verification (export, ``headreg verify``, int8/bf16 acceptance) and ``headreg bench --compare-torch`` hand this
backend to the runtime engine (``Engine.with_backend``), so the PyTorch reference sees exactly the batches,
padding and slicing production gives onnxruntime, and its outputs go through the same postprocess.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .trace import ExportWrapper, input_names_for


class TorchBackend:
    """``run(feed, names) -> outputs`` over a (multi-)headed model, output names as in the exported graph.

    ``bf16``: under ``torch.autocast("cpu", dtype=torch.bfloat16)``, PyTorch's own fast path on CPUs with bf16.
    """

    name = "torch"

    def __init__(self, model: Any, *, bf16: bool = False):
        self.wrapper = ExportWrapper(model, input_names_for(model)).eval()
        self.output_names = self.wrapper.output_names
        self.bf16 = bf16

    def run(self, feed: dict[str, np.ndarray], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(names) if names is not None else list(self.output_names)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            values = self.wrapper(**{key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in feed.items()})
        outputs = dict(zip(self.output_names, values))
        return {name: outputs[name].detach().float().cpu().numpy() for name in names}
