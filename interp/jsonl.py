"""Reading JSON Lines files with one-line errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path, error: type[Exception], required: tuple[str, ...] = (), with_lines: bool = False) -> list:
    """The objects of a JSONL file (blank lines skipped); with ``with_lines``, (line number,
    object) pairs. Text that is not UTF-8, a line that is not a JSON object, or one that lacks a
    ``required`` field raises ``error`` naming ``path:line``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise error(f"{path}:{line} is not UTF-8 text (byte {exc.start} of the file)") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{number} is a JSON {type(row).__name__}, not an object with named fields")
        missing = [name for name in required if name not in row]
        if missing:
            raise error(f"{path}:{number} needs fields {' and '.join(repr(name) for name in required)} "
                        f"(lacks {', '.join(repr(name) for name in missing)})")
        rows.append((number, row) if with_lines else row)
    return rows
