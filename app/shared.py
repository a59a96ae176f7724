"""What every page of the circuit explorer shares: the runs folder, the run list, the cached model.

No analysis happens here: run folders are read with ``interp.results.Result`` and live numbers
come from the same ``interp`` functions a notebook calls.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

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


def list_runs(root: Path) -> list[RunEntry]:
    """Every folder directly under ``root`` (newest first), read or with the reason it cannot be."""
    if not root.is_dir():
        return []
    entries = []
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders:
        marker = folder / "result.json"
        try:
            entries.append(RunEntry(folder, _load(str(folder), marker.stat().st_mtime if marker.exists() else 0.0)))
        except ResultError as exc:
            entries.append(RunEntry(folder, problem=str(exc)))
    return entries


def pick_run(page: str) -> Result | None:
    """A selectbox over the runs this page can show (the one chosen on the Runs page first)."""
    root = runs_dir()
    entries = [e for e in list_runs(root) if e.page == page]
    if not entries:
        st.info(f"No {page.lower()} runs in `{root}`. Run an analysis (see the Runs page) or choose another folder "
                "in the sidebar.")
        return None
    names = [e.path.name for e in entries]
    wanted = st.session_state.get("selected_run")
    index = names.index(wanted) if wanted in names else 0
    name = st.selectbox("run", names, index=index)
    st.session_state["selected_run"] = name
    return entries[names.index(name)].result


def selected_folder() -> Path:
    """The folder of the run :func:`pick_run` returned."""
    return Path(st.session_state["runs_dir"]).expanduser() / st.session_state["selected_run"]


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


def header(title: str, caption: str) -> None:
    st.set_page_config(page_title=f"interp · {title}", layout="wide")
    st.title(title)
    st.caption(caption)
