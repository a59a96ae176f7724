"""Transcoder feature circuits: the replacement model, gradient attributions checked by finite
differences, weights-only connections, attribution-graph pruning, `interp transcoder circuit`."""

import json

import pytest
import torch

import interp
from circuits.dictionary import DictionaryConfig, DictionaryError, SparseDictionary
from circuits.dictionary_io import save_dictionary
from circuits.transcoder_circuits import Target, attribution_graph, connections, de_embedding, replacement_forward
from interp.ui.cli import main
from interp.results import Result
from interp.sublayers import Sublayers


@pytest.fixture(scope="module")
def model():
    return interp.load_model("random-llama", backend="transformer_lens")


@pytest.fixture(scope="module")
def transcoders():
    out = {}
    for layer in (0, 1, 2):
        dictionary = SparseDictionary(DictionaryConfig(d_in=64, d_sae=96, k=6, kind="skip_transcoder" if layer == 1 else "transcoder",
                                                       site=f"L{layer}.MLP", seed=layer))
        with torch.no_grad():
            if dictionary.W_skip is not None:
                dictionary.W_skip.normal_(std=0.05, generator=torch.Generator().manual_seed(7))
        out[layer] = dictionary.eval()
    return out


@pytest.fixture(scope="module")
def tokens(model):
    return model.to_tokens("When Mary and John went to the store")[:, :8]


def test_replacement_model_runs_the_model_exactly(model, transcoders, tokens):
    run = replacement_forward(model, transcoders, tokens)
    torch.testing.assert_close(run.logits, model.run(tokens, logits_to_keep=1)[0, -1], atol=1e-5, rtol=1e-5)
    assert set(run.latents) == {0, 1, 2} and run.latents[0].shape == (8, 96) and run.errors[2].shape == (8, 64)


def _finite_difference(model, transcoders, tokens, base, perturb, read, eps=1e-3):
    """Central difference; the replacement model is curved (norm scales), so eps must be small."""
    values = []
    for sign in (1, -1):
        fixed = replacement_forward(model, transcoders, tokens, freeze_norms=False)
        fixed.latents = {l: v.detach().clone() for l, v in base.latents.items()}
        fixed.errors = {l: v.detach().clone() for l, v in base.errors.items()}
        fixed.patterns = base.patterns
        perturb(fixed, sign * eps)
        values.append(read(replacement_forward(model, transcoders, tokens, fixed, freeze_norms=False)))
    return (values[0] - values[1]) / (2 * eps)


def test_edge_attributions_match_finite_differences(model, transcoders, tokens):
    """Without frozen norm scales the gradients are those of the replacement model itself."""
    base = replacement_forward(model, transcoders, tokens, freeze_norms=False)
    up_position, up_latent = [int(v) for v in torch.nonzero(base.latents[0] > 0)[5]]
    down_latent = int(base.pre[2][7].argmax())
    base.pre[2][7, down_latent].backward(retain_graph=True)
    gradient = base.latents[0].grad[up_position, up_latent].item()
    error_gradient = base.errors[1].grad[3, 10].item()

    def bump_latent(run, eps):
        run.latents[0][up_position, up_latent] += eps

    def bump_error(run, eps):
        run.errors[1][3, 10] += eps

    def read_pre(run):
        return run.pre[2][7, down_latent].item()

    assert _finite_difference(model, transcoders, tokens, base, bump_latent, read_pre) == pytest.approx(gradient, rel=0.02, abs=1e-5)
    assert _finite_difference(model, transcoders, tokens, base, bump_error, read_pre) == pytest.approx(error_gradient, rel=0.02, abs=1e-5)
    target = Target(answer=100, wrong=200)
    for t in [base.embedding, *base.latents.values(), *base.errors.values()]:
        t.grad = None
    target.value(base).backward()
    logit_gradient = base.latents[1].grad[7].abs().argmax().item()
    expected = base.latents[1].grad[7, logit_gradient].item()

    def bump_mid(run, eps):
        run.latents[1][7, logit_gradient] += eps

    assert _finite_difference(model, transcoders, tokens, base, bump_mid, lambda run: target.value(run).item()) == pytest.approx(expected, rel=0.02, abs=1e-5)


