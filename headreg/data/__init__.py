"""Text shipped with headreg: varied real English sentences (reviews, news, questions, support requests).

Export verification and int8 acceptance run on them, and the benchmarks build their mixed-length corpus
from them, so every measurement of agreement uses the same, reviewable text.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


def _lines(name: str) -> list[str]:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    return tuple(_lines("sentences.txt"))


@lru_cache(maxsize=1)
def varied() -> tuple[str, ...]:
    """More varied text: reviews, news with names, questions, support tickets, chat, other languages, numbers,
    code, domain prose, sarcasm, one-word replies and long paragraphs. With :func:`sentences` it is the built-in
    calibration and acceptance set of ``headreg export`` (when no ``--calibration-texts`` are given)."""
    return tuple(_lines("varied.txt"))


@lru_cache(maxsize=1)
def pairs() -> tuple[tuple[str, str], ...]:
    """Sentence pairs (entailment, contradiction, unrelated, question/answer, empty) for models that take pairs."""
    import json

    rows = [json.loads(line) for line in _lines("pairs.jsonl")]
    return tuple((row["text"], row["text_pair"]) for row in rows)


def builtin_texts(with_pairs: bool) -> list:
    """The built-in calibration + acceptance texts: sentences, varied texts and (for pair models) pairs."""
    return [*sentences(), *varied(), *(pairs() if with_pairs else ())]
