"""What the runtime accepts: strings or (text, text_pair) tuples, checked up front; text files of them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import HeadregError


class InputError(HeadregError, ValueError):
    """An input that cannot be predicted on (not a string, a pair with a side missing); names its index."""


def check_inputs(texts: Sequence[Any], pairs: bool) -> None:
    """Raise InputError naming the first input that is neither a string nor a pair of strings."""
    for index, item in enumerate(texts):
        if isinstance(item, str):
            continue
        if isinstance(item, (tuple, list)):
            if len(item) != 2 or any(side is None for side in item):
                raise InputError(
                    f"input {index} is a sentence pair with a side missing ({item!r}); pass (text, text_pair) "
                    "with two strings"
                )
            for side, value in zip(("text", "text_pair"), item):
                if not isinstance(value, str):
                    raise InputError(f"input {index}: {side} is {type(value).__name__}, expected a string")
            if not pairs:
                raise InputError(f"input {index} is a sentence pair, but this bundle's tokenizer takes single texts")
            continue
        raise InputError(
            f"input {index} is {type(item).__name__} ({item!r:.40}), expected a string or a (text, text_pair) tuple"
        )


def read_texts(path: str | os.PathLike) -> list[str | tuple[str, str]]:
    """One text per line, or JSONL objects with ``text`` (and optional ``text_pair``); ``-`` reads stdin.

    A file is JSONL when its name ends in ``.jsonl`` or its first non-blank line starts with ``{``.
    """
    if str(path) == "-":
        import sys

        lines = sys.stdin.read().splitlines()
    else:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    if str(path).endswith(".jsonl") or next((line for line in lines if line.strip()), "").lstrip().startswith("{"):
        items: list[str | tuple[str, str]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{number}: expected a JSON object with a 'text' field ({exc})") from exc
            items.append((text, record["text_pair"]) if record.get("text_pair") is not None else text)
        return items
    return lines
