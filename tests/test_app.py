"""The Streamlit circuit explorer: every page runs on fixture run folders (AppTest) and the figures
hold the data of those runs."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from interp.results import Result
from interp.ui.figures import active_positions
from tests.app_runs import build_runs

ROOT = Path(__file__).resolve().parent.parent
APP = "app/Home.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return build_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(autouse=True)
def no_deprecation_warnings(caplog):
    """No page may log a Streamlit deprecation warning."""
    yield
    assert not [r.getMessage() for r in caplog.records if "deprecat" in r.name or "deprecat" in r.getMessage().lower()]


@pytest.fixture
def app_env(runs, monkeypatch):
    monkeypatch.setenv("INTERP_RUNS_DIR", str(runs))
    monkeypatch.setenv("INTERP_APP_MODEL", "toy-induction")
    return runs


def _run(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / page), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _array(value) -> np.ndarray:
    """A plotly array from a figure spec: a list, or plotly 6's typed-array encoding."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.array(value, dtype=float)


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_runs_page_lists_good_runs_and_explains_bad_folders(app_env):
    at = _run(APP)
    tables = at.dataframe
    listed = tables[0].value
    assert sorted(listed["run"]) == ["bigram", "dla", "drop", "edges", "edges-tracr", "feature-graph", "features-atp-star",
                                     "heads-atp-star", "heads-exact", "landmarks-heads-pos", "lens", "probe", "redundancy", "sae",
                                     "sae/dictionary-eval", "steer", "tuned-lens"]
    assert set(listed["page"]) == {"Patching", "Pruning", "Bigram", "Circuit", "Features", "Dictionary", "Probes", "Lens", "DLA",
                                  "Steering"}
    assert (listed["seconds"] > 0).all() and listed["seconds"].map(lambda v: v == float(f"{v:.4g}")).all()
    next(t for t in at.text_input if t.label == "filter").set_value("sae").run()
    assert sorted(at.dataframe[0].value["run"]) == ["sae", "sae/dictionary-eval"]
    reasons = dict(zip(tables[1].value["folder"], tables[1].value["reason"]))
    assert "not valid JSON" in reasons["corrupt"] and "no result.json" in reasons["notes"]


def test_patching_page_draws_the_run(app_env):
    at = _run("app/pages/1_Patching.py", selected_run="heads-exact")
    result = Result.load(app_env / "heads-exact")
    heat = _figures(at)[0]["data"][0]
    assert heat["type"] == "heatmap" and _array(heat["z"]).shape == tuple(result.shape)
    assert np.allclose(_array(heat["z"]), result.grid())
    top = at.dataframe[0].value
    assert list(top["component"]) == [c for c, _ in result.top(len(top))]


def test_patching_page_labels_the_positions_of_a_mixed_length_task_from_the_end(app_env):
    """Prompts of 9 to 14 tokens: panels are positions counted from each prompt's end (one layer x
    head grid per position where the pairs differ), and a prompt too short for a position is left
    out of its box (per-prompt NaN)."""
    at = _run("app/pages/1_Patching.py", selected_run="landmarks-heads-pos")
    result = Result.load(app_env / "landmarks-heads-pos")
    heat, spread = _figures(at)[:2]
    grid = result.grid()  # [layer, head, position]
    active = active_positions(grid)  # at most 6: those of the largest |effect|
    assert active == [p for p in range(grid.shape[-1]) if np.abs(grid[..., p]).max() > 0] or len(active) == 6
    panels = [trace for trace in heat["data"] if trace["type"] == "heatmap"]
    assert [a["text"] for a in heat["layout"]["annotations"]] == [f"@ {result.position_labels[p]}" for p in active]
    assert heat["layout"]["annotations"][-1]["text"].startswith("@ -1: ")
    for trace, p in zip(panels, active):
        assert np.allclose(_array(trace["z"]), grid[..., p])
    assert heat["layout"]["coloraxis"]["cmin"] == -1 and heat["layout"]["coloraxis"]["cmax"] == 1
    assert heat["layout"]["height"] <= 900  # fits a screen, with the table below
    assert np.isnan(result.arrays["per_prompt"]).any()
    assert spread["data"][0]["type"] == "box"
    at.radio[0].set_value("every row (tall)").run()
    tall = _figures(at)[0]["data"][0]
    assert list(tall["x"]) == result.position_labels and _array(tall["z"]).shape == (grid.shape[0] * grid.shape[1], grid.shape[2])


