"""AtP and AtP*: exact identities (docs/methods.md, attribution patching), brute-force oracles and
TransformerLens' own attribution patching."""

import dataclasses

import numpy as np
import pytest
import torch
from transformer_lens.tools.analysis import attribution_patching as tl_atp

import interp
from interp import tasks
from interp.attention_geometry import AttentionGeometry, LayerGeometry
from interp.attribution import attribution_patching, diagnose, verification, verify_top
from interp.attribution.estimates import NodeSelector, per_node
from interp.attribution.qk_fix import all_keys_fix, key_fix, query_fix
from interp.backends.base import RunSpec
from interp.components import Site
from interp.patching import activation_patching


def _raw(result):
    """Mean un-normalized estimate (or exact effect) per component."""
    difference = result.corrupt_metric - result.clean_metric
    if result.settings["direction"] == "denoising":
        difference = -difference
    return result.scores * difference


@pytest.fixture(scope="module")
def linear_readout_llama():
    """Random Llama where everything after the last layer's attention is linear (identity final
    norm, last MLP writes zero), with head 0 of the last layer saturated (its queries and keys x50)."""
    model = interp.load_model("random-llama", backend="transformer_lens")
    model.hf_model.model.norm = torch.nn.Identity()
    attention = model.hf_model.model.layers[-1].self_attn
    with torch.no_grad():
        model.hf_model.model.layers[-1].mlp.down_proj.weight.zero_()
        attention.q_proj.weight[: model.config.d_head] *= 50.0
        attention.k_proj.weight[: model.config.d_head] *= 50.0
    return model


@pytest.fixture(scope="module")
def last_word_task(linear_readout_llama):
    """Corruption changes the last token, so the last query moves far enough to flip a saturated head."""
    words = [(" to", " from"), (" on", " under"), (" red", " blue"), (" cat", " dog")]
    stem = "When Mary and John went to the store, John gave a drink"
    pairs = [dict(clean=stem + a, corrupt=stem + b, answer=" Mary", wrong_answer=" John") for a, b in words]
    return tasks.Task.from_pairs(linear_readout_llama, "last-word", pairs)


# ---------------------------------------------------------------------------- plain AtP
def test_plain_atp_matches_transformer_lens_attribution_patch(random_llama, llama_ioi):
    """TransformerLens' node attribution (denoising convention, gradient on the corrupt run)."""
    result = attribution_patching(random_llama, llama_ioi, "heads_pos", method="atp", direction="denoising", progress=False)
    metric = lambda logits: interp.metrics.logit_diff(logits[:, -1], answer, wrong, None).sum()  # noqa: E731
    reference = {}
    embedding = random_llama.hf_model.get_input_embeddings().weight
    embedding.requires_grad_(True)  # TransformerLens' backward hooks need a graph; interp freezes weights
    for i in range(llama_ioi.clean_tokens.shape[0]):  # TL scores pairs one at a time with its own metric
        answer, wrong = llama_ioi.answers[i:i + 1], llama_ioi.wrong_answers[i:i + 1]
        scores = tl_atp.attribution_patch(random_llama.backend.bridge, llama_ioi.clean_tokens[i:i + 1],
                                          llama_ioi.corrupt_tokens[i:i + 1], metric).node_scores
        for node, value in scores.items():
            if node.kind == "attn_head_out":
                reference[f"L{node.layer}.H{node.head}@{node.position}"] = reference.get(f"L{node.layer}.H{node.head}@{node.position}", 0.0) + value / llama_ioi.clean_tokens.shape[0]
    embedding.requires_grad_(False)
    ours = dict(zip(result.components, _raw(result)))
    assert set(ours) == set(reference)
    names = sorted(ours)
    assert np.allclose([ours[n] for n in names], [reference[n] for n in names], atol=1e-5)


@pytest.mark.parametrize("granularity", ["heads_pos", "v_pos", "attn_out", "heads"])
def test_atp_equals_exact_patching_when_downstream_is_linear(linear_readout_llama, last_word_task, granularity):
    model, task = linear_readout_llama, last_word_task
    last = [model.config.n_layers - 1]
    exact = activation_patching(model, task, granularity, layers=last, progress=False)
    atp = attribution_patching(model, task, granularity, method="atp", layers=last, progress=False)
    scale = np.abs(_raw(exact)).max()
    assert scale > 1e-5  # well above float32 noise
    assert np.allclose(_raw(atp), _raw(exact), rtol=1e-3, atol=1e-3 * scale)


