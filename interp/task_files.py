"""Where a task's prompts come from: JSONL and CSV files, folders of them, template files and
Hugging Face datasets.

Every source yields rows with the fields ``clean``, ``answer`` and optionally ``corrupt``,
``wrong_answer`` and ``positions`` (see :meth:`interp.tasks.Task.from_pairs`):

* ``pairs.jsonl``: one JSON object per line;
* ``pairs.csv``: a header row naming the columns; empty cells are missing fields; ``positions``
  holds a JSON object (``{"IO": 4, "S2": -3}``);
* a folder: every ``.jsonl`` and ``.csv`` file below it, in sorted order;
* ``task.json``: a prompt template (``interp.templates``), from which ``n_prompts`` are drawn;
* ``hf:<dataset>[:<split>]``: a Hugging Face dataset (needs the ``datasets`` package and the hub).

``fields`` renames a source's columns: ``{"clean": "prompt", "answer": "target"}`` reads the
``prompt`` and ``target`` columns as ``clean`` and ``answer``. Errors name the file and the line
(or row) and the field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from interp.jsonl import read_jsonl
from interp.errors import first_line

if TYPE_CHECKING:
    from interp.model import Model
    from interp.tasks import Task

FIELDS = ("clean", "corrupt", "answer", "wrong_answer", "positions")
_SUFFIXES = (".jsonl", ".csv")


def _error(message: str):
    from interp.tasks import TaskError

    return TaskError(message)


def check_fields(fields: dict | None) -> dict:
    """``fields`` (this library's name -> the source's column) with unknown names refused."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise _error(f"--fields names an unknown field {unknown[0]!r}; known: {', '.join(FIELDS)}")
    return fields


def _renamed(row: dict, fields: dict) -> dict:
    """A source row with its columns renamed to this library's field names (unmapped names kept)."""
    out = {key: value for key, value in row.items() if key not in fields.values()}
    for ours, theirs in fields.items():
        if theirs in row:
            out[ours] = row[theirs]
    return out


def jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    """(``path:line``, object) of every line of a JSONL file."""
    from interp.tasks import TaskError

    return [(f"{path}:{line}", row) for line, row in read_jsonl(path, TaskError, with_lines=True)]


def csv_rows(path: Path) -> list[tuple[str, dict]]:
    """(``path:line``, row) of every data row of a CSV file with a header (empty cells left out;
    a ``positions`` cell parsed as JSON)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error(f"{path} is not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise _error(f"{path} has no header row naming its columns")
    rows = []
    for line, raw in enumerate(reader, start=2):
        if None in raw:
            raise _error(f"{path}:{line} has more cells than the header has columns")
        row = {key.strip(): value for key, value in raw.items() if key is not None and value not in (None, "")}
        if "positions" in row:
            try:
                row["positions"] = json.loads(row["positions"])
            except json.JSONDecodeError as exc:
                raise _error(f"{path}:{line}: field 'positions' is not a JSON object ({exc.msg})") from None
        rows.append((f"{path}:{line}", row))
    return rows


def _file_rows(path: Path) -> list[tuple[str, dict]]:
    return jsonl_rows(path) if path.suffix == ".jsonl" else csv_rows(path)


def source_rows(spec: str, fields: dict | None = None) -> tuple[str, list[tuple[str, dict]], dict]:
    """(task name, (label, row) pairs, settings) of a JSONL/CSV file, a folder or ``hf:<dataset>``."""
    fields = check_fields(fields)
    if spec.startswith("hf:"):
        name, rows = hf_rows(spec)
        settings = {"source": spec}
    else:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES)
            if not files:
                raise _error(f"folder {path} holds no .jsonl or .csv task files")
            rows = [item for file in files for item in _file_rows(file)]
            name = path.name
        elif path.is_file():
            if path.suffix not in _SUFFIXES:
                raise _error(f"task file {path} is neither .jsonl, .csv nor a template .json")
            rows = _file_rows(path)
            name = path.stem
        else:
            raise _error(f"task file not found: {path}")
        settings = {"source": str(path)}
    if not rows:
        raise _error(f"task source {spec} holds no rows")
    if fields:
        settings["fields"] = fields
    return name, [(label, _renamed(row, fields) if isinstance(row, dict) else row) for label, row in rows], settings


def hf_rows(spec: str, limit: int = 100_000) -> tuple[str, list[tuple[str, dict]]]:
    """The rows of ``hf:<dataset>[:<split>]`` (default split ``train``), labelled ``<spec> row <i>``."""
    dataset, _, split = spec[3:].partition(":")
    if not dataset:
        raise _error("hf: needs a dataset name, e.g. hf:user/dataset or hf:user/dataset:test")
    try:
        import datasets
    except ImportError:
        raise _error(f"task {spec} needs the 'datasets' package (pip install datasets)") from None
    try:
        stream = datasets.load_dataset(dataset, split=split or "train", streaming=True)
        rows = [(f"{spec} row {i}", dict(row)) for i, row in zip(range(limit), stream)]
    except Exception as exc:  # the hub raises many kinds (offline, unknown dataset, bad split)
        raise _error(f"cannot read Hugging Face dataset {dataset!r} ({first_line(exc, 200)})") from None
    return dataset.split("/")[-1], rows


def read_task_file(model: "Model", path, *, n_prompts: int | None = None, padding_side: str = "left",
                   chat_template: bool = False, fields: dict | None = None) -> "Task":
    """A task from a JSONL/CSV file, a folder of them or ``hf:<dataset>`` (its first ``n_prompts`` rows)."""
    from interp.tasks import Task

    name, rows, settings = source_rows(str(path), fields)
    rows = rows[:n_prompts] if n_prompts else rows
    return Task.from_pairs(model, name, [row for _, row in rows], settings, padding_side=padding_side,
                           chat_template=chat_template, labels=[label for label, _ in rows])


def read_task_source(model: "Model", spec: str, *, n_prompts: int, seed: int = 0, padding_side: str = "left",
                     chat_template: bool = False, fields: dict | None = None) -> "Task":
    """A task from any source the module docstring lists; a template draws ``n_prompts`` prompts."""
    from interp.tasks import GENERATORS, Task
    from interp.templates import PromptTemplate, TemplateError

    path = Path(spec)
    if not spec.startswith("hf:") and path.suffix == ".json":
        if fields:
            raise _error("--fields renames the columns of a file or dataset; a template names its own fields")
        try:
            template = PromptTemplate.from_file(path)
        except TemplateError as exc:
            raise _error(str(exc)) from None
        return Task.from_template(model, template, n_prompts, seed, {"source": str(path)}, padding_side=padding_side,
                                  chat_template=chat_template)
    if not spec.startswith("hf:") and not path.exists() and path.suffix not in _SUFFIXES:
        raise _error(f"unknown task {spec!r}; built-in: {', '.join(GENERATORS)}, or a .jsonl/.csv file, a folder of them, "
                     "a template .json, or hf:<dataset>")
    return read_task_file(model, spec, n_prompts=n_prompts, padding_side=padding_side, chat_template=chat_template,
                          fields=fields)
