"""interp circuit explorer: the Runs page. Start with ``streamlit run app/Home.py`` or ``interp app``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import PAGE_FILES, header, list_runs, runs_dir, table, timing_line  # noqa: E402

header("Runs", "Every run folder the interp CLI, a notebook or a script wrote. Pick one to open it in its page.")
root = runs_dir()
entries = list_runs(root)
if not entries:
    st.info(f"No run folders in `{root}` yet. Try the README's main job:\n\n"
            "`interp patch --model smollm2-135m --task ioi --granularity heads --out runs/ioi-heads`")
    st.stop()

good = [e for e in entries if e.result is not None]
bad = [e for e in entries if e.result is None]
rows = []
for e in good:
    r = e.result
    rows.append({"run": e.name, "analysis": r.analysis or r.method, "method": r.method, "model": r.model, "task": r.task,
                 "granularity": r.granularity, "metric": r.metric, "components": len(r.components),
                 "seconds": r.wall_seconds, "forward passes": r.n_forward_passes, "page": e.page or "(none)"})
frame = pd.DataFrame(rows)
st.subheader(f"{len(good)} runs in `{root}`")
if len(frame):
    cols = st.columns([2, 3])
    chosen = cols[0].multiselect("analysis", sorted(frame["analysis"].unique()), placeholder="all analyses")
    text = cols[1].text_input("filter", placeholder="any part of a run, model, task or method")
    if chosen:
        frame = frame[frame["analysis"].isin(chosen)]
    if text:
        frame = frame[frame.astype(str).apply(lambda row: row.str.contains(text, case=False, regex=False)).any(axis=1)]
table(frame, height=min(38 + 35 * max(1, len(frame)), 700), key="runs")
st.caption("Click a column header to sort.")

openable = [e for e in good if e.page in PAGE_FILES]
if openable:
    name = st.selectbox("open a run", [e.name for e in openable])
    entry = next(e for e in openable if e.name == name)
    r = entry.result
    st.session_state["selected_run"] = name
    cols = st.columns(4)
    cols[0].metric("method", r.method)
    cols[1].metric("model", r.model)
    cols[2].metric("components", len(r.components))
    cols[3].metric("seconds", f"{r.wall_seconds:.1f}")
    if r.timings:
        st.caption(timing_line(r))
    with st.expander("settings and versions"):
        st.json({"settings": r.settings, "versions": r.versions})
    st.page_link(PAGE_FILES[entry.page], label=f"Open in {entry.page}", icon="➡️")

if bad:
    st.subheader(f"{len(bad)} folders that are not readable runs")
    table(pd.DataFrame([{"folder": e.name, "reason": e.problem} for e in bad]))