# ---------------------------------------------------------------------------- QK fix
def _explicit_effect(geometry, q, k, v, grad_o, q_new=None, k_new=None):
    """sum (A' - A) g^A with A' from an explicit softmax of the changed scores."""
    pattern = geometry.scores(q, k).softmax(-1)
    changed = geometry.scores(q if q_new is None else q_new, k if k_new is None else k_new).softmax(-1)
    return ((changed - pattern) * torch.einsum("bshd,bthd->bhst", grad_o, v)).sum((-1, -2))  # [b, h]


@pytest.mark.parametrize("scale", [0.3, 40.0])  # 40: most rows saturate, many probabilities are exactly 1 in float64
def test_qk_fix_closed_forms_equal_explicit_softmax(scale):
    torch.manual_seed(1)
    b, t, h, d = 2, 7, 3, 8
    visible = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    geometry = LayerGeometry("test", scale, h, h, None, visible, None, None, None, None)
    q, k, v, grad_o, q_new, k_new = (torch.randn(b, t, h, d, dtype=torch.float64) for _ in range(6))
    queries = query_fix(geometry, q, k, v, q_new, grad_o)
    keys = key_fix(geometry, q, k, v, k_new, grad_o)
    if scale > 1:
        assert (geometry.scores(q, k).softmax(-1) == 1.0).sum() > b * h  # the saturated case is really tested
    for s in range(t):
        changed = q.clone()
        changed[:, s] = q_new[:, s]
        assert torch.allclose(queries[:, s], _explicit_effect(geometry, q, k, v, grad_o, q_new=changed), atol=1e-9)
        changed = k.clone()
        changed[:, s] = k_new[:, s]
        assert torch.allclose(keys[:, s], _explicit_effect(geometry, q, k, v, grad_o, k_new=changed), atol=1e-9)
    assert torch.allclose(all_keys_fix(geometry, q, k, v, k_new, grad_o), _explicit_effect(geometry, q, k, v, grad_o, k_new=k_new))


@pytest.mark.parametrize("granularity", ["q_pos", "k_pos", "q", "k"])
def test_qk_fix_is_exact_when_downstream_is_linear(linear_readout_llama, last_word_task, granularity):
    """Last layer, linear read-out: only the softmax is non-linear, and the QK fix computes it exactly."""
    model, task = linear_readout_llama, last_word_task
    last = [model.config.n_layers - 1]
    exact = activation_patching(model, task, granularity, layers=last, progress=False)
    fixed = attribution_patching(model, task, granularity, method="atp", qk_fix=True, layers=last, progress=False)
    scale = np.abs(_raw(exact)).max()
    assert scale > 1e-5
    assert np.allclose(_raw(fixed), _raw(exact), rtol=1e-3, atol=1e-3 * scale)


def test_saturated_attention_fools_atp_not_atp_star(linear_readout_llama, last_word_task):
    model, task = linear_readout_llama, last_word_task
    query = [f"L{model.config.n_layers - 1}.Q0@-1"]
    exact = _raw(activation_patching(model, task, components=query, progress=False))[0]
    plain = _raw(attribution_patching(model, task, components=query, method="atp", progress=False))[0]
    star = _raw(attribution_patching(model, task, components=query, method="atp*", progress=False))[0]
    assert abs(exact) > 1e-3
    assert abs(plain) < 0.01 * abs(exact)
    assert star == pytest.approx(exact, rel=1e-3)


def test_qk_fix_refuses_nodes_without_queries_or_keys(random_llama, llama_ioi):
    with pytest.raises(ValueError, match="query and key nodes only"):
        attribution_patching(random_llama, llama_ioi, "mlp_out", qk_fix=True, progress=False)


# ---------------------------------------------------------------------------- GradDrop
def _brute_force_graddrop(model, task, components):
    """GradDrop from its definition: one full forward + backward per dropped block, the block's
    residual write wrapped in a stop-gradient; noising with token corruption."""
    metric_of, _ = interp.metrics.task_metric("logit_diff", model, task)
    sites = {c.site for c in components}
    with torch.no_grad():
        source = model.forward(RunSpec(task.corrupt_tokens, reads=sites, logits_to_keep=1)).activations
    n_layers = model.config.n_layers
    frame, rows = task.frame(), torch.arange(task.n_rows)
    token_rows = {c.position: frame.rows(c.position) for c in components if c.position is not None}
    terms = []
    for dropped in range(n_layers):
        entering = {}

        def remember(x):  # the tensor the block really reads (a leaf at layer 0, where nothing needs grad)
            entering["x"] = x if x.requires_grad else x.detach().requires_grad_()
            return entering["x"]

        def stop_gradient(x):
            return entering["x"] + (x - entering["x"]).detach()

        edits = {Site("resid_pre", dropped): [remember], Site("resid_post", dropped): [stop_gradient]}
        with torch.enable_grad():
            out = model.forward(RunSpec(task.clean_tokens, edits=edits, reads=sites, logits_to_keep=1, keep_grad=True))
            grads = torch.autograd.grad(metric_of(out.logits[:, -1]).sum(), [out.activations[s] for s in sites], allow_unused=True)
        grad = {s: (torch.zeros_like(out.activations[s]) if g is None else g) for s, g in zip(sites, grads)}
        terms.append(torch.cat([per_node((source[c.site] - out.activations[c.site].detach()) * grad[c.site], c.kind,
                                         NodeSelector.of([c], token_rows, task.n_rows, 0), rows)
                                for c in components], dim=1))
    return torch.stack(terms).abs().sum(0) / (n_layers - 1)  # [n_prompts, n_components]


