"""Reading JSON Lines files with one-line errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path, error: type[Exception], required: tuple[str, ...] = ()) -> list[dict]:
    """The objects of a JSONL file (blank lines skipped). A line that is not a JSON object, or lacks
    a ``required`` field, raises ``error`` naming ``path:line``."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        missing = [name for name in required if not isinstance(row, dict) or name not in row]
        if not isinstance(row, dict) or missing:
            raise error(f"{path}:{number} needs fields {' and '.join(repr(name) for name in required)}")
        rows.append(row)
    return rows