def test_patching_page_draws_the_top_latents_of_a_feature_run(app_env):
    """A sweep over a transcoder's 96 latents x positions reads as its top 40 rows, named."""
    at = _run("app/pages/1_Patching.py", selected_run="features-atp-star")
    result = Result.load(app_env / "features-atp-star")
    heat = _figures(at)[0]["data"][0]
    grid = result.grid()[0]  # [latent, position]
    top = np.argsort(-np.abs(grid).max(axis=1), kind="stable")[:40]
    assert list(heat["y"]) == [f"L1.TC.{i}" for i in top]
    assert np.allclose(_array(heat["z"]), grid[top])


def test_patching_page_scatters_atp_star_estimates_against_exact(app_env):
    at = _run("app/pages/1_Patching.py", selected_run="heads-atp-star")
    figures = _figures(at)
    scatter = figures[-1]
    points = sum(len(_array(trace.get("x", []))) for trace in scatter["data"] if trace.get("mode") == "markers")
    assert points == 4  # the 4 verified heads
    assert "exact" in at.dataframe[0].value.columns


def test_pruning_page_shows_importance_and_curves(app_env):
    at = _run("app/pages/3_Pruning.py", selected_run="redundancy")
    result = Result.load(app_env / "redundancy")
    importance, curves = _figures(at)[:2]
    assert [len(_array(trace["y"])) for trace in importance["data"]] == [result.shape[1]] * 3
    assert {trace["name"] for trace in curves["data"]} >= {"attn", "mlp"}
    assert len(at.dataframe[0].value) == 2  # attn and mlp rows at k = 1


def test_bigram_page_shows_kept_fractions_and_ablations(app_env):
    at = _run("app/pages/4_Bigram.py", selected_run="bigram")
    result = Result.load(app_env / "bigram")
    heat = _figures(at)[0]["data"][0]
    assert _array(heat["z"]).shape == (2, 7)
    assert list(at.dataframe[1].value.index) == ["full", "subnetwork", "random", "complement"]
    assert at.dataframe[0].value["kept"][0] == pytest.approx(result.extra["sweep"][0]["kept_fraction"], rel=1e-3)  # 4 digits


def test_pruning_page_draws_a_drop_run_side_by_side_with_its_timings(app_env):
    at = _run("app/pages/3_Pruning.py", selected_run="drop")
    result = Result.load(app_env / "drop")
    bars, speed = _figures(at)[:2]
    perplexity = next(t for t in bars["data"] if t["type"] == "bar" and t["hovertemplate"].startswith("perplexity "))
    assert list(perplexity["x"]) == ["intact", "pruned"]
    assert np.allclose(_array(perplexity["y"]), [result.extra["full"]["perplexity"], result.extra["dropped"]["perplexity"]])
    assert [len(_array(t["y"])) for t in speed["data"]] == [2, 2]  # every timing drawn: its spread, not one number


def test_dictionary_page_shows_metrics_and_a_feature_dashboard(app_env):
    """A training run and its nested evaluation; the dashboard's top activation is the latent's
    largest activation (checked in tests/test_figures.py against brute force)."""
    for run in ("sae", "sae/dictionary-eval"):
        at = _run("app/pages/8_Dictionary.py", selected_run=run)
        result = Result.load(app_env / run)
        assert at.metric[0].value == f"{result.extra['metrics']['l0']:.3g}"
        density = _figures(at)[0]["data"][0]
        assert density["type"] == "histogram" and len(_array(density["x"])) == len(result.components)
        assert "fires on" in at.markdown[-1].value or any("fires on" in m.value for m in at.markdown)
        assert any("promotes" in m.value for m in at.markdown)


