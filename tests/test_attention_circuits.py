"""Attribution through attention heads: OV circuits against the model's own attention output and
against the frozen-norm gradients of the replacement model; heads as attribution-graph nodes."""

import numpy as np
import pytest
import torch

import interp
from circuits.attention_circuits import head_source_contributions, ov_circuits, ov_connections, transcoder_input_direction
from circuits.dictionary import DictionaryConfig, SparseDictionary
from circuits.transcoder_circuits import Target, attribution_matrix, replacement_forward
from interp.backends.base import RunSpec
from interp.components import ComponentError, Site
from interp.sublayers import Sublayers

PROMPT = "When Mary and John went to the store"


def _transcoders(skip_layer: int | None = 1) -> dict:
    out = {}
    for layer in (0, 1, 2):
        kind = "skip_transcoder" if layer == skip_layer else "transcoder"
        dictionary = SparseDictionary(DictionaryConfig(d_in=64, d_sae=96, k=6, kind=kind, site=f"L{layer}.MLP", seed=layer))
        with torch.no_grad():
            if dictionary.W_skip is not None:
                dictionary.W_skip.normal_(std=0.05, generator=torch.Generator().manual_seed(7))
        out[layer] = dictionary.eval()
    return out


@pytest.fixture(scope="module", params=["random-llama", "random-gpt2"])
def setting(request):
    """(model, transcoders, tokens): grouped-query RMSNorm llama, and GPT-2 (LayerNorm, fused
    q/k/v with biases)."""
    model = interp.load_model(request.param, backend="transformer_lens")
    return model, _transcoders(), model.to_tokens(PROMPT)[:, :8]


def _output_bias(model, layer: int) -> torch.Tensor:
    sublayers = Sublayers(model)
    bias = sublayers._leaf(layer, sublayers.layout.z_proj).bias
    return torch.zeros(model.config.d_model) if bias is None else bias.detach().float()


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_head_source_contributions_sum_to_the_attention_output(setting, backend):
    model, _, tokens = setting
    model = interp.load_model(model.config.name, backend=backend)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
    contributions = head_source_contributions(model, tokens, 1, 6, direction)
    assert contributions.shape == (model.config.n_heads, 8)
    assert contributions[:, 7].abs().max() == 0  # causal: no later source
    attn_out = model.forward(RunSpec(tokens, reads={Site("attn_out", 1)})).activations[Site("attn_out", 1)][0, 6].float()
    total = contributions.sum() + _output_bias(model, 1) @ direction
    assert total.item() == pytest.approx((attn_out @ direction).item(), rel=1e-4, abs=1e-5)
    # one head, one source: the head's own z at the destination, split by source, in the same units
    z = model.forward(RunSpec(tokens, reads={Site("z", 1)})).activations[Site("z", 1)][0, 6]  # [n_heads, d_head]
    writes = Sublayers(model).head_outputs(1, z[None])[0].float() @ direction  # [n_heads]
    torch.testing.assert_close(contributions.sum(1), writes, atol=1e-5, rtol=1e-4)


def test_ov_circuits_reproduce_each_head_write(setting):
    model, _, tokens = setting
    reads = {Site("resid_pre", 2), Site("pattern", 2), Site("z", 2)}
    acts = model.forward(RunSpec(tokens, reads=reads)).activations
    normed = Sublayers(model).norm("attn", 2).forward(acts[Site("resid_pre", 2)][0]).float()  # [pos, d_model]
    weights, bias = ov_circuits(model, 2)
    per_source = torch.einsum("sd,hde->hse", normed, weights) + bias[:, None]  # [n_heads, pos, d_model]
    expected = torch.einsum("hts,hse->the", acts[Site("pattern", 2)][0].float(), per_source)
    written = Sublayers(model).head_outputs(2, acts[Site("z", 2)])[0].float()  # [pos, n_heads, d_model]
    torch.testing.assert_close(expected, written, atol=1e-5, rtol=1e-4)


def test_transcoder_input_direction_reads_the_pre_activation(setting):
    """direction . x / scale(x) is the latent's pre-activation minus its value at x = 0 (its bias
    path): the direction carries the MLP pre-norm's gain, centred for a LayerNorm."""
    model, transcoders, _ = setting
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    norm = Sublayers(model).norm("mlp", 1)
    with torch.no_grad():
        expected = (transcoders[1].pre_activations(norm.forward(x)) - transcoders[1].pre_activations(norm.forward(torch.zeros(64))))[:, 17]
    direction = transcoder_input_direction(model, transcoders[1], 1, 17)
    torch.testing.assert_close(x @ direction / Sublayers(model).norm_scale("mlp", 1, x)[:, 0], expected, atol=1e-5, rtol=1e-4)


def _scales(model, tokens):
    reads = {Site("resid_pre", 1), Site("resid_mid", 1), Site("pattern", 1)}
    acts = model.forward(RunSpec(tokens, reads=reads)).activations
    sublayers = Sublayers(model)
    attn = sublayers.norm_scale("attn", 1, acts[Site("resid_pre", 1)][0].float())[:, 0]
    mlp = sublayers.norm_scale("mlp", 1, acts[Site("resid_mid", 1)][0].float())[:, 0]
    return attn, mlp, acts[Site("pattern", 1)][0].float()


