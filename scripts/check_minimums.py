"""Check that constraints/minimum.txt pins every dependency pyproject.toml declares at exactly its
lower bound, and that the running environment has those versions installed.

    python scripts/check_minimums.py constraints/minimum.txt

Exit 1 (naming the package) if a bound and its pin disagree or a pinned version is not installed:
then the minimum-version run would test something other than what pyproject.toml promises.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def lower_bounds() -> dict[str, str]:
    """package -> the version after '>=' in pyproject.toml (dependencies and the dev extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        match = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
        if match is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no lower bound to test")
        bounds[_name(requirement)] = match.group(1)
    return bounds


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[_name(name)] = version.strip()
    return found


def _same(a: str, b: str) -> bool:
    pad = lambda v: [int(x) for x in re.findall(r"\d+", v)] + [0] * 3  # noqa: E731
    return pad(a)[:3] == pad(b)[:3]


def main(path: str) -> int:
    bounds, pinned = lower_bounds(), pins(Path(path))
    problems = [f"{name}: pyproject.toml says >={bound}, {path} pins {pinned.get(name)}"
                for name, bound in bounds.items() if name not in pinned or not _same(bound, pinned[name])]
    for name, version in pinned.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: pinned at {version} but not installed")
            continue
        if not _same(installed.split("+")[0], version):
            problems.append(f"{name}: pinned at {version} but {installed} is installed")
    for problem in problems:
        print(f"check_minimums: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_minimums: {len(pinned)} packages at their declared minimums")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "constraints" / "minimum.txt")))