def test_lens_page_draws_the_stages_and_lists_top_tokens(app_env):
    at = _run("app/pages/10_Lens.py", selected_run="lens")
    result = Result.load(app_env / "lens")
    probability, rank, curve = _figures(at)[:3]
    assert np.allclose(_array(probability["data"][0]["z"]), result.arrays["first_probability"])
    assert np.allclose(_array(rank["data"][0]["z"]), np.log10(result.arrays["first_rank"] + 1))
    assert probability["layout"]["coloraxis"]["cmin"] == 0 and probability["layout"]["coloraxis"]["cmax"] == 1
    assert np.allclose(_array(curve["data"][0]["y"]), result.scores)
    top = at.dataframe[0].value
    assert list(top["probability"]) == pytest.approx([p for _, p in result.extra["top_tokens"][-1][-1]], rel=1e-3)


def test_lens_page_draws_a_tuned_lens_fit(app_env):
    at = _run("app/pages/10_Lens.py", selected_run="tuned-lens")
    result = Result.load(app_env / "tuned-lens")
    logit, tuned = _figures(at)[0]["data"]
    assert np.allclose(_array(tuned["y"]), np.maximum(result.scores, 1e-6))
    assert np.allclose(_array(logit["y"]), np.maximum(result.arrays["kl_logit_lens"], 1e-6))
    assert list(at.dataframe[0].value["tuned lens KL"]) == pytest.approx(list(result.scores), rel=1e-3, abs=1e-9)


def test_dla_page_draws_heads_and_the_largest_parts(app_env):
    at = _run("app/pages/11_DLA.py", selected_run="dla")
    result = Result.load(app_env / "dla")
    heads, bars = _figures(at)[:2]
    assert np.allclose(_array(heads["data"][0]["z"]), result.grid())
    assert heads["layout"]["coloraxis"]["cmid"] == 0
    assert len(_array(bars["data"][0]["x"])) == min(20, len(result.components) + 2 * result.shape[0] + 3)
    assert f"{result.extra['total']:.4f}" in at.markdown[0].value
    # by source: the mean over prompts, then one prompt's own parts, heads and tokens
    sources = _figures(at)[-1]["data"][0]
    assert np.allclose(_array(sources["z"]), _mean_rows(result, None), equal_nan=True)
    for prompt in (0, 2):  # the options: the mean, then prompts 0, 1, 2
        next(s for s in at.selectbox if s.label == "source positions of").select_index(prompt + 1).run()
        assert not at.exception, [e.message for e in at.exception]
        sources = _figures(at)[-1]["data"][0]
        tokens = result.extra["prompt_tokens"][prompt]
        assert np.allclose(_array(sources["z"]), _mean_rows(result, prompt))
        assert list(sources["x"])[-1] == f"-1 {tokens[-1]!r}" and len(sources["x"]) == len(tokens)


def _mean_rows(result, prompt):
    """The by-source rows of the 12 heads with the largest parts, recomputed from the arrays."""
    by_source = result.arrays["by_source"]
    if prompt is None:
        values, scores = np.nanmean(by_source, axis=0), result.scores
    else:
        values, scores = by_source[prompt], result.arrays["per_prompt"][prompt]
        values = values[..., by_source.shape[-1] - len(result.extra["prompt_tokens"][prompt]):]
    return values.reshape(-1, values.shape[-1])[np.argsort(-np.abs(scores), kind="stable")[:12]]


def test_steering_page_draws_the_sweep_and_generates_both_texts(app_env):
    at = _run("app/pages/12_Steering.py", selected_run="steer")
    result = Result.load(app_env / "steer")
    change, kl, texts = _figures(at)[:3]
    assert _array(change["data"][0]["x"]).tolist() == [-2.0, 0.0, 2.0]
    assert np.allclose(_array(change["data"][0]["y"]), result.scores)
    assert np.allclose(_array(kl["data"][0]["y"]), result.arrays["kl_neutral"])
    assert texts["data"][0]["cells"]["values"][1] == [result.extra["unsteered"][0]] + [row[0] for row in result.extra["steered"]]
    sites = at.dataframe[0].value  # one row per site: how big a coefficient of 1 is there
    assert list(sites["site"]) == ["L0.RESID_PRE", "L1.RESID_PRE"] == result.extra["sites"]
    assert list(sites["vector norm"]) == pytest.approx(result.extra["vector_norms"], rel=1e-3)
    next(t for t in at.text_input if t.label == "prompt").set_value("t5 t9 t3").run()
    at.button[0].click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("plain model" in m.value for m in at.markdown) and any("coefficient 4" in m.value for m in at.markdown)


