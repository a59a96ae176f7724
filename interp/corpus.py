"""Text corpora for calibration, evaluation and training: files, folders, JSONL, Hugging Face
datasets when reachable, and an offline default.

The offline default, ``python-docs``, is the English documentation that ships inside Python's
standard library: the language-reference topics of ``pydoc_data.topics`` plus the docstrings of
the pure-Python standard-library modules, read from source with ``ast`` (nothing is imported).
It needs no download and is identical on every machine with the same Python version.

    corpus = load_corpus()                               # python-docs
    calibration, held_out = corpus.split(held_out=0.2, seed=0)
    tokens = calibration.token_chunks(model.tokenizer, length=256, n_chunks=8)   # [8, 256]
"""

from __future__ import annotations

import ast
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.jsonl import read_jsonl

DEFAULT = "python-docs"
_TEXT_SUFFIXES = (".txt", ".md", ".rst")


class CorpusError(ValueError):
    """A corpus that cannot be read or is too small for what was asked of it."""


@dataclass(frozen=True)
class Corpus:
    """An ordered collection of documents (plain text)."""

    name: str
    documents: tuple[str, ...]

    def __post_init__(self) -> None:
        if not any(doc.strip() for doc in self.documents):
            raise CorpusError(f"corpus {self.name!r} has no text")

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def n_characters(self) -> int:
        return sum(len(doc) for doc in self.documents)

    # ----------------------------------------------------------------------- sources
    @classmethod
    def python_docs(cls) -> "Corpus":
        """The offline default: ``pydoc_data.topics`` plus standard-library docstrings."""
        from pydoc_data.topics import topics

        documents = [topics[key] for key in sorted(topics)]
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        for path in sorted(stdlib.glob("*.py")):
            if path.name.startswith("_") or path.name == "this.py":
                continue
            documents.append(_docstrings(path))
        return cls(DEFAULT, tuple(doc for doc in documents if doc.strip()))

    @classmethod
    def from_path(cls, path: str | Path, field: str = "text") -> "Corpus":
        """A text file (.txt/.md/.rst: one document), a JSONL file (one document per line, in
        ``field``) or a folder (every such file below it, in sorted order)."""
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (*_TEXT_SUFFIXES, ".jsonl"))
            if not files:
                raise CorpusError(f"folder {path} holds no .txt, .md, .rst or .jsonl files")
            documents = [doc for file in files for doc in _read_documents(file, field)]
        elif path.is_file():
            documents = _read_documents(path, field)
        else:
            raise CorpusError(f"corpus not found: {path}")
        return cls(str(path), tuple(documents))

    @classmethod
    def from_hf(cls, dataset: str, split: str = "train", field: str = "text", limit: int | None = 10_000) -> "Corpus":
        """The first ``limit`` rows of a Hugging Face dataset (needs the ``datasets`` package and the hub)."""
        try:
            import datasets
        except ImportError:
            raise CorpusError(f"corpus hf:{dataset} needs the 'datasets' package (pip install datasets)") from None
        try:
            rows = datasets.load_dataset(dataset, split=split, streaming=True)
            documents = [row[field] for _, row in zip(range(limit or 10**12), rows)]
        except Exception as exc:
            raise CorpusError(f"cannot read Hugging Face dataset {dataset!r} ({type(exc).__name__}: {exc})") from None
        return cls(f"hf:{dataset}:{split}", tuple(documents))

    # ----------------------------------------------------------------------- use
    def split(self, held_out: float = 0.2, seed: int = 0) -> tuple["Corpus", "Corpus"]:
        """(rest, held-out) by whole documents, after a seeded shuffle; neither part is empty."""
        if not 0 < held_out < 1:
            raise CorpusError(f"held-out fraction must be between 0 and 1, got {held_out}")
        if len(self.documents) < 2:
            raise CorpusError(f"corpus {self.name!r} has {len(self.documents)} document; splitting needs at least 2")
        order = list(range(len(self.documents)))
        random.Random(seed).shuffle(order)
        n_held = min(max(1, round(held_out * len(order))), len(order) - 1)
        pick = lambda indices: tuple(self.documents[i] for i in sorted(indices))  # noqa: E731
        return (Corpus(f"{self.name}[rest]", pick(order[n_held:])),
                Corpus(f"{self.name}[held-out]", pick(order[:n_held])))

    def token_chunks(self, tokenizer, length: int, n_chunks: int | None = None, seed: int = 0) -> torch.Tensor:
        """Token ids [n_chunks, length]: the documents joined by the end-of-text token, cut into
        non-overlapping windows, each starting with the special tokens the tokenizer puts in front
        of a text (e.g. BOS; none for SmolLM2); windows in seeded random order.
        ``n_chunks=None`` returns every window."""
        prefix = tokenizer("", add_special_tokens=True)["input_ids"]
        body = length - len(prefix)
        if body < 1:
            raise CorpusError(f"chunk length {length} leaves no room after the {len(prefix)} prefix token(s)")
        separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stream: list[int] = []
        for ids in tokenizer(list(self.documents), add_special_tokens=False)["input_ids"]:
            stream.extend(ids + separator)
        available = len(stream) // body
        wanted = available if n_chunks is None else n_chunks
        if wanted < 1 or wanted > available:
            raise CorpusError(
                f"corpus {self.name!r} has {len(stream)} tokens: enough for {available} chunks of {length}, "
                f"not {wanted}"
            )
        order = list(range(available))
        random.Random(seed).shuffle(order)
        rows = [prefix + stream[i * body:(i + 1) * body] for i in order[:wanted]]
        return torch.tensor(rows, dtype=torch.long)


def _docstrings(path: Path) -> str:
    """Module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return ""
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    texts = [ast.get_docstring(node) for node in nodes]
    return "\n\n".join(t for t in texts if t)


def _read_documents(path: Path, field: str) -> list[str]:
    if path.suffix == ".jsonl":
        rows = read_jsonl(path, CorpusError, (field,))
        bad = next((n for n, row in enumerate(rows, 1) if not isinstance(row[field], str)), None)
        if bad is not None:
            raise CorpusError(f"{path}: object {bad} has a non-text field {field!r}")
        return [row[field] for row in rows]
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise CorpusError(f"{path} is not UTF-8 text") from None


def load_corpus(spec: str | Path | None = None) -> Corpus:
    """``None`` or ``"python-docs"``: the offline default; ``"toy-markov"``: the toy bigram chain's
    documents (for ``toy-bigram``); ``"hf:<dataset>[:<split>]"``: a Hugging Face dataset; anything
    else: a file or folder (see :meth:`Corpus.from_path`)."""
    if spec is None or str(spec) == DEFAULT:
        return Corpus.python_docs()
    if str(spec) == "toy-markov":
        from interp.toy_models import markov_corpus

        return markov_corpus()
    text = str(spec)
    if text.startswith("hf:"):
        dataset, _, split = text[3:].partition(":")
        return Corpus.from_hf(dataset, split=split or "train")
    return Corpus.from_path(text)


def row_batches(rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``rows`` [n, ...] (token chunks, prompts) cut into consecutive batches of at most
    ``batch_size`` rows: the one batching helper of the corpus-based analyses."""
    return [rows[i:i + batch_size] for i in range(0, rows.shape[0], batch_size)]