def test_feature_to_feature_edges_across_positions_are_ov_circuits_times_attention(setting):
    """With frozen patterns and norm scales, feature i (layer 0, position s) reaches feature j
    (layer 1, position t != s) only through attention at layer 1: the gradient edge equals
    f_i * sum_h A_h[t, s] * ov_connections[h][i, j] / (scale_attn(s) * scale_mlp(t))."""
    model, transcoders, tokens = setting
    matrix = attribution_matrix(model, transcoders, tokens, Target(answer=100, wrong=200), max_features=10_000, max_heads=0)
    attn_scale, mlp_scale, pattern = _scales(model, tokens)
    connections = ov_connections(model, 1, None, transcoders[0], transcoders[1], 1)  # every head: [n_heads, n_up, n_down]
    assert torch.equal(connections[2], ov_connections(model, 1, 2, transcoders[0], transcoders[1], 1))
    features = [node for node in matrix.nodes if node[0] == "feature"]
    checked = 0
    for up in (node for node in features if node[1] == 0):
        for down in (node for node in features if node[1] == 1 and node[2] > up[2]):
            (_, _, s, i), (_, _, t, j) = up, down
            activation = matrix.values[matrix.index(up)]
            expected = activation * (pattern[:, t, s] * connections[:, i, j]).sum() / (attn_scale[s] * mlp_scale[t])
            assert matrix.adjacency[matrix.index(down), matrix.index(up)] == pytest.approx(expected.item(), rel=1e-3, abs=1e-6)
            checked += 1
    assert checked > 100


def test_head_nodes_take_every_path_across_positions_and_rows_add_up():
    """All heads that matter cut (in layers 0-1 that is every head at every position; a layer-2 head
    away from the last position has no path to the logits): no edge into layers 0-1 joins different
    positions except through a head node, every
    feature -> head edge is the OV-circuit formula against the target's gradient, and (no biases
    anywhere, so the frozen replacement model is linear in its leaves) each row sums to the value."""
    model = interp.load_model("random-llama", backend="transformer_lens")
    transcoders, tokens = _transcoders(), model.to_tokens(PROMPT)[:, :8]
    target = Target(answer=100, wrong=200)
    all_heads = model.config.n_layers * model.config.n_heads * 8
    matrix = attribution_matrix(model, transcoders, tokens, target, max_features=10_000, max_heads=all_heads)
    nodes, adjacency = matrix.nodes, matrix.adjacency
    heads = [node for node in nodes if node[0] == "head"]
    assert len([node for node in heads if node[1] <= 1]) == 2 * model.config.n_heads * 8
    for j, down in enumerate(nodes):
        for i, up in enumerate(nodes):
            if up[0] in ("feature", "embed", "error") and down[0] in ("feature", "error") and down[1] <= 1 and up[2] != down[2]:
                assert adjacency[j, i] == 0
    for k in [len(nodes) - 1] + [matrix.index(node) for node in heads]:  # terms cancel: float32 error ~ 1e-6 of sum |.|
        value = matrix.target_value if k == len(nodes) - 1 else matrix.values[k]
        assert abs(adjacency[k].sum() - value) <= 1e-5 * np.abs(adjacency[k]).sum() + 1e-7

    uncut = replacement_forward(model, transcoders, tokens)
    target.value(uncut).backward()
    attn_scale, _, pattern = _scales(model, tokens)
    weights, _ = ov_circuits(model, 1)
    sublayers = Sublayers(model)
    checked = 0
    for _, _, t, h in (node for node in heads if node[1] == 1):
        gradient = uncut.attn_out[1].grad[0, t].float()
        for up in (node for node in nodes if node[0] == "feature" and node[1] == 0 and node[2] <= t):
            _, _, s, i = up
            write = sublayers.norm_linear_part("attn", 1, transcoders[0].W_dec[i].detach())
            expected = matrix.values[matrix.index(up)] * pattern[h, t, s] / attn_scale[s] * (write @ weights[h] @ gradient)
            assert adjacency[matrix.index(("head", 1, t, h)), matrix.index(up)] == pytest.approx(expected.item(), rel=1e-3, abs=1e-6)
            checked += 1
    assert checked > 20


def test_attention_circuits_bad_input():
    model = interp.load_model("random-llama", backend="transformer_lens")
    transcoders = _transcoders(None)
    with pytest.raises(ComponentError, match="head 4 is out of range: .* 4 heads"):
        ov_connections(model, 1, 4, transcoders[0], transcoders[1], 1)
    with pytest.raises(ComponentError, match="layer 3 is out of range"):
        ov_circuits(model, 3)
    with pytest.raises(ValueError, match="cannot feed a transcoder at earlier layer 0"):
        ov_connections(model, 1, 0, transcoders[0], transcoders[0], 0)
    with pytest.raises(ComponentError, match="latent 96 is out of range"):
        transcoder_input_direction(model, transcoders[1], 1, 96)
    tokens = model.to_tokens(PROMPT)[:, :8]
    with pytest.raises(ValueError, match="position 8 is out of range"):
        head_source_contributions(model, tokens, 1, 8, torch.zeros(64))
    with pytest.raises(ValueError, match="max_features and max_heads must be >= 0"):
        attribution_matrix(model, transcoders, tokens, Target(answer=1, wrong=2), max_heads=-1)
