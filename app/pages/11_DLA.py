"""DLA: what each head, MLP and bias writes directly into the answer's logit difference."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, open_run, table, timing_line  # noqa: E402
from interp.ui.figures import dla_figures  # noqa: E402

result = open_run("DLA", "Direct logit attribution: each part of the final residual stream projected on the answer "
                         "direction through the final norm, its scale frozen at the clean run.")
st.markdown(f"**{result.task}** on `{result.model}` · {result.settings['n_prompts']} prompts · parts sum to "
            f"{result.extra['total']:.4f}; the model's {result.metric} {result.extra['logit_diff']:.4f} · {timing_line(result)}")
prompt = None
if "by_source" in result.arrays:
    labels = ["the mean over prompts"] + [f"prompt {i}: {''.join(tokens)}"
                                          for i, tokens in enumerate(result.extra.get("prompt_tokens") or [])]
    chosen = labels.index(st.selectbox("source positions of", labels))  # "prompt i: ..." is unique
    prompt = chosen - 1 if chosen else None
for figure in dla_figures(result, prompt):
    chart(figure)
order = result.ranking()[:25]
table(pd.DataFrame({"head": [result.components[i] for i in order], "contribution": result.scores[order]}), key="heads")
st.caption("Frozen scale: the final norm's scale is held at its clean value, so the parts add up exactly; removing a "
           "part for real would also change that scale, so its true effect can differ.")
