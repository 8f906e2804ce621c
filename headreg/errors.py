"""Exceptions raised by headreg. Each message says what was wrong and what to do about it."""

from __future__ import annotations


class HeadregError(Exception):
    """Base class of every error headreg raises on purpose."""


class UnknownHeadError(HeadregError, LookupError):
    """A head name or alias that no installed head has."""


class HeadCollisionError(HeadregError, ValueError):
    """Two distributions register the same head name or alias."""


class HeadImportError(HeadregError, ImportError):
    """A registered head's class or postprocess could not be imported."""


class PluginError(HeadregError, RuntimeError):
    """A plugin failed to load (raised only with HEADREG_STRICT_PLUGINS=1)."""


class PluginSettingError(PluginError):
    """HEADREG_LOAD_PLUGINS / HEADREG_DISABLE_PLUGINS name a plugin that is not installed (fatal when strict)."""


class PluginWarning(UserWarning):
    """A plugin setting that is ignored, said once in one line (the CLI prints it as ``warning: ...``)."""


class MissingExtraError(HeadregError, ImportError):
    """A feature needs an optional dependency group that is not installed."""


class HeadConfigError(HeadregError, ValueError):
    """Head options that cannot work (num_labels < 1, a label map of the wrong size, ...)."""


class LabelError(HeadregError, ValueError):
    """Labels whose dtype or shape does not fit the head."""


class SaveLoadError(HeadregError, OSError):
    """A save directory that exists, or a load directory with missing or corrupt files."""


class BundleError(HeadregError, ValueError):
    """An export bundle that is missing files or whose files disagree."""


class PredictionError(HeadregError, RuntimeError):
    """Running the model, or a head's postprocess, failed for one call or request (its batchmates are unaffected)."""


class VerificationError(HeadregError, AssertionError):
    """onnxruntime does not reproduce PyTorch within tolerance."""


def require(module: str, extra: str, feature: str):
    """Import ``module`` or raise MissingExtraError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs {module!r}, which is not installed. Install it with: pip install 'headreg[{extra}]'"
        ) from exc


class BackboneError(HeadregError, TypeError):
    """Something that is not a usable transformers backbone."""