@pytest.mark.parametrize("granularity", ["heads_pos", "mlp_out_pos", "resid"])
def test_graddrop_matches_brute_force(random_llama, llama_ioi, granularity):
    result = attribution_patching(random_llama, llama_ioi, granularity, method="atp", grad_drop="block", progress=False)
    components = [interp.Component.parse(c) for c in result.components]
    reference = _brute_force_graddrop(random_llama, llama_ioi, components).mean(0).numpy()
    difference = abs(result.corrupt_metric - result.clean_metric)
    assert np.allclose(result.arrays["importance"] * difference, reference, atol=1e-5)


def test_graddrop_equals_atp_for_a_node_with_only_a_direct_path(random_llama, llama_ioi):
    last = [random_llama.config.n_layers - 1]
    plain = attribution_patching(random_llama, llama_ioi, "mlp_out_pos", method="atp", layers=last, progress=False)
    for unit in ("block", "sublayer"):
        dropped = attribution_patching(random_llama, llama_ioi, "mlp_out_pos", method="atp", grad_drop=unit, layers=last, progress=False)
        assert np.abs(plain.arrays["importance"]).max() > 1e-3
        assert np.allclose(dropped.arrays["importance"], plain.arrays["importance"], atol=1e-6)


def test_graddrop_recovers_a_cancelled_node():
    """With a linear read-out, scale layer 2's MLP so that the direct and indirect linear effects of
    L1.MLP@-1 cancel: AtP sees nothing, GradDrop (block) still sees the direct effect, which
    dropping layer 2 isolates: importance = (|AtP| + 0 + |direct|) / 2."""
    model = interp.load_model("random-llama", backend="transformer_lens")
    model.hf_model.model.norm = torch.nn.Identity()
    task = tasks.ioi(model, n_prompts=1, seed=3)
    node = ["L1.MLP@-1"]
    layer = model.hf_model.model.layers[2]
    originals = {w: w.detach().clone() for w in (layer.mlp.down_proj.weight, layer.self_attn.o_proj.weight)}

    def atp_with(mlp_scale, attention_scale=1.0, **options):
        with torch.no_grad():
            layer.mlp.down_proj.weight.copy_(originals[layer.mlp.down_proj.weight] * mlp_scale)
            layer.self_attn.o_proj.weight.copy_(originals[layer.self_attn.o_proj.weight] * attention_scale)
        return attribution_patching(model, task, components=node, method="atp", progress=False, **options)

    direct = _raw(atp_with(0.0, 0.0))[0]  # layer 2 writes nothing: only the direct path is left
    at_zero, at_one = _raw(atp_with(0.0))[0], _raw(atp_with(1.0))[0]
    alpha = -at_zero / (at_one - at_zero)  # AtP is linear in the scale of the last MLP's output
    cancelled = atp_with(alpha)
    dropped = atp_with(alpha, grad_drop="block")
    difference = abs(dropped.corrupt_metric - dropped.clean_metric)
    assert abs(direct) > 1e-5
    assert abs(_raw(cancelled)[0]) < 1e-3 * abs(direct)
    assert dropped.arrays["importance"][0] * difference == pytest.approx(abs(direct) / 2, rel=1e-2)


# ---------------------------------------------------------------------------- results and errors
def test_atp_star_result_and_ranking(random_llama, llama_ioi, tmp_path):
    result = attribution_patching(random_llama, llama_ioi, "heads", method="atp*", progress=False)
    assert result.method == "atp*" and result.n_backward_passes == 1 + random_llama.config.n_layers
    assert result.arrays["per_prompt"].shape == (4, len(result.components))
    assert np.allclose(result.arrays["per_prompt"].mean(0), result.scores, atol=1e-6)
    top = result.top(3)
    assert top[0][0] == result.components[int(np.argmax(result.arrays["importance"]))]
    loaded = interp.results.Result.load(result.save(tmp_path / "run"))
    assert loaded.n_backward_passes == result.n_backward_passes and loaded.top(3) == top