def test_probes_page_draws_accuracy_with_intervals(app_env):
    at = _run("app/pages/9_Probes.py", selected_run="probe")
    result = Result.load(app_env / "probe")
    accuracy = _figures(at)[0]["data"][0]
    assert np.allclose(_array(accuracy["y"]), result.scores)
    assert np.allclose(_array(accuracy["error_y"]["array"]), result.arrays["ci_high"] - result.scores)
    assert list(at.dataframe[0].value["layer"]) == list(range(len(result.scores)))


def test_circuit_page_draws_curves_and_the_saved_circuit_then_other_sizes(app_env):
    at = _run("app/pages/6_Circuit.py", selected_run="edges")
    result = Result.load(app_env / "edges")
    curves = _figures(at)[0]["data"]
    assert [c["name"] for c in curves] == ["eap-ig", "eap"]
    assert np.allclose(_array(curves[0]["y"]), result.extra["curves"][0]["faithfulness"])
    saved = json.loads((app_env / "edges" / "graph.json").read_text())
    assert len(at.dataframe[-1].value) == saved["n_edges"]
    at.slider[0].set_value(3).run()
    assert not at.exception
    assert len(at.dataframe[-1].value) <= 3
    assert "nearest: 5 edges" in at.caption[-1].value or "nearest: 1 edges" in at.caption[-1].value


def test_features_page_draws_the_attribution_graph_with_heads(app_env):
    at = _run("app/pages/7_Features.py", selected_run="feature-graph")
    assert not at.exception
    graph = json.loads((app_env / "feature-graph" / "graph.json").read_text())
    nodes = at.dataframe[0].value
    assert len(nodes) == len(graph["nodes"]) and "head" in set(nodes["kind"]) and "feature" in set(nodes["kind"])
    markers = {trace["name"] for trace in _figures(at)[0]["data"] if trace.get("mode") == "markers"}
    assert "head" in markers
    at.multiselect[0].set_value(["feature", "embed"]).run()
    assert not at.exception and set(at.dataframe[0].value["kind"]) <= {"feature", "embed", "target"}


def test_circuit_page_scores_a_tracr_run_against_the_compiled_circuit(app_env):
    at = _run("app/pages/6_Circuit.py", selected_run="edges-tracr")
    truth = Result.load(app_env / "edges-tracr").extra["ground_truth"]
    assert "13 true edges, 11 inert" in at.markdown[1].value
    auc = at.dataframe[0].value.set_index("edge ROC AUC")
    assert list(auc.index) == ["eap-ig", "eap", "acdc"]
    assert auc.loc["acdc", "reachable"] == pytest.approx(truth["auc"]["acdc"]["reachable"]) == pytest.approx(1.0)


def test_attention_page_draws_patterns_and_head_scores(app_env):
    at = _run("app/pages/2_Attention.py")
    pattern, scores = _figures(at)[:2]
    z = _array(pattern["data"][0]["z"])
    assert z.shape == (9, 9) and np.allclose(z.sum(-1), 1, atol=1e-5)  # BOS + 8 tokens; rows are distributions
    assert np.allclose(np.triu(z, 1), 0)  # causal
    assert _array(scores["data"][0]["z"]).shape == (2, 4)
    at.radio[0].set_value("induction").run()
    induction = _array(_figures(at)[1]["data"][0]["z"])
    assert induction[1].max() > 0.5 > induction[0].max()  # the toy model's induction heads are in layer 1


def test_live_page_runs_atp_star_then_exact(app_env):
    at = _run("app/pages/5_Live.py")
    at.button[0].click().run()
    assert not at.exception, [e.message for e in at.exception]
    heat = _figures(at)[0]["data"][0]
    assert _array(heat["z"]).shape == (2, 4)
    table = at.dataframe[0].value
    assert table["exact"].notna().sum() == 5


