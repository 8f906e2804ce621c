"""Text shipped with headreg: varied real English sentences (reviews, news, questions, support requests).

Export verification and int8 acceptance run on them, and the benchmarks build their mixed-length corpus
from them, so every measurement of agreement uses the same, reviewable text.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    text = resources.files(__name__).joinpath("sentences.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