@pytest.mark.parametrize("granularity, corruption", [("heads_pos", "tokens"), ("heads", "gaussian"), ("mlp_out_pos", "tokens")])
def test_starting_at_the_first_difference_gives_the_same_estimates(random_llama, llama_ioi, granularity, corruption):
    """Runs that start at the first differing position (shared positions as a constant KV cache)
    reproduce the full-length AtP* exactly, give 0 before it, and cost less."""
    options = dict(method="atp*", corruption=corruption, progress=False)
    full = attribution_patching(random_llama, llama_ioi, granularity, from_first_difference=False, **options)
    suffix = attribution_patching(random_llama, llama_ioi, granularity, **options)
    start = suffix.extra["first_differing_position"]
    assert full.extra["first_differing_position"] == 0 and start > 0
    assert np.abs(full.arrays["importance"]).max() > 1e-3
    assert np.allclose(suffix.arrays["per_prompt"], full.arrays["per_prompt"], atol=1e-5)
    assert np.allclose(suffix.arrays["importance"], full.arrays["importance"], atol=1e-5)
    positions = [interp.Component.parse(c).position for c in suffix.components]
    before = [i for i, p in enumerate(positions) if p is not None and p < start]
    assert len(before) == suffix.extra["unchanged_components"] and (granularity == "heads" or before)
    assert not suffix.arrays["importance"][before].any()
    assert suffix.extra["forward_equivalents"] < full.extra["forward_equivalents"]


