"""Layer dropping, redundancy scores and pruning, checked against plain Hugging Face computations."""

import math

import numpy as np
import pytest
import torch

import interp
from interp import hf_compat
from interp.layer_dropping import DropError, Unit, dropped, parameter_count
from interp.pruning import DROP_METHODS, EvaluationSet, drop_order, evaluate, pruning_curves
from interp.redundancy import ablation_scores, divergence, output_change, similarity_scores

FAMILIES = ["llama", "gpt2", "neox", "gemma"]


@pytest.fixture(scope="module")
def chunks():
    return torch.randint(100, 20000, (3, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def zeroed_llama():
    """random-llama with attention of layer 1 and the MLP of layer 2 outputting exact zeros."""
    model = interp.load_model("random-llama", backend="nnsight")
    layers = model.hf_model.model.layers
    with torch.no_grad():
        layers[1].self_attn.o_proj.weight.zero_()
        layers[2].mlp.down_proj.weight.zero_()
    return model


def _state(model):
    return {k: v.clone() for k, v in model.hf_model.state_dict().items()}


# ----------------------------------------------------------------------------- units and dropping
def test_unit_syntax():
    assert str(Unit.parse(" l5.attn ")) == "L5.ATTN" and Unit.parse("L2.BLOCK").sublayers == (Unit("attn", 2), Unit("mlp", 2))
    with pytest.raises(DropError, match="cannot parse unit 'L5.H3'"):
        Unit.parse("L5.H3")


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_drop_is_reversible_bit_exactly(random_llama, backend, chunks):
    model = random_llama if backend == "transformer_lens" else interp.load_model("random-llama", backend=backend)
    before_state, before = _state(model), model.run(chunks)
    with dropped(model, ["L0.ATTN", "L1.BLOCK", "L2.MLP"]):
        during = model.run(chunks)
    assert not torch.equal(during, before)
    assert torch.equal(model.run(chunks), before)
    after_state = _state(model)
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)


def test_dropping_after_an_error_inside_the_block_still_restores(random_llama, chunks):
    before = random_llama.run(chunks)
    with pytest.raises(RuntimeError, match="boom"):
        with dropped(random_llama, ["L1.ATTN"]):
            raise RuntimeError("boom")
    assert torch.equal(random_llama.run(chunks), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_sublayer_equals_zeroing_its_output(family, chunks):
    """Skipping norm + module == the intact model with that sublayer's output patched to 0."""
    model = interp.load_model(f"random-{family}", backend="transformer_lens")
    for unit, component in (("L1.ATTN", "L1.ATTN"), ("L0.MLP", "L0.MLP")):
        with dropped(model, [unit]):
            skipped = model.run(chunks)
        with model.patch({component: lambda x: torch.zeros_like(x)}):
            zeroed = model.run(chunks)
        torch.testing.assert_close(skipped, zeroed, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("units", [["L0.ATTN"], ["L2.ATTN", "L1.BLOCK"]])
def test_generation_with_dropped_attention_uses_a_correct_kv_cache(family, units):
    """Incremental decoding with the cache (dropped layers keep a 1-number-per-position entry)
    gives the logits of a full recompute, also when layer 0's attention is gone."""
    model = interp.load_model(f"random-{family}", backend="nnsight")
    tokens = model.to_tokens(["The capital of France is Paris and the capital of Spain is"])
    hf = model.hf_model
    with dropped(model, units), torch.no_grad():
        full = hf(tokens).logits[:, -3:]
        prefix = hf(tokens[:, :-3], use_cache=True)
        rest = hf(tokens[:, -3:], **hf_compat.cache_kwargs(hf, hf_compat.output_cache(prefix)), use_cache=True)
        torch.testing.assert_close(rest.logits, full, rtol=1e-4, atol=1e-5)
        states = hf_compat.layer_states(hf_compat.output_cache(rest))
        gone = {u.layer for unit in units for u in Unit.parse(unit).sublayers if u.kind == "attn"}
        for layer in range(model.config.n_layers):
            keys = states[layer][0]
            assert keys.shape[-2] == tokens.shape[1]
            assert (keys.shape[1] * keys.shape[-1] == 1) == (layer in gone)
        cached = model.generate(tokens, 5)
        recomputed = hf.generate(tokens, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=False,
                                 pad_token_id=model.tokenizer.eos_token_id)
    assert torch.equal(cached, recomputed)


def test_parameter_count(random_llama):
    layer = random_llama.hf_model.model.layers[1]._original_component
    attn = sum(p.numel() for p in layer.self_attn.parameters()) + layer.input_layernorm.weight.numel()
    mlp = sum(p.numel() for p in layer.mlp.parameters()) + layer.post_attention_layernorm.weight.numel()
    assert parameter_count(random_llama, ["L1.ATTN"]) == attn
    assert parameter_count(random_llama, ["L1.BLOCK", "L1.MLP"]) == attn + mlp


def test_bad_units(random_llama):
    with pytest.raises(DropError, match="unit L3.ATTN is out of range: the model has 3 layers"):
        with dropped(random_llama, ["L3.ATTN"]):
            pass


# ----------------------------------------------------------------------------- similarity
def _reference_similarity(model, tokens):
    """cos(X, Y) per unit from plain PyTorch hooks on the Hugging Face modules."""
    hf = model.hf_model
    inputs, outputs = {}, {}
    hooks = []
    for l, layer in enumerate(hf.model.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, kw, l=l: inputs.__setitem__(l, (kw.get("hidden_states", a[0] if a else None))), with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, kw, out, l=l: outputs.__setitem__(("attn", l), out[0]), with_kwargs=True))
        hooks.append(layer.mlp.register_forward_hook(lambda m, a, out, l=l: outputs.__setitem__(("mlp", l), out)))
    try:
        with torch.no_grad():
            hidden = hf(tokens, output_hidden_states=True).hidden_states
    finally:
        for hook in hooks:
            hook.remove()
    def cos(x, y):
        per_token = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)
        return per_token.mean().item(), (per_token.clamp(-1, 1).arccos() / math.pi).mean().item()

    result = {}
    for l in range(len(hf.model.layers)):
        x = inputs[l]
        mid = x + outputs[("attn", l)]
        result[f"L{l}.ATTN"] = cos(x, mid)
        result[f"L{l}.MLP"] = cos(mid, mid + outputs[("mlp", l)])
        if l + 1 < len(hf.model.layers):  # the last hidden state is after the final norm
            result[f"L{l}.BLOCK"] = cos(hidden[l], hidden[l + 1])
    return result


def test_similarity_matches_hugging_face_hidden_states(chunks):
    model = interp.load_model("random-llama", backend="nnsight")
    scores = similarity_scores(model, chunks, batch_size=2)
    reference = _reference_similarity(model, chunks)
    for name, (value, angle) in reference.items():
        assert scores.of(name) == pytest.approx(value, abs=1e-9), name
        assert scores.angular[scores.units.index(Unit.parse(name))] == pytest.approx(angle, abs=1e-6), name
    np.testing.assert_allclose(scores.importance, 1 - scores.cos)


def test_similarity_is_the_same_through_both_backends(random_llama, chunks):
    nnsight_model = interp.load_model("random-llama", backend="nnsight")
    a = similarity_scores(random_llama, chunks, skip_first=2)
    b = similarity_scores(nnsight_model, chunks, skip_first=2)
    np.testing.assert_allclose(a.cos, b.cos, atol=1e-7)
    assert a.n_tokens == chunks.shape[0] * (chunks.shape[1] - 2)


def test_last_token_only(chunks):
    model = interp.load_model("random-llama", backend="nnsight")
    last = similarity_scores(model, chunks, last_token_only=True)
    assert last.n_tokens == chunks.shape[0]
    assert last.of("L1.ATTN") != pytest.approx(_reference_similarity(model, chunks)["L1.ATTN"][0], abs=1e-6)
    hf = model.hf_model
    with torch.no_grad():
        hidden = hf(chunks, output_hidden_states=True).hidden_states
    expected = torch.nn.functional.cosine_similarity(hidden[0][:, -1].double(), hidden[1][:, -1].double(), dim=-1).mean()
    assert last.of("L0.BLOCK") == pytest.approx(expected.item(), abs=1e-9)


def test_zeroed_sublayer_has_similarity_exactly_one_ranks_first_and_changes_nothing(zeroed_llama, chunks):
    scores = similarity_scores(zeroed_llama, chunks)
    assert scores.of("L1.ATTN") == 1.0 and scores.of("L2.MLP") == 1.0
    assert scores.angular[scores.units.index(Unit("attn", 1))] == 0.0
    assert all(scores.of(u) < 1.0 for u in scores.units if str(u) not in ("L1.ATTN", "L2.MLP"))
    assert drop_order(zeroed_llama, "attn", 1, chunks, scores=scores).units == [Unit("attn", 1)]
    assert drop_order(zeroed_llama, "mlp", 1, chunks, scores=scores).units == [Unit("mlp", 2)]
    ablation = ablation_scores(zeroed_llama, chunks, ["L1.ATTN", "L2.MLP", "L0.ATTN"])
    assert ablation.divergence[0] == 0.0 and ablation.divergence[1] == 0.0 and ablation.divergence[2] > 0
    assert ablation.loss[0] == ablation.full_loss and ablation.loss[1] == ablation.full_loss


def test_joint_ranking_indexes_attention_and_mlp_by_their_own_scores(zeroed_llama, chunks):
    scores = similarity_scores(zeroed_llama, chunks)
    order = drop_order(zeroed_llama, "joint", 6, chunks, scores=scores)
    assert set(order.units[:2]) == {Unit("attn", 1), Unit("mlp", 2)}
    assert sorted(order.units) == sorted([Unit(k, l) for k in ("attn", "mlp") for l in range(3)])
    for unit, value in zip(order.units, order.values):
        assert value == scores.of(unit)
    assert order.values == sorted(order.values, reverse=True)


def test_block_scores_are_ranked_on_their_own(zeroed_llama, chunks):
    scores = similarity_scores(zeroed_llama, chunks)
    order = drop_order(zeroed_llama, "block", 3, chunks, scores=scores)
    assert order.values == sorted([scores.of(f"L{l}.BLOCK") for l in range(3)], reverse=True)


# ----------------------------------------------------------------------------- ablation, greedy, iterative
def test_divergences_match_textbook_definitions():
    p = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    kl = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)  # KL(P || Q)
    torch.testing.assert_close(divergence(p, q, "kl"), kl)
    m = ((p.exp() + q.exp()) / 2).log()
    js = 0.5 * (p.exp() * (p - m)).sum(-1) + 0.5 * (q.exp() * (q - m)).sum(-1)
    torch.testing.assert_close(divergence(p, q, "js"), js)
    assert torch.all(divergence(p, q, "js") <= math.log(2) + 1e-12)


