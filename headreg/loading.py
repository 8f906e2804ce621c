"""``load_model``: a saved headreg model, one head or several, rebuilt from json + safetensors (never pickle)."""

from __future__ import annotations

import os
from pathlib import Path

from .model import load_single_head
from .multihead import load_multi_head
from .saved import read_saved_model


def load_model(
    directory: str | os.PathLike, *, trust_remote_code: bool = False, device: str | None = None, strict: bool = True
):
    """Load a model written by ``HeadedModel.save_pretrained``. Reads json + safetensors only, never pickle.

    ``strict`` (default): backbone weights missing from, unexpected in or mis-shaped for the backbone's
    config are a SaveLoadError naming them, never silently random. ``strict=False`` loads anyway (for a
    backbone you deliberately saved without some weights).
    """
    directory = Path(directory)
    saved = read_saved_model(directory)
    load = load_multi_head if "heads" in saved else load_single_head
    model = load(directory, saved, trust_remote_code=trust_remote_code, strict=strict)
    model.eval()
    if device is not None:
        model.to(device)
    return model
