"""Check that reformatting changed no code: every Python file under the given folders parses to the same AST
as at a git revision (docstrings of functions and classes ignored; module docstrings' first lines kept).

    python tools/same_ast.py REV src tests benchmarks tools
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def normalised(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                keep = first.value.value.strip().splitlines()[0] if isinstance(node, ast.Module) else ""
                first.value.value = keep
    return ast.dump(tree)


def main(rev: str, folders: list[str]) -> int:
    bad = 0
    for folder in folders:
        for f in sorted(Path(folder).rglob("*.py")):
            try:
                old = subprocess.run(["git", "show", f"{rev}:{f}"], capture_output=True, text=True, check=True).stdout
            except subprocess.CalledProcessError:
                continue  # a new file
            if normalised(old) != normalised(f.read_text(encoding="utf-8")):
                print(f"CHANGED: {f}")
                bad += 1
    print("same AST everywhere" if not bad else f"{bad} files changed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