def test_output_change_matches_a_direct_computation(random_llama, chunks):
    change = output_change(random_llama, chunks, [["L1.MLP"], ["L0.ATTN", "L2.BLOCK"]], "kl", batch_size=2)
    hf = random_llama.hf_model
    with torch.no_grad():
        full = hf(chunks).logits.log_softmax(-1)
        assert change.full_loss == pytest.approx(hf(chunks, labels=chunks).loss.item(), rel=1e-5)
        with dropped(random_llama, ["L0.ATTN", "L2.BLOCK"]):
            pruned = hf(chunks).logits.log_softmax(-1)
            loss = hf(chunks, labels=chunks).loss.item()
    kl = torch.nn.functional.kl_div(pruned, full, log_target=True, reduction="none").sum(-1).mean().item()
    assert change.divergence[1] == pytest.approx(kl, rel=1e-4)
    assert change.loss[1] == pytest.approx(loss, rel=1e-5)
    assert change.n_forward_passes == 2 * 3


def test_greedy_is_finercut_step_by_step(random_llama, chunks):
    order = drop_order(random_llama, "greedy", 2, chunks)
    singles = ablation_scores(random_llama, chunks, [Unit(k, l) for k in ("attn", "mlp") for l in range(3)])
    first = singles.drop_sets[int(np.argmin(singles.divergence))][0]
    assert order.units[0] == first and order.values[0] == pytest.approx(singles.divergence.min())
    rest = [u for u in (Unit(k, l) for k in ("attn", "mlp") for l in range(3)) if u != first]
    pairs = output_change(random_llama, chunks, [[first, u] for u in rest])
    assert order.units[1] == rest[int(np.argmin(pairs.divergence))]


