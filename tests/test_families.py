"""Every family on every analysis: tiny random-weight models built from transformers' own config
classes (``interp.toy_models``), one per family, checked against plain transformers.

The oracle is written out by hand below (where each family keeps its parts, and plain PyTorch
hooks on those modules): interp finds the same parts from the module tree, and its backends,
exact patching, AtP/AtP*, generation and the other analyses must give the numbers plain hooks
give.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import interp
from interp import Site, tasks
from interp.architectures import get_path
from interp.attention_geometry import AttentionGeometry
from interp.attribution import attribution_patching
from interp.patching import activation_patching
from interp.toy_models import RANDOM_FAMILIES, random_model_dir

sys.path.insert(0, str(Path(__file__).parent))  # tests/gguf_files.py
BACKENDS = ("transformer_lens", "nnsight")
_LLAMA = dict(layers="model.layers", attn="self_attn", z_proj="self_attn.o_proj", mlp="mlp", final_norm="model.norm",
              qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), attn_norm="input_layernorm",
              mlp_norm="post_attention_layernorm", mlp_out_proj="mlp.down_proj", mlp_in="mlp.up_proj",
              mlp_gate="mlp.gate_proj")
_QK_NORMS = dict(q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")
_GEMMA2 = dict(_LLAMA, mlp_norm="pre_feedforward_layernorm", attn_post_norm="post_attention_layernorm",
               mlp_post_norm="post_feedforward_layernorm")
_MOE = {key: value for key, value in _LLAMA.items() if key not in ("mlp_out_proj", "mlp_in", "mlp_gate")}
_MOE.update(experts="mlp.experts", n_experts=4)
# where each family keeps its parts (the oracle's own table; interp discovers them)
EXPECTED = {
    "gpt2": dict(layers="transformer.h", attn="attn", qkv=("attn.c_attn",), fused_qkv="concat", z_proj="attn.c_proj",
                 mlp="mlp", attn_norm="ln_1", mlp_norm="ln_2", mlp_in="mlp.c_fc", mlp_out_proj="mlp.c_proj",
                 final_norm="transformer.ln_f"),
    "neox": dict(layers="gpt_neox.layers", attn="attention", qkv=("attention.query_key_value",), fused_qkv="per_head",
                 z_proj="attention.dense", mlp="mlp", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
                 mlp_in="mlp.dense_h_to_4h", mlp_out_proj="mlp.dense_4h_to_h", final_norm="gpt_neox.final_layer_norm",
                 parallel=True),
    "llama": _LLAMA, "gemma": _LLAMA, "llama3": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
    "qwen3": dict(_LLAMA, **_QK_NORMS),
    "gemma2": _GEMMA2,
    "gemma3": dict(_GEMMA2, **_QK_NORMS),
    "phi3": dict(_LLAMA, qkv=("self_attn.qkv_proj",), fused_qkv="concat", mlp_in="mlp.gate_up_proj", mlp_gate=None,
                 fused_gate_up=True),
    "olmo2": dict(_LLAMA, attn_norm=None, mlp_norm=None, attn_post_norm="post_attention_layernorm",
                  mlp_post_norm="post_feedforward_layernorm", **_QK_NORMS),
    "mixtral": _MOE, "qwen2moe": _MOE, "olmoe": dict(_MOE, **_QK_NORMS),
}
MOE = ("mixtral", "qwen2moe", "olmoe")
# Qwen3's random model amplifies float32 rounding most (its query and key norms): two float32
# computations of the same number differ by up to this, relative; other families keep each test's own 1e-4 or 2e-4
QWEN3_FLOAT32_RTOL = 5e-4
POST_NORMED = ("gemma2", "gemma3", "olmo2")


@functools.cache
def _model(family: str, backend: str):
    return interp.load_model(f"random-{family}", backend=backend)


@functools.cache
def _plain(family: str):
    return AutoModelForCausalLM.from_pretrained(random_model_dir(family), attn_implementation="eager").eval().requires_grad_(False)


@functools.cache
def _task(family: str):
    return tasks.ioi(_model(family, "transformer_lens"), n_prompts=2, seed=1)


def test_every_family_is_tested():
    assert set(EXPECTED) == set(RANDOM_FAMILIES)


# ----------------------------------------------------------------------------- the plain-hook oracle
def _split_fused(family, fused, c):
    b, s = fused.shape[:2]
    if EXPECTED[family]["fused_qkv"] == "per_head":  # GPT-NeoX: [head, (q k v), d_head]
        return list(fused.view(b, s, c.n_heads, 3 * c.d_head).split(c.d_head, dim=-1))
    q, k, v = fused.split([c.n_heads * c.d_head, c.n_kv_heads * c.d_head, c.n_kv_heads * c.d_head], dim=-1)
    return [q.view(b, s, c.n_heads, -1), k.view(b, s, c.n_kv_heads, -1), v.view(b, s, c.n_kv_heads, -1)]


def _join_fused(family, parts):
    b, s = parts[0].shape[:2]
    if EXPECTED[family]["fused_qkv"] == "per_head":
        return torch.cat(parts, dim=-1).reshape(b, s, -1)
    return torch.cat([p.reshape(b, s, -1) for p in parts], dim=-1)


def _expert_shares(experts, hidden, index, weights, n_experts):
    """Each expert's weighted output, computed from the 3-D expert weights by hand: [tokens, E, d]."""
    shares = hidden.new_zeros(hidden.shape[0], n_experts, hidden.shape[1])
    for e in range(n_experts):
        gate, up = F.linear(hidden, experts.gate_up_proj[e]).chunk(2, dim=-1)
        out = F.linear(experts.act_fn(gate) * up, experts.down_proj[e])
        shares[:, e] = out * (weights * (index == e)).sum(-1, keepdim=True)
    return shares


