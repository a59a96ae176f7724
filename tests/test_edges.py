"""Edge attribution (EAP, EAP-IG), edge patching, faithfulness, circuit selection and `interp edges`."""

import json

import numpy as np
import pytest
import torch

import interp
from circuits.circuit_selection import CircuitError, load_graph, prune_dangling, top_edges
from circuits.edge_attribution import edge_attribution
from circuits.edge_circuits import compare_with_exact, default_sizes, discover_edges
from circuits.edge_graph import EdgeError, EdgeGraph
from circuits.edge_patching import faithfulness_curve, run_with_patched_edges
from circuits.edge_runs import upstream_outputs, upstream_sites
from interp import tasks
from interp.attribution.atp import attribution_patching
from interp.backends.base import RunSpec
from interp.ui.cli import main
from interp.components import Site
from interp.corruption import RunInput
from interp.patching import activation_patching
from interp.results import Result
from interp.sublayers import Sublayers
from interp.toy_models import previous_token_scores

ARCHITECTURES = ["random-llama", "random-gpt2", "random-neox", "random-gemma"]


def _logit_diff(task):
    return lambda logits: (logits.gather(-1, task.answers[:, None]) - logits.gather(-1, task.wrong_answers[:, None]))[:, 0]


def _source_upstream(model, tokens):
    graph = EdgeGraph(model.config)
    with torch.no_grad():
        out = model.forward(RunSpec(tokens, reads=upstream_sites(graph), logits_to_keep=1))
    return upstream_outputs(Sublayers(model), graph, out.activations), out.logits[:, -1]


def test_graph_shape_and_edges(random_llama):
    graph = EdgeGraph(random_llama.config)  # 3 layers, 4 heads, 2 KV groups
    assert len(graph.upstream) == 1 + 3 * 5 and len(graph.downstream) == 3 * (4 + 2 + 2 + 1) + 1
    u, d = graph.edge_index("L0.H1->L1.K0")
    assert graph.upstream[u].name == "L0.H1" and graph.downstream[d].name == "L1.K0"
    assert graph.valid[graph.upstream_index["L1.H2"], graph.downstream_index["L1.MLP"]]  # sequential block
    with pytest.raises(EdgeError, match="does not write before"):
        graph.edge_index("L1.H0->L1.Q0")
    with pytest.raises(EdgeError, match="'L9.H0->LOGITS' is not in the graph"):
        graph.edge_index("L9.H0->LOGITS")
    neox = EdgeGraph(interp.load_model("random-neox", backend="transformer_lens").config)  # parallel attention and MLP
    assert not neox.valid[neox.upstream_index["L1.H0"], neox.downstream_index["L1.MLP"]]
    assert graph.edge_names()[0] == "EMBED->L0.Q0" and len(graph.edge_names()) == graph.n_edges


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_patching_no_edge_is_the_target_run_and_every_edge_the_source_run(name, backend):
    model = interp.load_model(name, backend=backend)
    task = tasks.ioi(model, n_prompts=3, seed=1)
    graph = EdgeGraph(model.config)
    source, corrupt_logits = _source_upstream(model, task.corrupt_tokens)
    clean_logits = model.run(task.clean_tokens, logits_to_keep=1)[:, -1]
    none = run_with_patched_edges(model, RunInput(task.clean_tokens), np.zeros_like(graph.valid), source)
    every = run_with_patched_edges(model, RunInput(task.clean_tokens), graph.valid.copy(), source)
    assert torch.equal(none, clean_logits)
    torch.testing.assert_close(every, corrupt_logits, atol=2e-5, rtol=1e-4)


def test_node_sums_of_eap_equal_atp(random_llama, llama_ioi):
    scores = edge_attribution(random_llama, llama_ioi, "eap", progress=False)
    graph = scores.graph
    for granularity, kind in (("heads", "head"), ("mlp_out", "mlp")):
        atp = attribution_patching(random_llama, llama_ioi, granularity, method="atp", progress=False)
        rows = [i for i, node in enumerate(graph.upstream) if node.kind == kind]
        np.testing.assert_allclose(scores.node_scores()[rows], atp.scores, atol=1e-5)
    assert scores.n_forward_passes == 2 and scores.n_backward_passes == 1
    assert np.all(scores.scores[~graph.valid] == 0)


