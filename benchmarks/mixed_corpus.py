"""Write a mixed-length corpus for ``headreg bench --texts``: rows of 5 to 128 tokens, in random order.

Usage:  python benchmarks/mixed_corpus.py OUT.txt [--rows 256] [--seed 0] [--lengths uniform|skewed]
``uniform``: every length from 5 to 128 equally likely (mean ~66; the hard case for bucketing).
``skewed``: log-uniform, many short rows and a long tail (mean ~38), closer to real traffic.
Words are common single-token English words, so a row of n words is n + 2 tokens for a BERT tokenizer.
"""

from __future__ import annotations

import argparse
import math
import random

WORDS = (
    "the of and to in is was for on that with as by at from his her they this which but not are have had one "
    "all were when there can more been has their time if will would who so about up out into them year over "
    "new first people city world after also some could two only state other then than its made many may most"
).split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lengths", choices=("uniform", "skewed"), default="uniform")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    def length() -> int:
        if args.lengths == "uniform":
            return rng.randint(5, 128)
        return min(128, int(math.exp(rng.uniform(math.log(5), math.log(129)))))

    lines = [" ".join(rng.choice(WORDS) for _ in range(length() - 2)) for _ in range(args.rows)]
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
