"""Figures and dashboards: the one colour language, readable views, honest timings, one plotly
bundle per run folder, and the feature dashboard against brute force with plain hooks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import interp
from circuits.dictionary import DictionaryConfig, SparseDictionary
from circuits.dictionary_evaluation import top_contexts
from circuits.feature_dashboard import feature_dashboard
from interp.results import Result
from interp.ui import cli, colors
from interp.ui.circuit_figures import circuit_graph_figure
from interp.ui.figures import active_positions, heatmap, result_heatmap


@pytest.fixture(scope="module")
def llama():
    return interp.load_model("random-llama")


def test_signed_values_take_the_same_colour_in_heatmaps_and_graph_edges():
    """Red is positive and blue negative everywhere: the heatmap's scale at +b / -b is the colour an
    edge of score +b / -b is drawn in."""
    figure = heatmap(np.array([[0.5, -0.5]]), ["a", "b"], ["L0"], "t", "x", "y", natural=0.5)
    scale = figure.layout.coloraxis.colorscale
    assert scale[-1][1] == colors.POSITIVE and scale[0][1] == colors.NEGATIVE and scale[2][1] == "#f7f7f7"
    graph = {"n_heads": 2, "n_layers": 2, "n_edges": 2, "nodes": [
        {"id": "EMBED", "kind": "embed", "layer": -1, "score": None}, {"id": "L0.H0", "kind": "head", "layer": 0, "index": 0,
                                                                        "score": 0.1},
        {"id": "LOGITS", "kind": "logits", "layer": 2, "score": None}],
        "edges": [{"source": "EMBED", "into": ["L0.H0"], "port": "q", "score": 0.5, "target": "L0.H0"},
                  {"source": "L0.H0", "into": ["LOGITS"], "port": "logits", "score": -0.2, "target": "LOGITS"}]}
    drawn = circuit_graph_figure(graph)
    edges = [t for t in drawn.data if t.mode == "lines" and t.x[0] is not None]
    assert [e.line.color for e in edges] == [colors.POSITIVE, colors.NEGATIVE]
    assert edges[0].line.dash == "dot"
    legend = [t.name for t in drawn.data if t.x[0] is None]  # legend-only entries explain colour and dashing
    assert any("edge +" in n for n in legend) and any("query" in n for n in legend) and any("key" in n for n in legend)
    kinds = {t.name: t.marker.color for t in drawn.data if t.mode and "markers" in t.mode}
    assert kinds["embed"] != kinds["logits"]
    assert colors.signed_color(0.5, 0.5) == "rgb(178, 24, 43)" and colors.signed_color(-9, 0.5) == "rgb(33, 102, 172)"


def test_non_negative_quantities_use_the_sequential_scale_on_their_bounds():
    figure = heatmap(np.array([[0.2, 0.8]]), ["a", "b"], ["q"], "pattern", "key", "query", "attention", scale="sequential",
                     natural=1.0)
    axis = figure.layout.coloraxis
    assert (axis.cmin, axis.cmax) == (0.0, 1.0) and axis.colorscale[0][1] == "#ffffff"


def test_robust_range_is_symmetric_and_ignores_one_outlier():
    values = np.concatenate([np.linspace(-0.01, 0.01, 999), [5.0]])
    low, high = colors.signed_range(values)
    assert low == -high and high < 0.02


def _position_result() -> Result:
    layers, heads, positions = 30, 9, 14
    grid = np.zeros((layers, heads, positions))
    grid[20:, :, 9:] = np.random.default_rng(0).normal(0, 0.1, (10, heads, 5))
    names = [f"L{l}.H{h}@{p}" for l in range(layers) for h in range(heads) for p in range(positions)]
    return Result(method="exact", model="m", task="t", metric="logit_diff", granularity="heads_pos", components=names,
                  scores=grid.ravel(), shape=[layers, heads, positions], axes=["layer", "head", "position"],
                  analysis="patching", position_labels=[f"{p}: t{p}" for p in range(positions)])


def test_a_heads_by_position_sweep_fits_a_screen():
    """270 rows x 14 positions: by default one layer x head panel per position where the pair
    differs (positions 9 to 13 here), at most 900 px tall; the tall view is still there."""
    result = _position_result()
    figure = result_heatmap(result)
    assert active_positions(result.grid()) == [9, 10, 11, 12, 13]
    assert [a.text for a in figure.layout.annotations] == [f"@ {p}: t{p}" for p in range(9, 14)]
    assert figure.layout.height <= 900 and len(figure.data) == 5
    assert np.allclose(figure.data[0].z, result.grid()[:, :, 9])
    one = result_heatmap(result, view="position", position=12)
    assert len(one.data) == 1 and np.allclose(one.data[0].z, result.grid()[:, :, 12])
    top = result_heatmap(result, view="top", k=10)
    assert len(top.data[0].y) == 10
    with pytest.raises(ValueError, match="view 'x' is not one of"):
        result_heatmap(result, view="x")


def test_run_folders_share_one_plotly_bundle_and_wall_seconds_cover_the_command(tmp_path):
    """The page loads plotly.min.js from its folder (no 4.8 MB inlined); wall_seconds is the whole
    command (its parts in ``timings``), within a second of the time the command took."""
    out = tmp_path / "run"
    began = time.perf_counter()
    assert cli.main(["patch", "--model", "random-llama", "--n-prompts", "2", "--method", "atp-star", "--verify-top", "3",
                     "--diagnose", "--diagnose-samples", "8", "--diagnose-p", "0.5", "--no-progress", "--out", str(out)]) == 0
    took = time.perf_counter() - began
    page = (out / "heatmap.html").read_text()
    assert '<script src="plotly.min.js"></script>' in page and len(page) < 200_000
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    result = Result.load(out)
    assert set(result.timings) == {"loading and setup", "ranking", "verification", "diagnostic"}
    assert result.wall_seconds == pytest.approx(sum(result.timings.values()))
    assert took - 1.0 <= result.wall_seconds <= took


def test_the_command_s_wall_seconds_include_python_s_start_up(tmp_path):
    """Run as a user runs it (a process): the reported time is the time the process took, to a
    second, imports included."""
    import subprocess
    import sys

    out = tmp_path / "run"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from interp.ui.cli import main; sys.argv[1:] = " + repr(
        ["patch", "--model", "random-llama", "--n-prompts", "2", "--no-progress", "--out", str(out)]) + "; sys.exit(main())"],
        check=True, capture_output=True)
    took = time.perf_counter() - began
    result = Result.load(out)
    assert took - 1.0 <= result.wall_seconds <= took and result.timings["loading and setup"] > 1.0  # torch's import


def test_the_feature_dashboard_equals_brute_force(llama):
    """Top contexts: the largest activations of the latent, read here with plain PyTorch hooks on
    the decoder layer's output; logit effect: W_dec[latent] @ W_U^T; de-embedding: W_E @ W_enc."""
    torch.manual_seed(0)
    dictionary = SparseDictionary(DictionaryConfig(d_in=64, d_sae=32, k=4, kind="sae", site="L1.RESID_POST"))
    chunks = torch.randint(5, llama.config.d_vocab, (3, 10))
    latent = 7
    board = feature_dashboard(llama, dictionary, chunks, latent, k=4, window=3, n_tokens=5)
    captured = []
    layer = llama.hf_model.model.layers[1]
    handle = layer.register_forward_hook(lambda module, args, output: captured.append(
        (output[0] if isinstance(output, tuple) else output).detach()))
    with torch.no_grad():
        for row in chunks:
            llama.hf_model(row[None])
    handle.remove()
    with torch.no_grad():
        acts = torch.stack([dictionary.encode(h[0])[:, latent] for h in captured])  # [chunk, pos]
    expected = sorted(((float(v), r, p) for (r, p), v in np.ndenumerate(acts.numpy()) if v > 0), reverse=True)[:4]
    assert [(c["chunk"], c["position"]) for c in board.contexts] == [(r, p) for _, r, p in expected]
    assert [c["activation"] for c in board.contexts] == pytest.approx([v for v, _, _ in expected], rel=1e-5)
    assert board.contexts[0]["activations"][-1] == pytest.approx(expected[0][0], rel=1e-5)
    listed = top_contexts(llama, dictionary, chunks, [3, latent], k=4, window=3)[latent]  # the same scan, two latents
    assert [(c["chunk"], c["position"]) for c in listed] == [(r, p) for _, r, p in expected]
    assert board.frequency == pytest.approx(float((acts > 0).float().mean()))
    logits = llama.hf_model.get_output_embeddings().weight.detach() @ dictionary.W_dec[latent].detach()
    assert board.promoted[0][1] == pytest.approx(logits.max().item(), rel=1e-5)
    assert board.suppressed[0][1] == pytest.approx(logits.min().item(), rel=1e-5)
    drive = llama.hf_model.get_input_embeddings().weight.detach() @ dictionary.W_enc[:, latent].detach()
    assert board.de_embedding[0][1] == pytest.approx(drive.max().item(), rel=1e-5)
    with pytest.raises(ValueError, match="latent 99 is out of range"):
        feature_dashboard(llama, dictionary, chunks, 99)
