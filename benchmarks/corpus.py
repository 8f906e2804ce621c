"""The mixed-length real-text corpus: English sentences shipped in ``headreg/data/sentences.txt``, combined and cut.

Each row aims at a word count drawn log-uniformly from ``[4, 100]`` (about 5-128 tokens with a BERT
WordPiece tokenizer), so short queries and long reviews arrive mixed, as in a real request stream. The
same ``seed`` always gives the same rows, in the same (arrival) order.
"""

from __future__ import annotations

import math
import random

from headreg.data import sentences


def mixed_corpus(rows: int = 512, seed: int = 0, min_words: int = 4, max_words: int = 100) -> list[str]:
    """``rows`` texts of varied length made of real sentences, in a fixed pseudo-random arrival order."""
    rng = random.Random(seed)
    pool = list(sentences())
    texts = []
    for _ in range(rows):
        target = round(math.exp(rng.uniform(math.log(min_words), math.log(max_words))))
        words: list[str] = []
        while len(words) < target:
            words.extend(rng.choice(pool).split())
        texts.append(" ".join(words[:target]))
    return texts
