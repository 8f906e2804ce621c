"""The bundle's ``tokenizer.json``: a ``tokenizers`` fast tokenizer, converted from a slow one when needed.

Truncation and padding are switched off in the file; the runtime sets them from the manifest
(``max_length``, ``padding_side``, ``pad_token_id``). Pair inputs are handled by the tokenizer's own
post-processor (``[CLS] a [SEP] b [SEP]`` with type ids), which the file keeps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HeadregError


class TokenizerError(HeadregError, ValueError):
    """No usable tokenizer, or one that cannot be converted to a fast tokenizer."""


@dataclass
class BundleTokenizer:
    """A fast tokenizer plus what the runtime needs around it."""

    tokenizer: Any  # tokenizers.Tokenizer
    pad_token_id: int
    pad_token: str | None
    source: Any = None  # the transformers tokenizer it came from, when there was one

    def save(self, path: str | os.PathLike) -> None:
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.tokenizer.save(str(path))


def load_tokenizer_dir(path: str | os.PathLike) -> Any:
    """A transformers tokenizer from a local directory (fast when it can be converted)."""
    from transformers import AutoTokenizer

    from ..model import quiet_transformers

    with quiet_transformers():
        try:
            return AutoTokenizer.from_pretrained(str(path), use_fast=True)
        except (OSError, ValueError, TypeError) as exc:
            raise TokenizerError(f"no tokenizer could be loaded from {path}: {exc}") from exc


def bundle_tokenizer(tokenizer: Any, *, pad_token_id: int | None) -> BundleTokenizer:
    """Turn a transformers tokenizer (fast or slow), a ``tokenizers.Tokenizer`` or a path into a BundleTokenizer.

    ``pad_token_id`` is the model config's, used when the tokenizer has no pad token (decoders).
    """
    from tokenizers import Tokenizer

    source = None
    if isinstance(tokenizer, (str, Path)):
        path = Path(tokenizer)
        try:
            tokenizer = Tokenizer.from_file(str(path)) if path.is_file() else load_tokenizer_dir(path)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
            if isinstance(exc, TokenizerError):
                raise
            raise TokenizerError(f"{path} is not a tokenizer tokenizers can read ({type(exc).__name__}: "
                                 f"{str(exc)[:200]}); pass a tokenizer directory or its tokenizer.json") from exc
    if isinstance(tokenizer, Tokenizer):
        fast = Tokenizer.from_str(tokenizer.to_str())
        pad_token = None
        pad_id = pad_token_id
    else:
        source = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            from transformers.convert_slow_tokenizer import convert_slow_tokenizer

            try:
                backend = convert_slow_tokenizer(tokenizer)
            except Exception as exc:  # converters raise ValueError, ImportError (sentencepiece/protobuf), ...
                raise TokenizerError(
                    f"{type(tokenizer).__name__} is a slow tokenizer that could not be converted to a fast one: {exc}"
                ) from exc
        fast = Tokenizer.from_str(backend.to_str())
        pad_token = getattr(tokenizer, "pad_token", None)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = pad_token_id
    if pad_id is None:
        pad_id = 0
    if pad_token is None:
        pad_token = fast.id_to_token(int(pad_id))
    return BundleTokenizer(fast, int(pad_id), pad_token, source)