def test_live_page_reports_bad_pairs_in_one_line(app_env):
    at = _run("app/pages/5_Live.py")
    at.text_input[1].set_value("t5 t9")
    at.button[0].click().run()
    assert not at.exception
    assert "tokens" in at.error[0].value and len(at.error[0].value.splitlines()) == 1


def test_no_page_reaches_beyond_this_machine(app_env, monkeypatch):
    """Every page, run in-process with its default run (and the Live page's AtP*): no socket
    connect, datagram or address lookup other than this machine's."""
    import socket

    calls = []
    connect, sendto, getaddrinfo = socket.socket.connect, socket.socket.sendto, socket.getaddrinfo

    def record(kind, address):
        calls.append((kind, address))

    monkeypatch.setattr(socket.socket, "connect", lambda self, address: (record("connect", address), connect(self, address))[1])
    monkeypatch.setattr(socket.socket, "sendto", lambda self, data, *args: (record("sendto", args[-1]), sendto(self, data, *args))[1])
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: (record("lookup", host), getaddrinfo(host, *args, **kwargs))[1])
    for page in [APP, *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "app" / "pages").glob("*.py"))]:
        at = _run(page)
        if page.endswith("5_Live.py"):
            at.button[0].click().run()
    local = {"localhost", "127.0.0.1", "::1"}
    assert [c for c in calls if not (isinstance(c[1], str) and c[0] == "connect") and
            (c[1] if isinstance(c[1], str) else c[1][0]) not in local] == []


@pytest.mark.parametrize("name, edit, reason", [
    ("version-string", lambda d: d.update(format_version="2"), "'format_version' must be an integer"),
    ("no-scores", lambda d: d.pop("scores"), "lacks field(s) 'scores'"),
    ("string-scores", lambda d: d.update(scores=["a", "b"] + ["c"] * (len(d["scores"]) - 2)), "'scores' must be a list of numbers"),
    ("wrong-shape", lambda d: d.update(shape=[7, 7]), "'shape' [7, 7] does not hold its"),
    ("extra-field", lambda d: d.update(surprise=1), "field(s) this interp does not know: 'surprise'"),
    ("components-number", lambda d: d.update(components=5), "field 'components' must be list"),
])
def test_a_bad_run_folder_is_listed_with_its_reason_and_breaks_no_page(app_env, tmp_path, monkeypatch, name, edit, reason):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(app_env / "heads-exact", root / "heads-exact")
    shutil.copytree(app_env / "heads-exact", root / name)
    data = json.loads((root / name / "result.json").read_text())
    edit(data)
    (root / name / "result.json").write_text(json.dumps(data))
    monkeypatch.setenv("INTERP_RUNS_DIR", str(root))
    at = _run(APP)
    assert list(at.dataframe[0].value["run"]) == ["heads-exact"]
    reasons = dict(zip(at.dataframe[1].value["folder"], at.dataframe[1].value["reason"]))
    assert reason in reasons[name]
    _run("app/pages/1_Patching.py", selected_run=name)  # the page shows the readable run instead


@pytest.mark.parametrize("graph_file", ["../../outside.json", "/etc/hostname", "sub/../../outside.json"])
def test_the_features_page_opens_no_file_outside_the_run_folder(app_env, tmp_path, monkeypatch, graph_file):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(app_env / "feature-graph", root / "feature-graph")
    (tmp_path / "outside.json").write_text(json.dumps({"nodes": [], "edges": [], "model": "x", "target": "y"}))
    data = json.loads((root / "feature-graph" / "result.json").read_text())
    data["extra"]["graph_file"] = graph_file
    (root / "feature-graph" / "result.json").write_text(json.dumps(data))
    monkeypatch.setenv("INTERP_RUNS_DIR", str(root))
    at = _run("app/pages/7_Features.py", selected_run="feature-graph")
    assert "lies outside the run folder; it is not opened" in at.error[0].value
    assert not _figures(at)