@pytest.mark.parametrize("grad_drop", [None, "block", "sublayer"])
def test_forward_equivalents_count_the_backward_work_done(random_llama, llama_ioi, monkeypatch, grad_drop):
    """The reported cost counts every cotangent that goes through a block's backward (2 forwards per
    full-length backward), and nothing for a block dropped at its own layer (the skip path)."""
    from interp.attribution import backward

    pulled = []
    original = backward._grad
    monkeypatch.setattr(backward, "_grad", lambda outputs, inputs, cotangents: pulled.append(len(cotangents))
                        or original(outputs, inputs, cotangents))
    result = attribution_patching(random_llama, llama_ioi, "heads_pos", method="atp", grad_drop=grad_drop or False,
                                  progress=False)
    n_layers, n_positions = random_llama.config.n_layers, llama_ioi.n_positions
    start = result.extra["first_differing_position"]
    forwards = start / n_positions + 2 * (n_positions - start) / n_positions  # shared prefix, target and source suffixes
    backwards = 2.0 * sum(pulled) / n_layers * (n_positions - start) / n_positions
    checks = 2 * min(4, llama_ioi.n_rows) / llama_ioi.n_rows  # the shortcut checks: both runs, plain, on up to 4 rows
    if grad_drop:  # and one block backward of one cotangent against the batched ones
        checks += 2.0 / n_layers * (n_positions - start) / n_positions
    assert result.extra["check_forward_equivalents"] == pytest.approx(checks)
    assert result.extra["forward_equivalents"] == pytest.approx(forwards + backwards + checks)
    expected = {None: n_layers, "block": n_layers * (n_layers + 1) // 2, "sublayer": n_layers * (n_layers + 2)}
    assert sum(pulled) == expected[grad_drop]


def test_unknown_method_is_one_line(random_llama, llama_ioi):
    with pytest.raises(ValueError, match="unknown attribution method 'atp2'"):
        attribution_patching(random_llama, llama_ioi, method="atp2", progress=False)


# ---------------------------------------------------------------------------- verification and diagnostic
def test_verify_top_matches_the_exhaustive_sweep(random_llama, llama_ioi):
    result = attribution_patching(random_llama, llama_ioi, "heads", method="atp*", progress=False)
    verify_top(random_llama, llama_ioi, result, 4, progress=False)
    exhaustive = activation_patching(random_llama, llama_ioi, "heads", progress=False)
    checked = ~np.isnan(result.arrays["exact"])
    assert checked.sum() == 4 and checked[result.ranking()[:4]].all()
    assert np.allclose(result.arrays["exact"][checked], exhaustive.scores[checked], atol=1e-5)


def test_diagnostic_bound_is_zero_when_nothing_is_left_and_catches_a_missed_node(random_llama, llama_ioi):
    last = [random_llama.config.n_layers - 1]
    result = attribution_patching(random_llama, llama_ioi, "heads_pos", method="atp", layers=last, progress=False)
    exact = activation_patching(random_llama, llama_ioi, "heads_pos", layers=last, progress=False)
    # in the last layer only the last position can reach the logits: verify those, the rest is exactly 0
    n_effective = int((np.abs(exact.scores) > 1e-4).sum())  # the rest differ from 0 by float noise only
    assert n_effective == random_llama.config.n_heads
    verify_top(random_llama, llama_ioi, result, n_effective, progress=False)
    diagnose(random_llama, llama_ioi, result, samples=32, p=0.3, progress=False)
    assert result.extra["diagnostic"]["bound"] == pytest.approx(0.0, abs=1e-4)
    # heads before the second name (the first differing token) are the same in both runs: left out
    first = int(llama_ioi.subject_positions[0].nonzero()[0])
    n_heads, n_positions = random_llama.config.n_heads, llama_ioi.n_positions
    assert result.extra["diagnostic"]["n_unchanged"] == n_heads * first
    assert result.extra["diagnostic"]["n_unverified"] == n_heads * (n_positions - first) - n_effective
    assert int(result.extra["diagnostic"]["component"].split("@")[1]) >= first  # named at its own position
    # with nothing verified, the bound must cover the largest true effect
    fresh = attribution_patching(random_llama, llama_ioi, "heads_pos", method="atp", layers=last, progress=False)
    diagnose(random_llama, llama_ioi, fresh, samples=128, p=0.3, progress=False)
    assert fresh.extra["diagnostic"]["bound"] >= 0.5 * np.abs(exact.scores).max()


@pytest.mark.parametrize("corruption", ["tokens", "gaussian"])
def test_diagnostic_started_at_the_first_difference_equals_the_full_length_one(random_llama, llama_ioi, monkeypatch, corruption):
    result = attribution_patching(random_llama, llama_ioi, "heads", method="atp", corruption=corruption, progress=False)
    diagnose(random_llama, llama_ioi, result, samples=16, p=0.3, progress=False)
    suffix = dict(result.extra["diagnostic"])
    monkeypatch.setattr(verification, "first_differences", lambda target, source: torch.zeros(len(target.tokens), dtype=torch.long))
    diagnose(random_llama, llama_ioi, result, samples=16, p=0.3, progress=False)
    full = result.extra["diagnostic"]
    assert suffix["first_differing_position"] > 0 and full["first_differing_position"] == 0
    assert suffix["bound"] > 1e-3 and suffix["bound"] == pytest.approx(full["bound"], rel=1e-4)
    assert suffix["forward_equivalents"] < full["forward_equivalents"]
    assert 0 < suffix["seconds"] < 600


@pytest.mark.parametrize("options, message", [
    ({"p": 1.5}, "--diagnose-p must be between 0 and 1, got 1.5"),
    ({"samples": 2}, "--diagnose-samples must be at least 4, got 2"),
])
def test_bad_diagnostic_settings_are_one_line(random_llama, llama_ioi, options, message):
    result = attribution_patching(random_llama, llama_ioi, "attn_out", method="atp", progress=False)
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        diagnose(random_llama, llama_ioi, result, progress=False, **options)


def test_nothing_left_to_diagnose_and_bad_k_are_one_line(random_llama, llama_ioi):
    result = attribution_patching(random_llama, llama_ioi, "attn_out", method="atp", progress=False)
    with pytest.raises(ValueError, match="--verify-top must be at least 1, got 0"):
        verify_top(random_llama, llama_ioi, result, 0, progress=False)
    verify_top(random_llama, llama_ioi, result, len(result.components), progress=False)
    with pytest.raises(ValueError, match="every component was verified exactly: nothing is left to diagnose"):
        diagnose(random_llama, llama_ioi, result, progress=False)


def test_attention_the_qk_fix_cannot_reproduce_is_refused(random_llama, llama_ioi):
    from interp.attention_geometry import AttentionGeometryError

    _, cache = random_llama.run_with_cache(llama_ioi.clean_tokens, [Site(k, 1) for k in ("q", "k", "pattern")])
    right = AttentionGeometry.of(random_llama).at(1, llama_ioi.clean_tokens.shape[1])
    q, k = right.rotate(cache[Site("q", 1)], cache[Site("k", 1)])
    right.check(q, k, cache[Site("pattern", 1)])
    wrong = dataclasses.replace(right, scale=right.scale * 2)
    with pytest.raises(AttentionGeometryError, match="random-llama layer 1: recomputed attention differs from the model's"):
        wrong.check(q, k, cache[Site("pattern", 1)])
