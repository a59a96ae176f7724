"""What every page of the circuit explorer shares: the runs folder, the run list, the cached model.

No analysis happens here: run folders are read with ``interp.results.Result`` and live numbers
come from the same ``interp`` functions a notebook calls.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from interp.results import Result, ResultError
from interp.ui.analyses import analysis_of

# page title -> its file, from the pages folder ("3_Pruning.py" is the page "Pruning"); which page
# opens a run is the registered analysis' choice (``interp.analysis.Analysis.page``)
PAGE_FILES = {path.stem.split("_", 1)[1]: f"pages/{path.name}"
              for path in sorted((Path(__file__).resolve().parent / "pages").glob("[0-9]*_*.py"))}
def default_model() -> str:
    """The live pages' model: ``$INTERP_APP_MODEL`` (set by ``interp app --model``) as it is when
    the page runs, else smollm2-135m."""
    return os.environ.get("INTERP_APP_MODEL", "smollm2-135m")


@dataclass
class RunEntry:
    """One folder under the runs folder: its result, or why it could not be read."""

    path: Path
    result: Result | None = None
    problem: str | None = None
    name: str = ""  # the folder relative to the runs folder ("sae-l6/dictionary-eval")

    @property
    def page(self) -> str | None:
        if self.result is None:
            return None
        analysis = analysis_of(self.result)
        return analysis.page if analysis else None


def runs_dir() -> Path:
    """The runs folder: chosen in the sidebar, else ``$INTERP_RUNS_DIR``, else ``runs``."""
    default = st.session_state.get("runs_dir") or os.environ.get("INTERP_RUNS_DIR", "runs")
    chosen = st.sidebar.text_input("runs folder", value=str(default), key="runs_dir_input")
    st.session_state["runs_dir"] = chosen
    return Path(chosen).expanduser()


@st.cache_data(show_spinner=False)
def _load(path: str, stamp: float) -> Result:
    return Result.load(path)


def list_runs(root: Path, depth: int = 3) -> list[RunEntry]:
    """Every run folder under ``root`` (newest first), nested ones too (``sae-l6/dictionary-eval``,
    up to ``depth`` levels), read or with the reason it cannot be; a top-level folder that holds
    no run at all is listed with that reason."""
    if not root.is_dir():
        return []
    entries = []

    def visit(folder: Path, level: int) -> bool:
        marker = folder / "result.json"
        found = False
        if marker.exists():
            try:
                entries.append(RunEntry(folder, _load(str(folder), marker.stat().st_mtime)))
            except ResultError as exc:
                entries.append(RunEntry(folder, problem=str(exc)))
            found = True
        if level < depth:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                found = visit(child, level + 1) or found
        return found

    for folder in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not visit(folder, 1):
            entries.append(RunEntry(folder, problem=f"{folder.name} holds no result.json (not an interp run folder)"))
    for entry in entries:
        entry.name = entry.path.relative_to(root).as_posix()
    return sorted(entries, key=lambda e: e.path.stat().st_mtime, reverse=True)


def pick_run(page: str) -> Result | None:
    """A selectbox over the runs this page can show (the one chosen on the Runs page first)."""
    root = runs_dir()
    entries = [e for e in list_runs(root) if e.page == page]
    if not entries:
        st.info(f"No {page.lower()} runs in `{root}`. Run an analysis (see the Runs page) or choose another folder "
                "in the sidebar.")
        return None
    names = [e.name for e in entries]
    wanted = st.session_state.get("selected_run")
    index = names.index(wanted) if wanted in names else 0
    name = st.selectbox("run", names, index=index)
    st.session_state["selected_run"] = name
    return entries[names.index(name)].result


def runs_root() -> Path:
    """The runs folder :func:`pick_run` listed."""
    return Path(st.session_state["runs_dir"]).expanduser()


def selected_folder() -> Path:
    """The folder of the run :func:`pick_run` returned."""
    return runs_root() / st.session_state["selected_run"]


def run_file(folder: Path, name: object) -> Path:
    """The file ``name`` a run folder refers to, resolved inside ``folder``; a name that leaves the
    folder (``../x``, an absolute path, a link out) raises ``ValueError``: a run folder someone sent
    you must not make the app read files elsewhere."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{folder} names its file {name!r}, which is not a file name")
    inside = folder.resolve()
    path = (inside / name).resolve()
    if not path.is_relative_to(inside):
        raise ValueError(f"{folder} names the file {name!r}, which lies outside the run folder; it is not opened")
    return path


