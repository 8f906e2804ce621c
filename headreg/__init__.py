"""headreg: attach task heads to Hugging Face encoders, export verified ONNX bundles, serve them without torch.

>>> from headreg import attach_head, list_heads
>>> [spec.name for spec in list_heads(plugin="headreg")]
['multi_label', 'regression', 'seq_cls', 'token_cls']

Only the names below are public. Torch-backed names are imported on first use, so ``import headreg``
stays light enough for a torch-free production image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__  # noqa: E402
from ._lazy import lazy_getattr  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .installed import get_head, is_head, list_heads  # noqa: E402
from .registry import HeadSpec  # noqa: E402

__all__ = [
    "HeadOutput",
    "HeadSpec",
    "HeadedModel",
    "MultiHeadCollator",
    "MultiHeadModel",
    "MultiHeadOutput",
    "__version__",
    "attach_head",
    "attach_heads",
    "from_transformers",
    "get_head",
    "hookimpl",
    "is_head",
    "list_heads",
    "load_model",
]

_LAZY = {
    "attach_head": "headreg.model",
    "load_model": "headreg.loading",
    "HeadedModel": "headreg.model",
    "HeadOutput": "headreg.model",
    "from_transformers": "headreg.interop",
    "attach_heads": "headreg.multihead",
    "MultiHeadModel": "headreg.multihead",
    "MultiHeadCollator": "headreg.multihead",
    "MultiHeadOutput": "headreg.multihead",
}

if TYPE_CHECKING:
    from .interop import from_transformers
    from .loading import load_model
    from .model import HeadedModel, HeadOutput, attach_head
    from .multihead import MultiHeadCollator, MultiHeadModel, MultiHeadOutput, attach_heads


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
