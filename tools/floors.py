"""Print the declared dependency floors of pyproject.toml as exact pins, one ``name==version`` a line.

``make test-floors`` installs these pins into ``.venv-floors`` (a minimal-versions environment) and runs
the tests that train, save ``lora/`` and sample on the tiny models, so a floor that is too low (an API
the code needs is missing in that release) fails there rather than at the end of a user's run.

    python tools/floors.py             # runtime dependencies ([project] dependencies)
    python tools/floors.py --build     # the build requirements ([build-system] requires)
    python tools/floors.py --extra rate  # an optional extra's floors
    python tools/floors.py --all-extras  # every optional extra's floors (each requirement once)

Every runtime dependency must declare a ``>=`` floor; one without is reported (status 2), because an
unpinned floor cannot be tested.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def _load(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if tomllib is not None:
        return tomllib.loads(text)
    raise SystemExit("tools/floors.py needs Python >= 3.11 (tomllib)")


def floor_of(requirement: str) -> tuple[str, str | None]:
    """``("diffusers", "0.34")`` for ``"diffusers>=0.34"``; ``(name, None)`` without a ``>=`` floor."""
    m = _REQ.match(requirement.split(";")[0])
    if m is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    name, spec = m.group(1), m.group(3)
    floors = re.findall(r">=\s*([0-9][0-9A-Za-z.+!-]*)", spec)
    return name, (floors[0] if floors else None)


def floors(pyproject: Path = ROOT / "pyproject.toml", build: bool = False, extra: str | None = None,
           all_extras: bool = False) -> dict[str, str | None]:
    """``{name: floor}`` of the chosen requirement list (None: no floor declared)."""
    data = _load(pyproject)
    extras = data["project"].get("optional-dependencies", {})
    if build:
        reqs = data["build-system"]["requires"]
    elif all_extras:
        reqs = [r for group in extras.values() for r in group]
    elif extra:
        if extra not in extras:
            raise SystemExit(f"floors.py: error: no extra {extra!r} in {pyproject} (extras: {', '.join(extras)})")
        reqs = extras[extra]
    else:
        reqs = data["project"]["dependencies"]
    return dict(floor_of(r) for r in reqs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    p.add_argument("--build", action="store_true", help="the [build-system] requires instead")
    p.add_argument("--extra", help="an optional extra's requirements instead")
    p.add_argument("--all-extras", action="store_true", help="every optional extra's requirements instead")
    args = p.parse_args(argv)
    found = floors(args.pyproject, args.build, args.extra, args.all_extras)
    missing = [n for n, v in found.items() if v is None and not args.build]
    if missing:
        print(f"floors.py: error: {', '.join(missing)} declare no >= floor in {args.pyproject}; add one",
              file=sys.stderr)
        return 2
    for name, version in found.items():
        print(name if version is None else f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
