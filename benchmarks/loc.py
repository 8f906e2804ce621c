"""Lines of code under ``headreg/``: physical lines, and lines holding code (no blank, comment or docstring lines).

    python -m benchmarks.loc                 # the working tree
    python -m benchmarks.loc 1858fca HEAD    # git revisions side by side, by area

The figure issue #19 ("the engine should remove code") is measured by; docstrings are left out of the second count so
that documenting code is never a cost in it.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tokenize
from pathlib import Path

_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_SCOPES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def count(source: str) -> tuple[int, int]:
    """(physical lines, lines holding code) of one Python source."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, _SCOPES) and node.body and isinstance(node.body[0], ast.Expr):
            value = node.body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _LAYOUT:
            code.update(range(token.start[0], token.end[0] + 1))
    return source.count("\n"), len(code - docstrings)


def _area(path: str) -> str:
    parts = Path(path).parts  # headreg/<area>/... or headreg/<module>.py
    return parts[1] if len(parts) > 2 else "(top-level modules)"


def _files(revision: str | None) -> dict[str, str]:
    if revision is None:
        return {str(p): p.read_text() for p in sorted(Path("headreg").rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", revision, "headreg"], check=True,
                           capture_output=True, text=True).stdout.split()
    return {name: subprocess.run(["git", "show", f"{revision}:{name}"], check=True, capture_output=True,
                                 text=True).stdout for name in names if name.endswith(".py")}


def by_area(files: dict[str, str]) -> dict[str, tuple[int, int]]:
    areas: dict[str, tuple[int, int]] = {}
    for path, source in files.items():
        physical, code = count(source)
        before = areas.get(_area(path), (0, 0))
        areas[_area(path)] = (before[0] + physical, before[1] + code)
    return areas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="*", help="git revisions (default: the working tree)")
    revisions = parser.parse_args().revisions or [None]
    tables = [by_area(_files(revision)) for revision in revisions]
    print(f"{'area':22s}" + "".join(f"{revision or 'working tree':>22s}" for revision in revisions))
    for area in sorted(set().union(*tables)) + ["total"]:
        cells = [table.get(area, (0, 0)) if area != "total" else tuple(map(sum, zip(*table.values())))
                 for table in tables]
        print(f"{area:22s}" + "".join(f"{physical:>12,d} {code:>9,d}" for physical, code in cells))


if __name__ == "__main__":
    main()
