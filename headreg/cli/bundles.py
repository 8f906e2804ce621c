"""Opening a bundle for a command: exit 2 when the path is not a bundle at all, 1 when it fails its checks."""

from __future__ import annotations

from typing import Any

from .output import EXIT_FAILURE, fail, usage_error

# What --variant accepts on every command (a name outside it is a usage error, exit 2); whether the bundle has
# it is the Predictor's check (exit 1). runtime.variants.PREFERENCE lists them without "auto".
VARIANT_CHOICES = ["auto", "fp32", "int8", "bf16", "int8-ov"]


def check_bundle(path: str) -> None:
    """Exit 2 when ``path`` is not a bundle at all (a saved model, a missing file), 1 when its manifest says it is
    one but fails the manifest's checks (a changed or corrupt bundle, like any other load check); torch-free."""
    from ..errors import BundleError
    from ..manifest import is_bundle, read_manifest

    try:
        read_manifest(path)
    except BundleError as exc:
        if is_bundle(path):
            fail(str(exc), EXIT_FAILURE)
        usage_error(str(exc))


def load_predictor(bundle: str, **options: Any):
    """A Predictor, or exit: 2 when BUNDLE is not a bundle, 1 when it is one that fails its load checks."""
    from ..errors import BundleError
    from ..runtime import Predictor

    from ..runtime import InputError

    check_bundle(bundle)
    try:
        return Predictor(bundle, **options)
    except BundleError as exc:
        fail(f"{exc}", EXIT_FAILURE)
    except InputError as exc:  # an option out of range (--threads, --max-windows): the user's to fix
        usage_error(str(exc))