def test_eap_matches_finite_differences_of_edge_patching_exactly_on_gpt2():
    model = interp.load_model("random-gpt2", backend="transformer_lens")
    model.hf_model.double()  # LayerNorm models run fully in float64, so differences are clean
    task = tasks.ioi(model, n_prompts=3, seed=1)
    scores = edge_attribution(model, task, "eap", progress=False)
    graph, metric = scores.graph, _logit_diff(task)
    source, _ = _source_upstream(model, task.corrupt_tokens)
    clean, _ = _source_upstream(model, task.clean_tokens)
    base = metric(model.run(task.clean_tokens, logits_to_keep=1)[:, -1]).mean().item()
    rows, cols = np.nonzero(graph.valid)
    picks = [np.flatnonzero([graph.downstream[c].kind == kind for c in cols])[::7][:4] for kind in ("q", "k", "v", "mlp", "logits")]
    eps = 1e-6
    for i in np.concatenate(picks):
        u, d = rows[i], cols[i]
        mask = np.zeros_like(graph.valid)
        mask[u, d] = True
        patched = run_with_patched_edges(model, RunInput(task.clean_tokens), mask, clean + eps * (source - clean))
        finite = (metric(patched).mean().item() - base) / eps
        assert finite == pytest.approx(scores.scores[u, d], rel=1e-3, abs=1e-9), graph.edge_names()[i]


def test_eap_matches_central_differences_on_gqa_llama(random_llama, llama_ioi):
    scores = edge_attribution(random_llama, llama_ioi, "eap", progress=False)
    graph, metric = scores.graph, _logit_diff(llama_ioi)
    source, _ = _source_upstream(random_llama, llama_ioi.corrupt_tokens)
    clean, _ = _source_upstream(random_llama, llama_ioi.clean_tokens)
    magnitude = np.where(graph.valid, np.abs(scores.scores), 0)
    eps = 3e-2
    for kind in ("q", "k", "v", "mlp", "logits"):
        columns = [c for c, node in enumerate(graph.downstream) if node.kind == kind]
        u, c = np.unravel_index(np.argmax(magnitude[:, columns]), (len(graph.upstream), len(columns)))
        mask = np.zeros_like(graph.valid)
        mask[u, columns[c]] = True
        values = [metric(run_with_patched_edges(random_llama, RunInput(llama_ioi.clean_tokens), mask,
                                                clean + sign * eps * (source - clean))).mean().item() for sign in (1, -1)]
        assert (values[0] - values[1]) / (2 * eps) == pytest.approx(scores.scores[u, columns[c]], rel=0.02)


def test_eap_ig_completeness_at_the_embedding(random_llama, llama_ioi):
    """The embedding's summed edge scores are integrated gradients of the input: they approach the
    whole clean-corrupt difference (1 normalized) as steps grow."""
    many = edge_attribution(random_llama, llama_ioi, "eap-ig", steps=40, progress=False)
    one = edge_attribution(random_llama, llama_ioi, "eap-ig", steps=1, progress=False)
    assert many.node_scores()[0] == pytest.approx(1.0, abs=0.03)
    assert abs(many.node_scores()[0] - 1) < abs(one.node_scores()[0] - 1)
    assert many.n_forward_passes == 42 and many.n_backward_passes == 40


def test_backends_give_the_same_edge_scores(random_llama, llama_ioi):
    other = interp.load_model("random-llama", backend="nnsight")
    a = edge_attribution(random_llama, llama_ioi, "eap-ig", steps=3, progress=False)
    b = edge_attribution(other, tasks.ioi(other, n_prompts=4, seed=1), "eap-ig", steps=3, progress=False)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_faithfulness_endpoints_and_pruning(random_llama, llama_ioi):
    scores = edge_attribution(random_llama, llama_ioi, "eap", progress=False)
    graph = scores.graph
    curve = faithfulness_curve(random_llama, llama_ioi, scores, [0, 5, graph.n_edges], progress=False)
    assert curve.full_metric == pytest.approx(scores.target_metric, abs=1e-6)
    assert curve.empty_metric == pytest.approx(scores.source_metric, abs=1e-5)
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-5) and curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-6)
    # pruning dangling edges never changes the patched run
    source, _ = _source_upstream(random_llama, llama_ioi.corrupt_tokens)
    for n in (3, 10, 40):
        keep = top_edges(graph, scores.scores, n)
        pruned = prune_dangling(graph, keep)
        assert keep.sum() == n and not (pruned & ~keep).any()
        runs = [run_with_patched_edges(random_llama, RunInput(llama_ioi.clean_tokens), graph.valid & ~k, source) for k in (keep, pruned)]
        torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=1e-5)


