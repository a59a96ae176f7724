"""``Result``: what was run and the per-component arrays, saved as a run folder.

A run folder holds ``result.json`` (metadata, component names, mean scores) and ``arrays.npz``
(every array, including per-prompt values). Both are written to temporary names and moved into
place, so an interrupted run never leaves a half-written ``result.json``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

FORMAT = "interp-result"
FORMAT_VERSION = 1


class ResultError(ValueError):
    """A run folder that cannot be read."""


def versions() -> dict:
    import torch
    import transformers

    import interp

    found = {"interp": interp.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
             "python": platform.python_version()}
    for name in ("transformer_lens", "nnsight"):
        try:
            from importlib.metadata import version

            found[name] = version(name.replace("_", "-"))
        except Exception:
            pass
    return found


_NUMBER = (int, float)
# the type each field of result.json must have (a folder someone sends you is read, never trusted)
_JSON_TYPES: dict[str, tuple] = {
    "method": (str,), "model": (str,), "task": (str,), "metric": (str,), "granularity": (str,), "analysis": (str,),
    "components": (list,), "scores": (list,), "shape": (list,), "axes": (list,), "tokens": (list,),
    "position_labels": (list,), "settings": (dict,), "extra": (dict,), "versions": (dict,),
    "clean_metric": _NUMBER + (type(None),), "corrupt_metric": _NUMBER + (type(None),), "wall_seconds": _NUMBER,
    "n_forward_passes": (int,), "n_backward_passes": (int,), "timings": (dict,),
}


@dataclass
class Result:
    """Scores per component plus everything needed to reproduce and plot them.

    ``scores`` has one value per entry of ``components`` (same order); ``shape`` and ``axes``
    say how to fold it into a grid (e.g. [n_layers, n_heads] with axes ["layer", "head"]).
    ``arrays`` holds further arrays, e.g. ``per_prompt`` [n_prompts, n_components].
    """

    method: str
    model: str
    task: str
    metric: str
    granularity: str
    components: list[str]
    scores: np.ndarray
    shape: list[int]
    axes: list[str]
    clean_metric: float | None = None  # None for analyses with no clean/corrupt pair (redundancy)
    corrupt_metric: float | None = None
    wall_seconds: float = 0.0
    n_forward_passes: int = 0
    n_backward_passes: int = 0
    settings: dict = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)  # the first prompt's tokens
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    versions: dict = field(default_factory=versions)
    analysis: str = ""  # the registered analysis that wrote it (``interp.analysis``); "" in older run folders
    # documents saved beside result.json under their file names (an edge run's graph.json, a
    # bigram run's masks): JSON-able values, or writers ``write(path)`` for files of other kinds;
    # not read back by :meth:`load`, whose readers open them by name
    documents: dict[str, object] = field(default_factory=dict, repr=False)
    # one label per position of a position-resolved grid ("3: ' Mary'", "-1: ' to'", "IO"); empty
    # when the grid has no position axis (older run folders: labels come from ``tokens``)
    position_labels: list[str] = field(default_factory=list)
    # the parts of ``wall_seconds`` in seconds (patching: ranking, verification, diagnostic; a CLI
    # run adds "loading and setup"), so the total is the whole command
    timings: dict[str, float] = field(default_factory=dict)

    def grid(self, name: str = "scores") -> np.ndarray:
        """``scores`` (or a named array) folded to ``shape``."""
        values = self.scores if name == "scores" else self.arrays[name]
        return np.asarray(values).reshape(self.shape) if values.ndim == 1 else values.reshape(values.shape[0], *self.shape)

    def ranking(self) -> np.ndarray:
        """Component indices, most important first: by the ``importance`` array where a method
        ranks by something other than |score| (AtP*'s GradDrop), else by |score|."""
        key = self.arrays["importance"] if "importance" in self.arrays else np.abs(self.scores)
        return np.argsort(-np.asarray(key), kind="stable")

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k most important components and their scores."""
        return [(self.components[i], float(self.scores[i])) for i in self.ranking()[:k]]

    def to_json_dict(self) -> dict:
        data = asdict(self)
        data.pop("arrays")
        data.pop("documents")
        data["scores"] = [float(x) for x in self.scores]
        data["format"] = FORMAT
        data["format_version"] = FORMAT_VERSION
        data["arrays"] = sorted(self.arrays)
        return data

    def save(self, folder: str | Path) -> Path:
        """Write ``result.json`` and ``arrays.npz`` into ``folder``; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays_tmp = folder / ".arrays.npz.tmp"
        with open(arrays_tmp, "wb") as handle:
            np.savez_compressed(handle, scores=self.scores, **self.arrays)
        json_tmp = folder / ".result.json.tmp"
        json_tmp.write_text(json.dumps(self.to_json_dict(), indent=2))
        for name, document in self.documents.items():  # a JSON-able value, or a writer of the file
            tmp = folder / f".{name}.tmp{Path(name).suffix}"
            if callable(document):
                document(tmp)
            else:
                tmp.write_text(json.dumps(document, indent=1))
            if tmp.is_dir() and (folder / name).is_dir():  # a folder document replaces the older folder
                shutil.rmtree(folder / name)
            os.replace(tmp, folder / name)
        os.replace(arrays_tmp, folder / "arrays.npz")
        os.replace(json_tmp, folder / "result.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Result":
        """Read a run folder; a missing, corrupt or foreign folder raises :class:`ResultError`."""
        folder = Path(folder)
        path = folder / "result.json"
        if not path.is_file():
            raise ResultError(f"{folder} is not an interp run folder (no result.json)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ResultError(f"{path} was not written by interp (no 'format': '{FORMAT}')")
        version = data.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ResultError(f"{path}: 'format_version' must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ResultError(f"{path} has format version {version}; this interp reads up to {FORMAT_VERSION}")
        names = data.pop("arrays", [])
        arrays: dict[str, np.ndarray] = {}
        if names:
            try:
                with np.load(folder / "arrays.npz") as npz:
                    arrays = {name: npz[name] for name in names}
            except Exception as exc:
                raise ResultError(f"{folder / 'arrays.npz'} is missing or unreadable ({type(exc).__name__})") from None
        data.pop("format")
        data.pop("format_version", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ResultError(f"{path} has field(s) this interp does not know: {', '.join(map(repr, unknown))} "
                              "(written by another version of interp?)")
        missing = [name for name in ("method", "model", "task", "metric", "granularity", "components", "scores", "shape",
                                     "axes") if name not in data]
        if missing:
            raise ResultError(f"{path} lacks field(s) {', '.join(map(repr, missing))}")
        for name, value in data.items():
            wanted = _JSON_TYPES.get(name)
            if wanted is not None and not (isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)):
                kinds = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
                raise ResultError(f"{path}: field {name!r} must be {kinds}, got {type(value).__name__}")
        if not all(isinstance(name, str) for name in data["components"]):
            raise ResultError(f"{path}: 'components' must be a list of names")
        if not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in data.get("timings", {}).values()):
            raise ResultError(f"{path}: 'timings' must map names to seconds")
        try:
            data["scores"] = np.asarray(data["scores"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ResultError(f"{path}: 'scores' must be a list of numbers") from None
        try:
            result = cls(arrays=arrays, **data)
        except TypeError as exc:
            raise ResultError(f"{path} lacks fields interp needs ({exc})") from None
        if len(result.scores) != len(result.components):
            raise ResultError(f"{path} has {len(result.scores)} scores for {len(result.components)} components")
        shape = result.shape
        if (not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
                or int(np.prod(shape)) != len(result.scores)):
            raise ResultError(f"{path}: 'shape' {shape!r} does not hold its {len(result.scores)} scores")
        return result
