"""Export a HeadedModel to a verified ONNX bundle, and re-verify bundles.

>>> from headreg.export import ExportOptions, export_onnx, verify_bundle
>>> bundle = export_onnx(model, "bundle/", tokenizer, ExportOptions(quantize="int8"))   # doctest: +SKIP
>>> verify_bundle("bundle/").passed                                                     # doctest: +SKIP
True

One module per job: ``trace`` (torch.onnx.export), ``cases`` (verification inputs), ``verify``
(compare with PyTorch, ``verify_bundle``), ``optimize``, ``quantize``, ``tokenizer``, ``bundle``
(the manifest), ``source`` (what ``headreg export SOURCE`` loads) and ``pipeline`` (``export_onnx``).
``verify_bundle`` needs no torch for the numbers; torch is imported only by ``export_onnx``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

__all__ = ["Bundle", "ExportOptions", "Report", "VerificationFailed", "export_onnx", "verify_bundle"]

_LAZY = {
    "Bundle": "headreg.export.pipeline",
    "ExportOptions": "headreg.export.pipeline",
    "export_onnx": "headreg.export.pipeline",
    "Report": "headreg.export.verify",
    "VerificationFailed": "headreg.export.verify",
    "verify_bundle": "headreg.export.recheck",
}

if TYPE_CHECKING:
    from .pipeline import Bundle, ExportOptions, export_onnx
    from .recheck import verify_bundle
    from .verify import Report, VerificationFailed


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