def test_pruning_removes_edges_out_of_unfed_nodes_and_into_unused_ones(random_llama):
    graph = EdgeGraph(random_llama.config)
    keep = np.zeros_like(graph.valid)
    for name in ("L0.H1->L2.Q0", "EMBED->L1.Q2", "EMBED->L2.Q0", "L2.H0->LOGITS"):
        keep[graph.edge_index(name)] = True
    pruned = prune_dangling(graph, keep)
    kept = {graph.edge_names()[i] for i in np.flatnonzero(pruned[graph.valid])}
    # L0.H1 has no input edge; L1.H2 is fed but feeds nothing
    assert kept == {"EMBED->L2.Q0", "L2.H0->LOGITS"}


def _prev_token_induction_task(model):
    """Induction prompts whose corruption breaks the match the induction heads key on."""
    return tasks.induction(model, n_prompts=8, seed=0, half_length=12, break_match=True)


@pytest.mark.parametrize("method, size", [("eap", 40), ("eap-ig", 12)])
def test_toy_induction_circuit_contains_the_previous_token_to_induction_edges(toy_induction, method, size):
    task = _prev_token_induction_task(toy_induction)
    _, cache = toy_induction.run_with_cache(task.clean_tokens, ["L0.A0"])
    previous = previous_token_scores(cache[Site("pattern", 0)])
    prev_heads = {f"L0.H{h}" for h in range(len(previous)) if previous[h] > 0.3}  # this model splits it over 2 heads
    assert prev_heads
    scores = edge_attribution(toy_induction, task, method, progress=False)
    graph = scores.graph
    names, values = graph.edge_names(), scores.edge_vector()
    from_layer0 = [i for i in np.argsort(-np.abs(values)) if names[i].startswith("L0.H")][:3]
    for rank, i in enumerate(from_layer0):  # the strongest edges out of layer 0 leave previous-token heads,
        source, target = names[i].split("->")  # and the two strongest are K-composition into layer 1
        assert source in prev_heads and (rank > 1 or target.startswith("L1.K")), names[i]
    # EAP misses the embedding -> previous-token-head value edges that EAP-IG ranks first, so its
    # pruned circuit needs more edges before the previous-token heads are fed
    circuit = prune_dangling(graph, top_edges(graph, scores.scores, size))
    assert circuit.ravel()[np.flatnonzero(graph.valid.ravel())[from_layer0[0]]]


def test_compare_with_exact_and_sizes(random_llama, llama_ioi):
    scores = edge_attribution(random_llama, llama_ioi, "eap", progress=False)
    exact = activation_patching(random_llama, llama_ioi, "heads", progress=False)
    row = compare_with_exact(scores, exact)
    assert -1 <= row["spearman_abs"] <= 1 and 0 <= row["top10_overlap"] <= 1
    with pytest.raises(ValueError, match="exact 'heads' patching"):
        compare_with_exact(scores, activation_patching(random_llama, llama_ioi, "mlp_out", progress=False))
    assert default_sizes(120) == [1, 2, 5, 10, 20, 50, 100, 120]


def test_discover_edges_result_and_graph(random_llama, llama_ioi, tmp_path):
    result, graph = discover_edges(random_llama, llama_ioi, ("eap-ig", "eap"), steps=2, top_n=12, progress=False)
    assert result.granularity == "edges" and len(result.components) == EdgeGraph(random_llama.config).n_edges
    assert [c["method"] for c in result.extra["curves"]] == ["eap-ig", "eap"]
    assert set(result.arrays) == {"edge_scores_eap-ig", "node_scores_eap-ig", "edge_scores_eap", "node_scores_eap"}
    assert graph["n_edges"] == result.extra["circuit"]["edges_after_pruning"] <= 12
    ids = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in ids and set(e["into"]) <= ids for e in graph["edges"])
    result.save(tmp_path)
    assert Result.load(tmp_path).components == result.components