@st.cache_resource(show_spinner="loading the model ...")
def load_model(spec: str, backend: str = "transformer_lens"):
    """One model per (spec, backend), kept across reruns, pages and browser sessions; run it only
    inside :func:`model_lock`, since analyses hook and splice it while they run."""
    import interp

    return interp.load_model(spec, backend=backend)


@st.cache_resource(show_spinner=False)
def model_lock(spec: str, backend: str = "transformer_lens") -> threading.Lock:
    """The lock that serializes every browser session's runs of the shared :func:`load_model`."""
    return threading.Lock()


def _stretch(function) -> dict:
    """The keyword that makes ``function`` fill the page's width on this Streamlit: ``width="stretch"``
    where it exists (``use_container_width`` is deprecated there), else ``use_container_width``."""
    import inspect

    width = inspect.signature(function).parameters.get("width")
    return {"width": "stretch"} if width is not None and isinstance(width.default, str) else {"use_container_width": True}


def chart(figure) -> None:
    """A plotly figure at the page's width."""
    st.plotly_chart(figure, **_stretch(st.plotly_chart))


def tidy(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A table for reading: floats rounded to ``digits`` significant digits, float noise below 1e-9
    read as 0 (never -0.000000000000003),
    missing values left empty (never "None"), lists joined."""
    frame = frame.copy()
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object:
            if values.map(lambda v: isinstance(v, float) or v is None).all():  # numbers with gaps
                frame[column] = pd.to_numeric(values, errors="coerce")
            else:
                frame[column] = values.map(lambda v: "" if v is None else ", ".join(map(str, v)) if isinstance(v, (list, tuple))
                                           else v)
                continue
        if pd.api.types.is_float_dtype(frame[column]):
            frame[column] = frame[column].map(lambda v: 0.0 if pd.notna(v) and abs(v) < 1e-9
                                              else float(f"{v:.{digits}g}") if pd.notna(v) else v)
    return frame


def table(frame: pd.DataFrame, page_size: int = 0, key: str = "", height: int | None = None, **kwargs) -> None:
    """A sortable table at the page's width, tidied (:func:`tidy`); with ``page_size``, long tables
    show one page at a time with a page picker (``key`` names it)."""
    frame = tidy(frame)
    if page_size and len(frame) > page_size:
        pages = (len(frame) + page_size - 1) // page_size
        page = st.number_input(f"page (of {pages}, {page_size} rows each)", 1, pages, 1, key=f"{key}-page")
        frame = frame.iloc[(page - 1) * page_size: page * page_size]
    options = {"hide_index": True, **kwargs}
    if height is not None:
        options["height"] = height
    numbers = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]  # shown to 4 digits, a gap for missing
    shown = frame.style.format(lambda v: "" if pd.isna(v) else f"{v:.4g}", subset=numbers) if numbers else frame
    st.dataframe(shown, **options, **_stretch(st.dataframe))


def timing_line(result: Result) -> str:
    """``wall_seconds`` with its parts: "277.1 s (loading and setup 9.3 s, ranking 25.6 s, ...)"."""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.timings.items())
    return f"{result.wall_seconds:.1f} s" + (f" ({parts})" if parts else "")


def open_run(title: str, caption: str) -> Result:
    """A page that shows one run: its header, then the run picked among the runs it can show
    (the page stops here with a hint when there is none)."""
    header(title, caption)
    result = pick_run(title)
    if result is None:
        st.stop()
    return result


def header(title: str, caption: str) -> None:
    st.set_page_config(page_title=f"interp · {title}", layout="wide")
    st.title(title)
    st.caption(caption)
