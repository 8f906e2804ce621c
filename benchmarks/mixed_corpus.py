"""Write the benchmarks' mixed-length real-text corpus to a file, for ``headreg bench --texts``.

Usage:  python -m benchmarks.mixed_corpus OUT.txt [--rows 512] [--seed 0]
Rows are real sentences combined and cut to log-uniform lengths of about 5-128 tokens (see corpus.py).
"""

from __future__ import annotations

import argparse

from .corpus import mixed_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write("\n".join(mixed_corpus(args.rows, seed=args.seed)) + "\n")


if __name__ == "__main__":
    main()