def test_bad_input(random_llama, llama_ioi, tmp_path):
    with pytest.raises(ValueError, match="unknown edge attribution method 'acdc'"):
        edge_attribution(random_llama, llama_ioi, "acdc")
    with pytest.raises(ValueError, match="at least 1 step"):
        edge_attribution(random_llama, llama_ioi, "eap-ig", steps=0)
    scores = edge_attribution(random_llama, llama_ioi, "eap", progress=False)
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        faithfulness_curve(random_llama, llama_ioi, scores, [-1], progress=False)
    with pytest.raises(ValueError, match="edge mask has shape"):
        run_with_patched_edges(random_llama, RunInput(llama_ioi.clean_tokens), np.zeros((2, 2), bool), torch.zeros(1))
    bad = tmp_path / "graph.json"
    bad.write_text("{not json")
    with pytest.raises(CircuitError, match="is not valid JSON"):
        load_graph(bad)
    bad.write_text(json.dumps({"nodes": []}))
    with pytest.raises(CircuitError, match="not an interp circuit graph"):
        load_graph(bad)


def test_cli_edges(tmp_path, capsys):
    out = tmp_path / "edges"
    code = main(["edges", "--model", "toy-induction", "--task", "induction", "--n-prompts", "4", "--method", "eap-ig", "eap",
                 "--ig-steps", "2", "--top-n", "8", "--sizes", "1,4,16", "--acdc", "0.05", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "faithfulness eap-ig" in printed and str(out / "graph.json") in printed and "ACDC (KL threshold 0.05)" in printed
    data = json.loads((out / "result.json").read_text())
    assert data["granularity"] == "edges" and data["method"] == "eap-ig"
    assert [c["sizes"] for c in data["extra"]["curves"]] == [[1, 4, 16], [1, 4, 16]]
    acdc_row = data["extra"]["acdc"]
    assert acdc_row["edges"] == len(acdc_row["edge_names"]) and set(acdc_row["method_faithfulness_at_size"]) == {"eap-ig", "eap"}
    graph = load_graph(out / "graph.json")
    assert graph["top_n"] == 8 and (out / "edges.html").stat().st_size > 10_000
    assert main(["edges", "--model", "toy-induction", "--task", "induction", "--top-n", "100000", "--out", str(tmp_path / "x")]) == 2
    assert "--top-n 100000 is out of range" in capsys.readouterr().err
    assert main(["edges", "--model", "toy-induction", "--task", "induction", "--sizes", "1,a", "--out", str(tmp_path / "y")]) == 2
    assert "--sizes must be comma-separated integers" in capsys.readouterr().err


def test_acdc_keeps_the_induction_circuit_and_its_kl_is_what_it_reports(toy_induction):
    from circuits.acdc import acdc

    task = _prev_token_induction_task(toy_induction)
    _, cache = toy_induction.run_with_cache(task.clean_tokens, ["L0.A0"])
    previous = previous_token_scores(cache[Site("pattern", 0)])
    prev_heads = {f"L0.H{h}" for h in range(len(previous)) if previous[h] > 0.3}
    result = acdc(toy_induction, task, threshold=0.05, progress=False)
    graph = result.graph
    kept = {graph.edge_names()[i] for i in np.flatnonzero(result.keep[graph.valid])}
    assert 0 < len(kept) < graph.n_edges / 2
    assert any(name.split("->")[0] in prev_heads and name.split("->")[1].startswith("L1.K") for name in kept)
    assert any(name.endswith("->LOGITS") and name.startswith("L1.H") for name in kept)
    # the reported KL is the circuit's own, and each removal cost less than the threshold
    source, _ = _source_upstream(toy_induction, task.corrupt_tokens)
    logprobs = run_with_patched_edges(toy_induction, RunInput(task.clean_tokens), graph.valid & ~result.keep, source).log_softmax(-1)
    clean = toy_induction.run(task.clean_tokens, logits_to_keep=1)[:, -1].log_softmax(-1)
    assert float((clean.exp() * (clean - logprobs)).sum(-1).mean()) == pytest.approx(result.kl, abs=1e-5)
    removed = graph.valid & ~result.keep & ~np.isnan(result.increase)
    assert np.all(result.increase[removed] < 0.05)
    everything = acdc(toy_induction, task, threshold=float("inf"), progress=False)
    assert not everything.keep.any()
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        acdc(toy_induction, task, threshold=-1)