def test_iterative_rescores_after_each_drop(random_llama, chunks):
    order = drop_order(random_llama, "attn_iterative", 2, chunks)
    one_shot = similarity_scores(random_llama, chunks, kinds=("attn",))
    assert order.units[0] == one_shot.units[int(np.argmax(one_shot.cos))]
    again = similarity_scores(random_llama, chunks, kinds=("attn",), already_dropped=order.units[:1])
    assert order.units[0] not in again.units and order.units[1] == again.units[int(np.argmax(again.cos))]


def test_random_order_is_seeded(random_llama, chunks):
    a, b = (drop_order(random_llama, "random", 3, chunks, seed=s).units for s in (1, 1))
    assert a == b and sorted(a) == [Unit("attn", l) for l in range(3)]


@pytest.mark.parametrize("call, message", [
    (lambda m, t: drop_order(m, "attn", 4, t), "cannot drop 4 units with method 'attn': random-llama has 3 candidates"),
    (lambda m, t: drop_order(m, "heads", 1, t), "unknown drop method 'heads'"),
    (lambda m, t: similarity_scores(m, t[:0]), r"calibration text must be token ids \[n_chunks >= 1, length >= 2\], got shape \(0, 12\)"),
    (lambda m, t: output_change(m, t, [["L0.ATTN"]], "hellinger"), "unknown divergence 'hellinger'"),
    (lambda m, t: similarity_scores(m, t, skip_first=12), "skip_first=12 leaves no tokens"),
])
def test_bad_requests_are_one_line(random_llama, chunks, call, message):
    with pytest.raises(DropError, match=message):
        call(random_llama, chunks)