def test_connections_and_de_embedding_are_the_linear_maps_they_claim(model, transcoders):
    up, down = transcoders[0], transcoders[2]
    gain = Sublayers(model).norm_gain("mlp", 2)
    matrix = connections(up, down, gain)
    i, j = 5, 17
    t = torch.zeros((), requires_grad=True)
    pre = down.pre_activations(gain * (t * up.W_dec[i]))[j]
    (derivative,) = torch.autograd.grad(pre, t)
    assert matrix[i, j].item() == pytest.approx(derivative.item(), rel=1e-5)
    scores = de_embedding(model, down, 2)
    token = 1234
    row = model.hf_model.get_input_embeddings().weight[token].float()
    expected = down.pre_activations(gain * row) - down.pre_activations(torch.zeros(64))
    torch.testing.assert_close(scores[token], expected.detach(), atol=1e-5, rtol=1e-4)


def test_attribution_graph_structure_and_pruning(model, transcoders, tokens):
    loose = attribution_graph(model, transcoders, tokens, Target(answer=100, wrong=200), max_features=30, node_threshold=0.95)
    tight = attribution_graph(model, transcoders, tokens, Target(answer=100, wrong=200), max_features=30, node_threshold=0.5)
    ids = [n["id"] for n in loose["nodes"]]
    assert len(ids) == len(set(ids)) and "TARGET" in ids
    assert all(e["source"] in ids and e["target"] in ids for e in loose["edges"])
    assert len(tight["nodes"]) <= len(loose["nodes"])
    assert all(n["influence"] >= 0 for n in loose["nodes"])
    feature = attribution_graph(model, transcoders, tokens, Target(feature=(2, 3, 7)), max_features=20)
    assert all(n["layer"] < 2 for n in feature["nodes"] if n["kind"] == "feature")


def test_attribution_graph_bad_input(model, transcoders, tokens):
    with pytest.raises(ValueError, match="tokens must be \\[1, pos\\]"):
        replacement_forward(model, transcoders, tokens.repeat(2, 1))
    sae = SparseDictionary(DictionaryConfig(d_in=64, d_sae=32, k=2, site="L0.MLP"))
    with pytest.raises(DictionaryError, match="is an SAE"):
        replacement_forward(model, {0: sae}, tokens)
    other = interp.load_model("random-llama", backend="nnsight")
    with pytest.raises(NotImplementedError, match="backend='transformer_lens'"):
        replacement_forward(other, transcoders, tokens)


def test_cli_transcoder_circuit(transcoders, tmp_path, capsys):
    folders = []
    for layer in (0, 2):
        save_dictionary(transcoders[layer], tmp_path / f"tc{layer}")
        folders.append(str(tmp_path / f"tc{layer}"))
    out = tmp_path / "graph"
    assert main(["transcoder", "circuit", "--transcoders", *folders, "--model", "random-llama",
                 "--prompt", "When Mary and John went", "--target", " Mary| John", "--out", str(out)]) == 0
    graph = json.loads((out / "graph.json").read_text())
    assert graph["transcoder_layers"] == [0, 2] and (out / "graph.html").stat().st_size > 10_000
    assert graph["n_candidate_heads"] == 16 and graph["freeze_norms"] is True
    result = Result.load(out)
    assert result.method == "feature-graph" and result.components == [n["id"] for n in graph["nodes"] if n["kind"] != "target"]
    printed = capsys.readouterr().out
    assert "logit(' Mary') - logit(' John')" in printed and "o.dT/do" in printed
    assert main(["transcoder", "circuit", "--transcoders", *folders, "--model", "random-llama",
                 "--prompt", "When Mary", "--target", "Mary", "--out", str(out)]) == 2
    assert "give 'ANSWER|WRONG'" in capsys.readouterr().err


def test_cli_transcoder_circuit_rejects_two_transcoders_for_one_layer(transcoders, tmp_path, capsys):
    for name in ("a", "b"):
        save_dictionary(transcoders[0], tmp_path / name)
    assert main(["transcoder", "circuit", "--transcoders", str(tmp_path / "a"), str(tmp_path / "b"), "--model", "random-llama",
                 "--prompt", "When Mary", "--target", " Mary| John", "--out", str(tmp_path / "g")]) == 2
    assert "two transcoders for layer 0" in capsys.readouterr().err
