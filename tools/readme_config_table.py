"""Rewrite the configuration table rows of docs/reference.md from the schema (``focusnfix.config.field_help``).

    python tools/readme_config_table.py          # rewrite docs/reference.md in place
    python tools/readme_config_table.py --check  # exit 1 when a row is missing or stale

Rows are ``| `key` | `default` | help |`` with ``||`` written ``//`` and ``|`` escaped, in schema order; a key's
row replaces the old one, a new key's row goes after the previous key's. Other lines are left alone. (The table was
in README.md before it moved to docs/reference.md; the tool keeps its name.)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"


def row(key: str, default: str, text: str) -> str:
    return f"| `{key}` | `{default}` | {text.replace('||', '//').replace('|', chr(92) + '|')} |"


def rewrite(text: str) -> str:
    from focusnfix.config import field_help

    lines = text.splitlines()
    where = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\| `([a-z_.0-9]+)` \| `", line))}
    previous = None
    for key, default, text in field_help():
        new = row(key, default, text)
        if key in where:
            lines[where[key]] = new
        else:
            if previous is None:
                raise SystemExit(f"readme_config_table: no row before {key} to insert after")
            at = where[previous] + 1
            lines.insert(at, new)
            where = {k: (i + 1 if i >= at else i) for k, i in where.items()}
            where[key] = at
        previous = key
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    old = REFERENCE.read_text()
    new = rewrite(old)
    if args.check:
        print("docs/reference.md config table up to date" if new == old else "docs/reference.md config table is stale")
        return 0 if new == old else 1
    REFERENCE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