# ----------------------------------------------------------------------------- evaluation and curves
@pytest.fixture(scope="module")
def evaluation(random_llama, chunks):
    return EvaluationSet.build(random_llama, chunks, n_prompts=4, new_tokens=3)


def test_evaluate_matches_hugging_face_loss_and_task_logits(random_llama, chunks, evaluation):
    row = evaluate(random_llama, ["L1.ATTN"], evaluation)
    with dropped(random_llama, ["L1.ATTN"]), torch.no_grad():
        loss = random_llama.hf_model(chunks, labels=chunks).loss.item()
        task = evaluation.tasks["ioi"]
        logits = random_llama.hf_model(task.clean_tokens).logits[:, -1]
    diff = logits.gather(-1, task.answers[:, None])[:, 0] - logits.gather(-1, task.wrong_answers[:, None])[:, 0]
    assert row["loss"] == pytest.approx(loss, rel=1e-5) and row["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert row["ioi_accuracy"] == (diff > 0).float().mean().item()
    assert row["ioi_logit_diff"] == pytest.approx(diff.mean().item(), abs=1e-5)
    assert row["n_attn_dropped"] == 1 and row["n_mlp_dropped"] == 0
    assert row["generation_tokens_per_s"] > 0 and row["forward_tokens_per_s"] > 0


def test_pruning_curves_follow_each_methods_order(random_llama, chunks, evaluation):
    curves = pruning_curves(random_llama, chunks, evaluation, list(DROP_METHODS), 2, seeds=(0, 1), progress=False)
    names = [c["name"] for c in curves["curves"]]
    assert names == ["attn", "mlp", "block", "joint", "attn_iterative", "greedy", "random/seed0", "random/seed1"]
    for curve in curves["curves"]:
        assert [p["dropped"] for p in curve["points"]] == [[], curve["dropped"][:1], curve["dropped"][:2]]
        assert curve["points"][0] is curves["full"]
        k2 = evaluate(random_llama, curve["dropped"][:2], evaluation, measure_speed=False)
        assert curve["points"][2]["perplexity"] == pytest.approx(k2["perplexity"], rel=1e-6)
    block = next(c for c in curves["curves"] if c["name"] == "block")
    assert block["points"][1]["n_attn_dropped"] == block["points"][1]["n_mlp_dropped"] == 1


def test_findings_read_the_scores_and_curves():
    from interp.pruning import findings
    from interp.redundancy import SimilarityScores

    n = 6
    units = [Unit(k, l) for k in ("attn", "mlp", "block") for l in range(n)]
    attn_cos = [0.90, 0.95, 0.97, 0.99, 0.995, 0.999]  # deeper attention is more redundant
    mlp_cos = [0.90, 0.92, 0.93, 0.94, 0.95, 0.96]
    scores = SimilarityScores(units, np.array(attn_cos + mlp_cos + [0.9] * n), np.zeros(3 * n), 10)
    point = lambda ppl: {"perplexity": ppl, "dropped": []}  # noqa: E731
    curves = {"max_k": 2, "curves": [
        {"name": "attn", "method": "attn", "points": [point(10), point(11), point(12)]},
        {"name": "mlp", "method": "mlp", "points": [point(10), point(15), point(30)]},
        {"name": "random/seed0", "method": "random", "points": [point(10), point(13), point(11)]},
        {"name": "random/seed1", "method": "random", "points": [point(10), point(13), point(15)]},
    ]}
    found = findings(scores, curves, n)
    first = found["attention_more_redundant_than_mlp"]
    assert first["holds"] and first["fraction_of_layers_attention_below_mlp"] == pytest.approx(5 / 6)
    deeper = found["redundant_attention_in_deeper_layers"]
    assert deeper["holds"] and deeper["most_redundant_attention_layers"] == [5, 4] and deeper["fraction_in_last_third"] == 1.0
    hurts = found["dropping_similar_attention_hurts_less"]
    assert hurts["random_perplexity"] == [13, 13] and hurts["k_where_attn_beats_random"] == [1, 2]
    assert hurts["k_where_attn_beats_mlp"] == [1, 2] and hurts["holds"]
    curves["curves"][3]["points"][2] = point(11)  # random mean at k=2: 11 < 12, attention no longer beats it
    assert not findings(scores, curves, n)["dropping_similar_attention_hurts_less"]["holds"]