def plain_run(family, tokens, reads=(), edits=None, grad=False):
    """Logits and activations of the plain Hugging Face model, read and edited with PyTorch
    hooks on the modules of ``EXPECTED`` (edits: {Site: fn(canonical tensor) -> tensor})."""
    hf, spec, c = _plain(family), EXPECTED[family], _model(family, "transformer_lens").config
    edits, seen, handles = edits or {}, {}, []
    layers = get_path(hf, spec["layers"])

    def canonical(site, value):
        out = edits[site](value) if site in edits else value
        if site in reads:
            seen[site] = out
        return out

    def on_output(path, layer, kinds, picker):
        module = get_path(layers[layer], path) if path else layers[layer]

        def hook(module, args, output):
            first = output[0] if isinstance(output, tuple) else output
            new = picker(first, args)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        handles.append(module.register_forward_hook(hook))

    by_layer = {}
    for site in set(reads) | set(edits):
        by_layer.setdefault(site.layer, set()).add(site.kind)
    for layer, kinds in by_layer.items():
        block = layers[layer]
        if "resid_pre" in kinds:
            def pre(module, args, kwargs, layer=layer):
                if args:
                    return (canonical(Site("resid_pre", layer), args[0]), *args[1:]), kwargs
                kwargs["hidden_states"] = canonical(Site("resid_pre", layer), kwargs["hidden_states"])
                return args, kwargs
            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        if "resid_post" in kinds:
            on_output("", layer, kinds, lambda x, a, layer=layer: canonical(Site("resid_post", layer), x))
        for kind, path in (("attn_out", spec.get("attn_post_norm") or spec["attn"]),
                           ("mlp_out", spec.get("mlp_post_norm") or spec["mlp"])):
            if kind in kinds:
                on_output(path, layer, kinds, lambda x, a, kind=kind, layer=layer: canonical(Site(kind, layer), x))
        if "pattern" in kinds:
            def pattern(module, args, output, layer=layer):
                seen[Site("pattern", layer)] = output[1]
            handles.append(get_path(block, spec["attn"]).register_forward_hook(pattern))
        if "z" in kinds:
            def z(module, args, layer=layer):
                x = args[0]
                return (canonical(Site("z", layer), x.view(*x.shape[:2], c.n_heads, c.d_head)).reshape(x.shape),)
            handles.append(get_path(block, spec["z_proj"]).register_forward_pre_hook(z))
        if kinds & {"q", "k", "v"}:
            if spec.get("fused_qkv"):
                def fused(module, args, output, layer=layer):
                    parts = [canonical(Site(k, layer), p) for k, p in zip("qkv", _split_fused(family, output, c))]
                    return _join_fused(family, parts)
                handles.append(get_path(block, spec["qkv"][0]).register_forward_hook(fused))
            else:
                for kind, path, n in zip("qkv", spec["qkv"], (c.n_heads, c.n_kv_heads, c.n_kv_heads)):
                    if kind in kinds:
                        def one(module, args, output, kind=kind, n=n, layer=layer):
                            return canonical(Site(kind, layer), output.view(*output.shape[:2], n, c.d_head)).reshape(output.shape)
                        handles.append(get_path(block, path).register_forward_hook(one))
        if "mlp_post" in kinds:
            def neurons(module, args, layer=layer):
                return (canonical(Site("mlp_post", layer), args[0]),)
            handles.append(get_path(block, spec["mlp_out_proj"]).register_forward_pre_hook(neurons))
        if "expert" in kinds:
            def experts(module, args, output, layer=layer):
                hidden, index, weights = args
                shares = _expert_shares(module, hidden, index, weights, c.n_experts)
                b, s = tokens.shape
                new = canonical(Site("expert", layer), shares.view(b, s, c.n_experts, -1)).view_as(shares)
                return output + (new - shares).sum(1)
            handles.append(get_path(block, spec["experts"]).register_forward_hook(experts))
    try:
        with torch.set_grad_enabled(grad):
            logits = hf(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


def _kinds(family):
    kinds = ["resid_pre", "q", "k", "v", "z", "attn_out", "mlp_out", "resid_post", "pattern"]
    return kinds + (["expert"] if family in MOE else ["mlp_post"])


# ----------------------------------------------------------------------------- structure and parity
@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_layout_is_discovered_from_the_module_tree(family):
    layout = _model(family, "nnsight").layout.describe()
    for field, value in EXPECTED[family].items():
        assert layout[field] == value, field
    rest = set(layout) - set(EXPECTED[family]) - {"mlp_act", "writes_add", "layer_returns_tuple"}
    assert all(layout[field] in (None, False, 0) for field in rest), {f: layout[f] for f in rest}
    assert layout["writes_add"] and not layout["layer_returns_tuple"]


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_backends_and_plain_hooks_agree_on_logits_and_every_activation(family):
    task = _task(family)
    tokens = task.clean_tokens
    sites = [Site(kind, layer) for kind in _kinds(family) for layer in range(3)]
    plain_logits, plain = plain_run(family, tokens, reads=sites)
    reference = _plain(family)(tokens).logits
    assert torch.equal(plain_logits, reference)  # reading changes nothing
    for backend in BACKENDS:
        logits, cache = _model(family, backend).run_with_cache(tokens, sites)
        torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
        for site in sites:
            torch.testing.assert_close(cache[site], plain[site], atol=1e-4, rtol=1e-4, msg=f"{backend} {site}")
    if family in MOE:  # the experts' shares add up to the MLP output, less a shared expert
        layer_mlp = plain[Site("mlp_out", 1)]
        shares = plain[Site("expert", 1)].sum(2)
        if family != "qwen2moe":
            torch.testing.assert_close(shares, layer_mlp, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_resid_post_is_resid_pre_plus_both_writes(family):
    """attn_out and mlp_out are what each sublayer adds to the residual stream (after any post-norm)."""
    cache = _model(family, "nnsight").run_with_cache(_task(family).clean_tokens, ["L1.RESID_PRE", "L1.ATTN", "L1.MLP", "L1.RESID_POST"])[1]
    torch.testing.assert_close(cache["L1.RESID_POST"], cache["L1.RESID_PRE"] + cache["L1.ATTN"] + cache["L1.MLP"],
                               atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- patching
def _granularities(family):
    mlp = ["experts_pos"] if family in MOE else ["neurons"]
    return ["resid", "attn_out_pos", "mlp_out_pos", "heads_pos", "q_pos", "k_pos", "v_pos", "heads", "block", *mlp]


def _plain_metric(family, logits):
    task = _task(family)
    return interp.metrics.logit_diff(logits[:, -1], task.answers, task.wrong_answers, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_exact_patching_matches_plain_hooks_at_every_granularity(family, backend):
    """Every granularity: a sample of components, each patched alone with plain hooks on the
    plain model, gives the sweep's number (noising: corrupt activations into the clean run)."""
    model, task = _model(family, backend), _task(family)
    rng = np.random.default_rng(0)
    for granularity in _granularities(family):
        layers = [1] if granularity == "neurons" else None
        result = activation_patching(model, task, granularity, layers=layers, progress=False, batch_size=5)
        picks = rng.choice(len(result.components), size=min(4, len(result.components)), replace=False)
        names = [result.components[i] for i in picks]
        parsed = [interp.Component.parse(n) for n in names]
        _, corrupt = plain_run(family, task.corrupt_tokens, reads={c.site for c in parsed})
        for i, component in zip(picks, parsed):
            def put(value, component=component):
                index = interp.model.component_index(component, value.dim())
                patched = value.clone()
                patched[index] = corrupt[component.site][index]
                return patched
            logits, _ = plain_run(family, task.clean_tokens, edits={component.site: put})
            np.testing.assert_allclose(result.arrays["patched_metric"][:, i], _plain_metric(family, logits).numpy(),
                                       atol=1e-4, rtol=1e-4, err_msg=f"{granularity} {component}")


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_pattern_patching_matches_transformer_lens(family):
    from transformer_lens import patching as tl_patching

    model, task = _model(family, "transformer_lens"), _task(family)
    result = activation_patching(model, task, "pattern", direction="denoising", progress=False)
    bridge = model.backend.bridge
    metric = lambda logits: interp.metrics.logit_diff(logits[:, -1], task.answers, task.wrong_answers, None).mean()  # noqa: E731
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(task.clean_tokens)
        reference = tl_patching.get_act_patch_attn_head_pattern_all_pos(bridge, task.corrupt_tokens, clean_cache, metric)
    ours = torch.tensor(result.arrays["patched_metric"]).mean(0).reshape(result.shape)
    torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=1e-4)


def test_granularities_a_family_lacks_are_one_line():
    with pytest.raises(interp.ComponentError, match="granularity 'experts' does not exist for random-llama: it has dense MLPs"):
        activation_patching(_model("llama", "nnsight"), _task("llama"), "experts", progress=False)
    with pytest.raises(interp.ComponentError, match="'neurons' does not exist for random-mixtral: its MLPs are mixtures of 4"):
        activation_patching(_model("mixtral", "nnsight"), _task("mixtral"), "neurons", progress=False)
    with pytest.raises(interp.ComponentError, match="L0.E1 does not exist: random-llama has dense MLPs"):
        _model("llama", "nnsight").validate("L0.E1")
    with pytest.raises(interp.ComponentError, match="L0.E4 is out of range: the model has n_experts=4"):
        _model("mixtral", "nnsight").validate("L0.E4")


# ----------------------------------------------------------------------------- AtP, AtP*, generation
@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_atp_agrees_across_backends_and_with_a_plain_gradient(family):
    """AtP of every node on both backends; the largest by hand: (corrupt - clean) . d metric /
    d activation on the plain model, with plain hooks."""
    task = _task(family)
    granularity = "experts_pos" if family in MOE else "heads_pos"
    results = [attribution_patching(_model(family, b), task, granularity, method="atp", progress=False) for b in BACKENDS]
    per_prompt = results[0].arrays["per_prompt"]
    # nnsight runs SDPA (the default), the bridge eager: float32 rounding. Qwen3's differ by up to 2.8e-4
    # relative on an AVX2 processor with one thread (1.1e-4 with two); in float64 the two are equal
    np.testing.assert_allclose(per_prompt, results[1].arrays["per_prompt"], atol=1e-5,
                               rtol=QWEN3_FLOAT32_RTOL if family == "qwen3" else 2e-4)
    node = int(np.abs(per_prompt).sum(0).argmax())
    component = interp.Component.parse(results[0].components[node])
    clean_logits, clean = plain_run(family, task.clean_tokens, reads={component.site})
    corrupt_logits, corrupt = plain_run(family, task.corrupt_tokens, reads={component.site})
    leaf = {}

    def keep(value):
        leaf["value"] = value.detach().requires_grad_()
        return leaf["value"]
    logits, _ = plain_run(family, task.clean_tokens, edits={component.site: keep}, grad=True)
    _plain_metric(family, logits).sum().backward()
    index = interp.model.component_index(component, clean[component.site].dim())
    product = ((corrupt[component.site] - clean[component.site]) * leaf["value"].grad)[index]
    by_hand = product.reshape(product.shape[0], -1).sum(-1)
    difference = (_plain_metric(family, corrupt_logits).mean() - _plain_metric(family, clean_logits).mean()).item()
    np.testing.assert_allclose(per_prompt[:, node] * difference, by_hand.numpy(), atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_atp_matches_transformer_lens_attribution_patching(family):
    """TransformerLens' own node attribution on the bridge (denoising: gradient on the corrupt run)."""
    from transformer_lens.tools.analysis import attribution_patching as tl_atp

    model, task = _model(family, "transformer_lens"), _task(family)
    result = attribution_patching(model, task, "heads_pos", method="atp", direction="denoising", progress=False)
    n = task.clean_tokens.shape[0]
    reference = {}
    embedding = model.hf_model.get_input_embeddings().weight
    embedding.requires_grad_(True)  # TransformerLens' backward hooks need a graph; interp freezes weights
    try:
        for i in range(n):
            answer, wrong = task.answers[i:i + 1], task.wrong_answers[i:i + 1]
            metric = lambda logits: interp.metrics.logit_diff(logits[:, -1], answer, wrong, None).sum()  # noqa: E731
            scores = tl_atp.attribution_patch(model.backend.bridge, task.clean_tokens[i:i + 1], task.corrupt_tokens[i:i + 1],
                                              metric).node_scores
            for node, value in scores.items():
                if node.kind == "attn_head_out":
                    name = f"L{node.layer}.H{node.head}@{node.position}"
                    reference[name] = reference.get(name, 0.0) + value / n
    finally:
        embedding.requires_grad_(False)
    difference = result.arrays["per_prompt"].mean(0)
    scale = (result.corrupt_metric - result.clean_metric)
    ours = dict(zip(result.components, difference * -scale))  # raw mean estimate, denoising sign
    names = sorted(reference)
    assert set(ours) == set(reference)
    np.testing.assert_allclose([ours[k] for k in names], [reference[k] for k in names], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_qk_fix_reproduces_the_familys_attention(family, backend):
    """Sliding windows, soft-capping, q/k norms, partial rotary, per-layer rotary: the recomputed
    pattern is the model's own at every layer, and AtP* runs on queries and keys."""
    model, task = _model(family, backend), _task(family)
    sites = [Site(kind, layer) for kind in ("q", "k", "pattern") for layer in range(3)]
    _, cache = model.run_with_cache(task.clean_tokens, sites)
    geometry = AttentionGeometry.of(model)
    for layer in range(3):
        at = geometry.at(layer, task.n_positions)
        q, k = at.rotate(cache[Site("q", layer)], cache[Site("k", layer)])
        at.check(q, k, cache[Site("pattern", layer)], atol=1e-5)
    result = attribution_patching(model, task, "k_pos", method="atp*", progress=False, layers=[2])
    assert np.isfinite(result.scores).all()


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_greedy_generation_matches_plain_transformers_without_a_cache(family):
    tokens = _task(family).clean_tokens[:1]
    expected = tokens
    hf = _plain(family)
    with torch.no_grad():
        for _ in range(4):
            expected = torch.cat([expected, hf(expected).logits[:, -1:].argmax(-1)], dim=1)
    for backend in BACKENDS:
        assert torch.equal(_model(family, backend).generate(tokens, 4), expected), backend


# ----------------------------------------------------------------------------- the other analyses
ADDITIVE_DENSE = [f for f in RANDOM_FAMILIES if f not in MOE + POST_NORMED]


@pytest.mark.parametrize("family", ADDITIVE_DENSE)
def test_eap_node_sums_equal_atp_and_edge_patching_endpoints(family):
    from circuits.edge_attribution import edge_attribution
    from circuits.edge_graph import EdgeGraph
    from circuits.edge_patching import run_with_patched_edges
    from circuits.edge_runs import upstream_outputs, upstream_sites
    from interp.backends.base import RunSpec
    from interp.corruption import RunInput
    from interp.sublayers import Sublayers

    model, task = _model(family, "nnsight"), _task(family)
    # completeness at the embedding: its summed EAP-IG scores approach the whole difference (1) as steps grow
    error = [abs(edge_attribution(model, task, "eap-ig", steps=steps, progress=False).node_scores()[0] - 1) for steps in (1, 32)]
    assert error[1] < error[0] and error[1] < 0.6
    scores = edge_attribution(model, task, "eap", progress=False)
    graph = scores.graph
    for granularity, kind in (("heads", "head"), ("mlp_out", "mlp")):
        atp = attribution_patching(model, task, granularity, method="atp", progress=False)
        rows = [i for i, node in enumerate(graph.upstream) if node.kind == kind]
        # Qwen3 (its query and key norms recomputed from weights): in float64 the two agree to 1.6e-6
        # relative, in float32 on an AVX2 processor EAP's heads are off by 3.0e-4 (AtP's by 1.5e-5)
        np.testing.assert_allclose(scores.node_scores()[rows], atp.scores, atol=1e-5,
                                   rtol=QWEN3_FLOAT32_RTOL if family == "qwen3" else 1e-4)
    graph = EdgeGraph(model.config)
    with torch.no_grad():
        corrupt = model.forward(RunSpec(task.corrupt_tokens, reads=upstream_sites(graph), logits_to_keep=1))
    source = upstream_outputs(Sublayers(model), graph, corrupt.activations)
    none = run_with_patched_edges(model, RunInput(task.clean_tokens), np.zeros_like(graph.valid), source)
    every = run_with_patched_edges(model, RunInput(task.clean_tokens), graph.valid.copy(), source)
    torch.testing.assert_close(none, model.run(task.clean_tokens, logits_to_keep=1)[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every, corrupt.logits[:, -1], atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("family", MOE + POST_NORMED)
def test_edge_methods_say_in_one_line_why_a_family_is_out_of_reach(family):
    from circuits.edge_attribution import edge_attribution
    from interp.architectures import UnsupportedArchitectureError

    why = "pass through a norm before the residual add" if family in POST_NORMED else "mixtures of 4 experts"
    with pytest.raises(UnsupportedArchitectureError, match=f"EAP does not apply to random-{family} .*{why}") as caught:
        edge_attribution(_model(family, "nnsight"), _task(family), "eap", progress=False)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_dropping_is_zeroing_reversible_and_generation_keeps_a_correct_kv_cache(family):
    from interp.layer_dropping import dropped

    model, tokens = _model(family, "nnsight"), _task(family).clean_tokens
    before = model.run(tokens)
    for unit in ("L1.ATTN", "L0.MLP"):
        with dropped(model, [unit]):
            skipped = model.run(tokens)
        with model.patch({unit: lambda x: torch.zeros_like(x)}):
            zeroed = model.run(tokens)
        torch.testing.assert_close(skipped, zeroed, rtol=0, atol=1e-5)
    assert torch.equal(model.run(tokens), before)
    hf = model.hf_model
    with dropped(model, ["L0.ATTN", "L2.BLOCK"]), torch.no_grad():
        cached = model.generate(tokens[:1], 4)
        recomputed = hf.generate(tokens[:1], max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False,
                                 pad_token_id=model.tokenizer.eos_token_id)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_weight_masks_act_on_every_matrix_kind(family):
    from circuits.weight_masks import maskable_matrices, masked

    model, tokens = _model(family, "nnsight"), _task(family).clean_tokens
    reference = model.run(tokens)
    matrices = maskable_matrices(model)
    if family in MOE:
        assert any(m.matrix == "experts.gate_up_proj" for m in matrices)
    with masked(model, {m.name: torch.ones(m.shape, dtype=torch.bool) for m in matrices}):
        assert torch.equal(model.run(tokens), reference)
    for target in (matrices[1], matrices[-1]):
        with masked(model, {target.name: torch.zeros(target.shape)}):
            zeroed = model.run(tokens)
        weight = getattr(target.module, target.parameter)
        saved = weight.data.clone()
        weight.data.zero_()
        try:
            assert torch.equal(zeroed, model.run(tokens)), target.name
        finally:
            weight.data.copy_(saved)
        assert not torch.equal(zeroed, reference)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_dictionaries_train_and_splice_exactly(family):
    from circuits.activation_store import ActivationStore
    from circuits.dictionary import DictionaryConfig
    from circuits.dictionary_evaluation import spliced
    from circuits.dictionary_training import TrainingConfig, train_dictionary

    model, tokens = _model(family, "nnsight"), _task(family).clean_tokens
    clean = model.run(tokens)
    for kind, site in (("sae", "L1.RESID_POST"), ("transcoder", "L1.MLP")):
        config = DictionaryConfig(d_in=64, d_sae=128, k=8, kind=kind, site=site)
        store = ActivationStore(model, site, kind, tokens.repeat(4, 1), batch_tokens=16, buffer_tokens=64, forward_batch=4)
        trained = train_dictionary(iter(store), config, TrainingConfig(total_tokens=64, batch_tokens=16), progress=False)
        dictionary = trained.dictionary.eval()
        with spliced(model, dictionary, error_term=True):
            torch.testing.assert_close(model.run(tokens), clean, atol=1e-5, rtol=1e-5)
        with spliced(model, dictionary, error_term=False):
            assert not torch.allclose(model.run(tokens), clean, atol=1e-3)


@pytest.mark.parametrize("family", [f for f in RANDOM_FAMILIES if f not in POST_NORMED])
def test_transcoder_replacement_model_runs_the_model_exactly(family):
    from circuits.dictionary import DictionaryConfig, SparseDictionary
    from circuits.transcoder_circuits import Target, attribution_graph, replacement_forward

    model, tokens = _model(family, "transformer_lens"), _task(family).clean_tokens[:1, :8]
    transcoders = {layer: SparseDictionary(DictionaryConfig(d_in=64, d_sae=96, k=6, kind="transcoder", site=f"L{layer}.MLP",
                                                            seed=layer)).eval() for layer in range(3)}
    run = replacement_forward(model, transcoders, tokens)
    torch.testing.assert_close(run.logits, model.run(tokens, logits_to_keep=1)[0, -1], atol=1e-5, rtol=1e-5)
    graph = attribution_graph(model, transcoders, tokens, Target(answer=100, wrong=200), max_features=20)
    assert "TARGET" in [n["id"] for n in graph["nodes"]]


@pytest.mark.parametrize("family", POST_NORMED)
def test_transcoder_graphs_say_in_one_line_why_post_norms_are_out_of_reach(family):
    from circuits.dictionary import DictionaryConfig, SparseDictionary
    from circuits.transcoder_circuits import Target, attribution_graph
    from interp.architectures import UnsupportedArchitectureError

    model, tokens = _model(family, "transformer_lens"), _task(family).clean_tokens[:1, :8]
    transcoders = {1: SparseDictionary(DictionaryConfig(d_in=64, d_sae=96, k=6, kind="transcoder", site="L1.MLP")).eval()}
    with pytest.raises(UnsupportedArchitectureError, match=f"does not apply to random-{family}"):
        attribution_graph(model, transcoders, tokens, Target(answer=100, wrong=200), max_features=20)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_probes_and_head_scores_run_on_every_layer(family):
    from interp.head_scores import head_scores
    from probes.activations import residual_activations
    from probes.linear_probe import probe_layers

    model = _model(family, "nnsight")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1000, 5000, (40, 8), generator=generator)
    labels = np.r_[np.ones(20, int), np.zeros(20, int)]
    activations = residual_activations(model, tokens, torch.full((40,), 7))
    assert activations.shape == (3, 40, 64) and np.isfinite(activations).all()
    scores = probe_layers(activations, labels, np.arange(40) // 2, tokens[:, -1].numpy())
    assert scores.accuracy.shape == (3,) and ((0 <= scores.accuracy) & (scores.accuracy <= 1)).all()
    found = head_scores(model, n_sequences=2, half_length=6)
    assert all(np.isfinite(v).all() and v.shape == (3, 4) for v in found.values())


# ----------------------------------------------------------------------------- GGUF files of other families
GGUF_FAMILIES = [("qwen2", "qwen2"), ("phi3", "phi3"), ("gemma2", "gemma2")]


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.mark.parametrize("family, architecture", GGUF_FAMILIES)
def test_a_gguf_file_of_another_family_loads_once_and_runs(family, architecture, gguf_dir, monkeypatch):
    """Written under llama.cpp's names (tests/gguf_files.py), read by interp on both backends:
    the logits of transformers' own reading of the file, exact patching and AtP* run, and a
    second load converts nothing."""
    import transformers
    from gguf_files import write_gguf

    path = write_gguf(family, architecture, gguf_dir / f"{family}.gguf")
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, attn_implementation="eager").eval()
    for backend in BACKENDS:
        model = interp.load_model(str(path), backend=backend)
        assert model.config.architecture == type(reference).__name__
        task = tasks.induction(model, n_prompts=2, seed=1)
        with torch.no_grad():
            expected = reference(task.clean_tokens).logits
        torch.testing.assert_close(model.run(task.clean_tokens), expected, atol=1e-4, rtol=1e-4)
        exact = activation_patching(model, task, "heads", progress=False)
        star = attribution_patching(model, task, "heads", method="atp*", progress=False)
        assert np.isfinite(exact.scores).all() and np.isfinite(star.scores).all()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was converted again")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    from interp.loading import convert_gguf
    convert_gguf(path)


def test_a_gguf_architecture_transformers_cannot_read_is_one_line(tmp_path):
    import gguf

    path = tmp_path / "recurrent.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_uint32("rwkv6.block_count", 1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(interp.ModelLoadError, match="cannot read GGUF file .*recurrent.gguf \\(architecture 'rwkv6'\\) with transformers: ") as caught:
        interp.load_model(str(path), backend="transformer_lens")
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- families the rules have never seen
def _unnamed_family(name: str, tmp_path_factory):
    """A random-weight model of a family interp has no entry for, saved as a plain Hugging Face folder."""
    import transformers as T
    from transformers import AutoTokenizer

    from interp.loading import bundled_gguf_path, convert_gguf

    tokenizer = AutoTokenizer.from_pretrained(convert_gguf(bundled_gguf_path()))
    small = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=96,
                 max_position_embeddings=256, vocab_size=len(tokenizer))
    configs = {
        "stablelm": lambda: T.StableLmConfig(**small, num_key_value_heads=2, use_qkv_bias=True, partial_rotary_factor=0.25),
        "cohere": lambda: T.CohereConfig(**small, num_key_value_heads=2),  # parallel block, one shared norm
        "falcon": lambda: T.FalconConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, vocab_size=len(tokenizer),
                                         multi_query=True, parallel_attn=True),  # fused multi-query q/k/v
        "granite": lambda: T.GraniteConfig(**small, num_key_value_heads=2, residual_multiplier=0.5, attention_multiplier=0.3),
        "opt": lambda: T.OPTConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, ffn_dim=96, word_embed_proj_dim=64,
                                   vocab_size=len(tokenizer), max_position_embeddings=256),
        "bloom": lambda: T.BloomConfig(n_layer=2, n_head=4, hidden_size=64, vocab_size=len(tokenizer)),
    }
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(configs[name]())
    model.config.architectures = [type(model).__name__]
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# the output projection of each, by hand (the oracle's only knowledge of these families)
UNNAMED_Z_PROJ = {"stablelm": ("model.layers", "self_attn.o_proj"), "cohere": ("model.layers", "self_attn.o_proj"),
                  "falcon": ("transformer.h", "self_attention.dense")}


@pytest.mark.parametrize("name", list(UNNAMED_Z_PROJ))
def test_a_family_no_test_names_patches_correctly(name, tmp_path_factory):
    folder = _unnamed_family(name, tmp_path_factory)
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    layers_path, z_path = UNNAMED_Z_PROJ[name]
    for backend in BACKENDS:
        model = interp.load_model(str(folder), backend=backend)
        task = tasks.ioi(model, n_prompts=2, seed=1)
        result = activation_patching(model, task, "heads_pos", progress=False)
        c = model.config
        z_of = {}
        for run in ("corrupt", "clean"):
            module = get_path(get_path(plain, layers_path)[1], z_path)
            handle = module.register_forward_pre_hook(lambda m, args, run=run: z_of.__setitem__(run, args[0].clone()))
            with torch.no_grad():
                plain(getattr(task, f"{run}_tokens"))
            handle.remove()
        for head, position in ((0, task.n_positions - 1), (3, task.n_positions - 2)):
            i = result.components.index(f"L1.H{head}@{position}")
            width = slice(head * c.d_head, (head + 1) * c.d_head)

            def put(module, args):
                x = args[0].clone()
                x[:, position, width] = z_of["corrupt"][:, position, width]
                return (x,)
            handle = get_path(get_path(plain, layers_path)[1], z_path).register_forward_pre_hook(put)
            with torch.no_grad():
                logits = plain(task.clean_tokens).logits
            handle.remove()
            expected = interp.metrics.logit_diff(logits[:, -1], task.answers, task.wrong_answers, None)
            np.testing.assert_allclose(result.arrays["patched_metric"][:, i], expected.numpy(), atol=1e-4, rtol=1e-4)


def test_a_residual_multiplier_keeps_patching_and_refuses_edges_in_one_line(tmp_path_factory):
    from circuits.edge_attribution import edge_attribution
    from interp.architectures import UnsupportedArchitectureError

    model = interp.load_model(str(_unnamed_family("granite", tmp_path_factory)), backend="nnsight")
    assert not model.layout.writes_add
    task = tasks.ioi(model, n_prompts=2, seed=1)
    assert np.isfinite(activation_patching(model, task, "heads", progress=False).scores).all()
    with pytest.raises(UnsupportedArchitectureError, match="residual stream is not the sum of the attention and MLP outputs"):
        edge_attribution(model, task, "eap", progress=False)


@pytest.mark.parametrize("name, part", [
    ("opt", "could not find the MLP \\(a child of model.decoder.layers.0 named mlp/"),
    ("bloom", "could not find the attention's own output \\(the norm post_attention_layernorm reads"),
])
def test_a_family_the_rules_cannot_read_is_one_line_naming_the_part(name, part, tmp_path_factory):
    from interp.architectures import UnsupportedArchitectureError
    from interp.ui.cli import main

    folder = _unnamed_family(name, tmp_path_factory)
    with pytest.raises(UnsupportedArchitectureError, match=part) as caught:
        interp.load_model(str(folder), backend="nnsight")
    assert "\n" not in str(caught.value) and "register_override" in str(caught.value)
    out = tmp_path_factory.mktemp(f"{name}-run")
    assert main(["patch", "--model", str(folder), "--task", "ioi", "--n-prompts", "2", "--out", str(out / "x")]) == 2


def test_an_override_supplies_what_the_rules_cannot_find(monkeypatch):
    """With q and the output projection of one shape and no name to tell them apart, the rules
    stop in one line; the override they suggest makes the model load, and load correctly."""
    from interp import architectures
    from interp.architectures import UnsupportedArchitectureError, register_override

    monkeypatch.setattr(architectures, "_OUT_NAMES", ("proj",))
    with pytest.raises(UnsupportedArchitectureError, match="could not find the attention output projection .*register_override"):
        interp.load_model("random-llama3", backend="nnsight")
    monkeypatch.setitem(architectures.OVERRIDES, "LlamaForCausalLM", {})
    register_override("LlamaForCausalLM", z_proj="self_attn.o_proj")
    model = interp.load_model("random-llama3", backend="nnsight")
    assert model.layout.z_proj == "self_attn.o_proj"
    tokens = _task("llama3").clean_tokens
    _, cache = model.run_with_cache(tokens, ["L1.H2"])
    _, plain = plain_run("llama3", tokens, reads={Site("z", 1)})
    torch.testing.assert_close(cache["L1.H2"], plain[Site("z", 1)][:, :, 2])
