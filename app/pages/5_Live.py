"""Live patching: type a clean and a corrupt prompt, get AtP* over heads, then exact patching of the top k."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, default_model, header, load_model, model_lock, table  # noqa: E402
from interp.attribution import attribution_patching, verify_top  # noqa: E402
from interp.ui.figures import result_heatmap  # noqa: E402
from interp.tasks import Task  # noqa: E402

header("Live patching", "AtP* ranks every head from a few forward and backward passes; the top k are then patched exactly.")
spec = st.sidebar.text_input("model", value=default_model())
model = load_model(spec)
toy = model.config.d_vocab <= 1000
defaults = (("t5 t9 t3 t7 t5 t9 t3", "t5 t9 t3 t7 t8 t2 t6", "t7", "t8") if toy else
            ("When Mary and John went to the store, John gave a drink to",
             "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"))
with st.form("pair"):
    clean = st.text_input("clean prompt", value=defaults[0])
    corrupt = st.text_input("corrupt prompt (same number of tokens)", value=defaults[1])
    cols = st.columns(3)
    answer = cols[0].text_input("answer", value=defaults[2])
    wrong = cols[1].text_input("wrong answer", value=defaults[3])
    k = cols[2].number_input("verify top k exactly", 0, 50, 5)
    submitted = st.form_submit_button("Run AtP*")

if submitted:
    try:
        task = Task.from_pairs(model, "live", [{"clean": clean, "corrupt": corrupt, "answer": answer, "wrong_answer": wrong}])
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    with st.spinner("AtP* over every head ..."), model_lock(spec):
        result = attribution_patching(model, task, "heads", method="atp*", progress=False)
        if k:
            verify_top(model, task, result, int(k), progress=False)
    st.session_state["live_result"] = result

result = st.session_state.get("live_result")
if result is not None:
    st.markdown(f"clean logit difference {result.clean_metric:.3f}, corrupt {result.corrupt_metric:.3f} · "
                f"{result.n_forward_passes} forward / {result.n_backward_passes} backward passes · {result.wall_seconds:.2f} s")
    chart(result_heatmap(result))
    order = result.ranking()[:10]
    top = pd.DataFrame({"head": [result.components[i] for i in order], "AtP* estimate": result.scores[order]})
    if "exact" in result.arrays:
        top["exact"] = result.arrays["exact"][order]
    table(top)
