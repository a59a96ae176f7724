"""Prompts of different lengths in one padded batch: every analysis gives each prompt the numbers
it gives alone (1e-5), with left and right padding, on random models of several families; exact
head patching equals plain PyTorch hooks prompt by prompt; ablations, several-token answers and
named positions go through the same engine.

A prompt "alone" is a one-prompt task: no padding at all. Its position-resolved components are
named from the end (``positions="end"``), as the mixed-length task names them by default.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import interp
from interp import metrics
from interp.ablation import MeanReference
from interp.attribution import attribution_patching, diagnose
from interp.corruption import task_run
from interp.head_scores import attention_patterns
from interp.patching import activation_patching
from interp.task_files import jsonl_rows
from interp.tasks import Task
from interp.toy_models import random_model_dir

PAIRS = [
    {"clean": "The Eiffel Tower is in the city of", "corrupt": "The Colosseum is in the city of", "answer": " Paris",
     "wrong_answer": " Rome"},
    {"clean": "Big Ben is in", "corrupt": "Big Ben was in", "answer": " London", "wrong_answer": " Paris"},
    {"clean": "The Brandenburg Gate stands in the capital of", "corrupt": "The Brandenburg Gate stands in the state of",
     "answer": " Germany", "wrong_answer": " Spain"},
]
LONG_ANSWERS = [
    {"clean": "The Eiffel Tower is in", "corrupt": "The Colosseum is in", "answer": " Paris, France",
     "wrong_answer": " Rome"},
    {"clean": "Big Ben stands in the middle of", "corrupt": "Big Ben stood in the middle of", "answer": " London",
     "wrong_answer": " the Roman Empire"},
]
FAMILIES = ("llama", "gpt2", "gemma2", "qwen3", "phi3", "mixtral")
SIDES = ("left", "right")


@functools.cache
def _model(family: str, backend: str = "nnsight"):
    return interp.load_model(f"random-{family}", backend=backend)


def _tasks(model, pairs=PAIRS, side="left"):
    """The padded task and one task per prompt (no padding)."""
    return (Task.from_pairs(model, "mixed", pairs, padding_side=side),
            [Task.from_pairs(model, f"alone{i}", [pair]) for i, pair in enumerate(pairs)])


def _by_name(result, array: str, row: int) -> dict:
    return dict(zip(result.components, result.arrays[array][row]))


def _assert_per_prompt(mixed, alone, array="patched_metric", scale=(1.0, None), atol=1e-5, rel=1e-5):
    """Each prompt's values in the padded run equal the prompt alone (by component name), within
    ``atol`` or ``rel`` of the value (the mixture-of-experts families' own batched forward differs
    from a lone one by a few 1e-6 relative); a component the prompt lacks is NaN in ``per_prompt``
    and absent alone. ``scale``: multiply mixed / alone values by these (per_prompt arrays are
    normalized by different differences)."""
    mixed_scale, _ = scale
    for i, one in enumerate(alone):
        mine, theirs = _by_name(mixed, array, i), _by_name(one, array, 0)
        one_scale = 1.0 if scale[1] is None else scale[1][i]
        assert set(theirs) <= set(mine)
        for name, value in theirs.items():
            assert mine[name] * mixed_scale == pytest.approx(value * one_scale, abs=atol, rel=rel), (i, name)
        for name in set(mine) - set(theirs):
            assert np.isnan(_by_name(mixed, "per_prompt", i)[name]), (i, name)


# ----------------------------------------------------------------------------- forwards
@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_forward_gives_each_text_its_own_logits(family, backend):
    model = _model(family, backend)
    texts = [pair["clean"] for pair in PAIRS]
    for side in SIDES:
        batch = model.tokenize(texts, side)
        assert batch.mask is not None and batch.mask.sum(1).tolist() == [len(model.to_tokens(t)[0]) for t in texts]
        logits = model.run(batch)
        for i, text in enumerate(texts):
            # Mixtral's experts in a batch: 1.0014e-5 from the text alone on an AVX2 processor
            np.testing.assert_allclose(logits[i][batch.mask[i]], model.run(model.to_tokens(text))[0],
                                       atol=2e-5 if family == "mixtral" else 1e-5, rtol=0)


# ----------------------------------------------------------------------------- exact patching
# the position-resolved head and MLP sweeps on every family; the rest on the families whose
# positions (GPT-2's learned embeddings) or projections (fused q/k/v: GPT-2, Phi-3) differ from Llama's
PADDED_SWEEPS = [(family, granularity) for family in FAMILIES for granularity in ("heads_pos", "mlp_out_pos")] + [
    (family, granularity) for family in ("llama", "gpt2", "phi3") for granularity in ("heads", "resid", "k_pos")]


@pytest.mark.parametrize(("family", "granularity"), PADDED_SWEEPS)
def test_exact_patching_of_a_padded_batch_equals_each_prompt_alone(family, granularity):
    if family == "mixtral" and granularity == "mlp_out_pos":
        granularity = "experts_pos"
    model = _model(family)
    for side in SIDES:
        mixed, alone = _tasks(model, side=side)
        result = activation_patching(model, mixed, granularity, progress=False)
        assert result.settings["positions"] == "end" and result.settings["padding_side"] == side
        _assert_per_prompt(result, [activation_patching(model, one, granularity, positions="end", progress=False)
                                    for one in alone])


def test_left_and_right_padding_give_the_same_result():
    model = _model("llama")
    results = [activation_patching(model, _tasks(model, side=side)[0], "heads_pos", progress=False) for side in SIDES]
    assert results[0].components == results[1].components
    np.testing.assert_allclose(results[0].arrays["per_prompt"], results[1].arrays["per_prompt"], atol=1e-6)
    assert results[0].position_labels[-1].startswith("-1:")


def test_attention_pattern_patching_of_a_padded_batch_equals_each_prompt_alone():
    model = _model("llama", "transformer_lens")  # patterns are edited on TransformerLens' bridge
    for side in SIDES:
        mixed, alone = _tasks(model, side=side)
        result = activation_patching(model, mixed, "pattern", progress=False)
        _assert_per_prompt(result, [activation_patching(model, one, "pattern", progress=False) for one in alone])


def test_several_token_answers_patch_like_each_prompt_alone():
    model = _model("llama")
    for side in SIDES:
        mixed, alone = _tasks(model, LONG_ANSWERS, side)
        assert mixed.multi_token and mixed.n_rows == 4
        for granularity in ("heads", "heads_pos"):
            result = activation_patching(model, mixed, granularity, progress=False)
            _assert_per_prompt(result, [activation_patching(model, one, granularity, positions="end", progress=False)
                                        for one in alone])


@functools.cache
def _plain(family: str):
    return AutoModelForCausalLM.from_pretrained(random_model_dir(family), attn_implementation="eager").eval()


def _plain_head_patch(family: str, clean: list[int], corrupt: list[int], layer: int, head: int, answer: int, wrong: int):
    """The logit difference of ``clean`` with head ``head`` of ``layer`` set to its value on
    ``corrupt``: plain transformers, one prompt, a PyTorch pre-hook on the output projection."""
    hf = _plain(family)
    o_proj = hf.model.layers[layer].self_attn.o_proj
    d_head = hf.config.head_dim
    seen = {}

    def record(module, args):
        seen["z"] = args[0].detach().clone()

    handle = o_proj.register_forward_pre_hook(record)
    with torch.no_grad():
        hf(torch.tensor([corrupt]))
    handle.remove()

    def replace(module, args):
        z = args[0].clone()
        z[..., head * d_head:(head + 1) * d_head] = seen["z"][..., head * d_head:(head + 1) * d_head]
        return (z,)

    handle = o_proj.register_forward_pre_hook(replace)
    with torch.no_grad():
        logits = hf(torch.tensor([clean])).logits[0, -1]
    handle.remove()
    return (logits[answer] - logits[wrong]).item()


def test_exact_head_patching_of_a_mixed_length_task_equals_plain_hooks_prompt_by_prompt():
    model = _model("llama")
    for side in SIDES:
        mixed, _ = _tasks(model, side=side)
        result = activation_patching(model, mixed, "heads", progress=False)
        for j in (0, 5, 11):
            component = interp.Component.parse(result.components[j])
            for i, pair in enumerate(PAIRS):
                clean, corrupt = model.to_tokens(pair["clean"])[0].tolist(), model.to_tokens(pair["corrupt"])[0].tolist()
                expected = _plain_head_patch("llama", clean, corrupt, component.layer, component.index,
                                             model.to_single_token(pair["answer"]), model.to_single_token(pair["wrong_answer"]))
                assert result.arrays["patched_metric"][i, j] == pytest.approx(expected, abs=1e-5), (side, i, component)


# ----------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method, granularity", [("atp", "heads_pos"), ("atp*", "heads"), ("atp*", "k_pos"), ("atp*", "q_pos")])
def test_attribution_of_a_padded_batch_equals_each_prompt_alone(family, method, granularity):
    model = _model(family)
    for side in SIDES:
        mixed, alone = _tasks(model, side=side)
        result = attribution_patching(model, mixed, granularity, method=method, progress=False)
        ones = [attribution_patching(model, one, granularity, method=method, positions="end", progress=False) for one in alone]
        difference = result.corrupt_metric - result.clean_metric
        # Mixtral's padded rows through SDPA and its experts: up to 1.1e-5 relative from the prompt alone
        # (2.04e-5 on an AVX2 processor)
        _assert_per_prompt(result, ones, "per_prompt", (difference, [one.corrupt_metric - one.clean_metric for one in ones]),
                           rel=4e-5 if family == "mixtral" else 1e-5)
        if method == "atp*" and granularity == "heads":  # GradDrop's importance: the mean of each prompt's
            expected = np.mean([one.arrays["importance"] * abs(one.corrupt_metric - one.clean_metric) for one in ones], 0)
            np.testing.assert_allclose(result.arrays["importance"] * abs(difference), expected, atol=1e-5)


def test_the_diagnostic_of_a_padded_batch_averages_each_prompt_alone():
    model = _model("llama")
    for side in SIDES:
        mixed, alone = _tasks(model, side=side)
        result = attribution_patching(model, mixed, "heads", method="atp", progress=False)
        diagnose(model, mixed, result, samples=12, p=0.3, progress=False)
        ones = []
        for one in alone:
            single = attribution_patching(model, one, "heads", method="atp", progress=False)
            diagnose(model, one, single, samples=12, p=0.3, progress=False)
            ones.append(single.arrays["diagnostic_effects"])
        np.testing.assert_allclose(result.arrays["diagnostic_effects"], np.mean(ones, 0), atol=1e-5)


# ----------------------------------------------------------------------------- edges
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3"])
def test_edge_scores_and_patched_edges_of_a_padded_batch_equal_each_prompt_alone(family):
    from circuits.edge_attribution import edge_attribution
    from circuits.edge_graph import EdgeGraph
    from circuits.edge_patching import patched_metrics

    model = _model(family)
    graph = EdgeGraph(model.config)
    rng = np.random.default_rng(0)
    masks = [graph.valid & (rng.random(graph.valid.shape) < 0.5) for _ in range(2)]
    for side in SIDES:
        mixed, alone = _tasks(model, side=side)
        for method in ("eap", "eap-ig"):
            scores = edge_attribution(model, mixed, method, steps=3, progress=False)
            ones = [edge_attribution(model, one, method, steps=3, progress=False).scores for one in alone]
            np.testing.assert_allclose(scores.scores, np.mean(ones, 0), atol=1e-5)
        values = patched_metrics(model, mixed, scores.settings, masks, progress=False, per_prompt=True)
        for i, one in enumerate(alone):
            np.testing.assert_allclose(values[:, i], patched_metrics(model, one, scores.settings, masks, progress=False,
                                                                     per_prompt=True)[:, 0], atol=1e-5)


# ----------------------------------------------------------------------------- the other analyses
def test_probe_activations_of_padded_prompts_are_each_prompts_own():
    from probes.activations import residual_activations
    from probes.dataset import ProbeDataset

    model = _model("llama")
    mixed, _ = _tasks(model)
    data = ProbeDataset.from_task(mixed)
    activations = residual_activations(model, data.tokens, data.positions, mask=data.mask)
    texts = [pair["clean"] for pair in PAIRS] + [pair["corrupt"] for pair in PAIRS]
    for i, text in enumerate(texts):  # clean prompts first, then corrupt ones, each read at its last token
        tokens = model.to_tokens(text)
        expected = residual_activations(model, tokens, torch.tensor([tokens.shape[1] - 1]))
        np.testing.assert_allclose(activations[:, i], expected[:, 0], atol=1e-5)


def test_attention_patterns_of_a_padded_batch_are_each_texts_own_with_zero_padding():
    model = _model("gemma2")
    texts = [pair["clean"] for pair in PAIRS]
    for side in SIDES:
        batch = model.tokenize(texts, side)
        patterns = attention_patterns(model, batch)  # [layers, batch, heads, q, k]
        for i, text in enumerate(texts):
            real = batch.mask[i]
            own = attention_patterns(model, model.to_tokens(text))[:, 0]
            np.testing.assert_allclose(patterns[:, i][..., real, :][..., real], own, atol=1e-5)
            assert patterns[:, i][..., ~real, :].abs().sum() == 0 and patterns[:, i][..., ~real].abs().sum() == 0


def test_task_metrics_of_layer_dropping_are_each_prompts_own():
    """``metrics.measure``, which layer dropping's task accuracy reads."""
    model = _model("llama")
    for pairs in (PAIRS, LONG_ANSWERS):
        mixed, alone = _tasks(model, pairs, "right")
        for prompts in ("clean", "corrupt"):
            np.testing.assert_allclose(metrics.measure(model, mixed, prompts=prompts).numpy(),
                                       [metrics.measure(model, one, prompts=prompts).item() for one in alone], atol=1e-5)


def test_dictionary_activations_leave_padding_out():
    from circuits.activation_store import read_pairs

    model = _model("llama")
    texts = [pair["clean"] for pair in PAIRS]
    for kind, site in (("sae", "L1.RESID_POST"), ("transcoder", "L1.MLP")):
        batch = model.tokenize(texts, "left")
        x, y = read_pairs(model, site, kind, batch.ids, mask=batch.mask)
        own = [read_pairs(model, site, kind, model.to_tokens(t)) for t in texts]
        np.testing.assert_allclose(x, torch.cat([o[0] for o in own]), atol=1e-5)
        np.testing.assert_allclose(y, torch.cat([o[1] for o in own]), atol=1e-5)


# ----------------------------------------------------------------------------- ablations
@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablations_of_a_padded_batch_equal_each_prompt_alone(kind):
    model = _model("llama")
    reference = MeanReference.of_task(Task.from_pairs(model, "reference", LONG_ANSWERS + PAIRS)) if kind == "mean" else None
    for side in SIDES:
        mixed, alone = _tasks(model, side=side)
        result = activation_patching(model, mixed, "heads", corruption=kind, reference=reference, progress=False)
        ones = [activation_patching(model, one, "heads", corruption=kind, reference=reference, progress=False) for one in alone]
        _assert_per_prompt(result, ones)
        # the fully ablated run is each prompt's own
        np.testing.assert_allclose(result.arrays["corrupt_metric"], [one.corrupt_metric for one in ones], atol=1e-5)


def test_ablations_equal_brute_force_with_model_patch():
    """Zero, mean (over the task's own prompts) and resample ablation of each head through the
    sweep, against Model.patch with the ablated value written in by hand (equal-length prompts)."""
    from interp.ablation import derangement

    model = _model("llama")
    task = interp.tasks.ioi(model, n_prompts=3, seed=1)
    names = [f"L{layer}.H{head}" for layer in range(3) for head in range(4)]
    _, clean = model.run_with_cache(task.clean_tokens, names)
    for kind in ("zero", "mean", "resample"):
        reference = MeanReference.of_task(task) if kind == "mean" else None
        result = activation_patching(model, task, "heads", corruption=kind, reference=reference, progress=False)
        for i, name in enumerate(result.components):
            act = clean[name]
            value = {"zero": torch.zeros_like(act), "mean": act.mean(0, keepdim=True).expand_as(act),
                     "resample": act[derangement(len(task), 0)]}[kind]
            with model.patch({name: value}):
                logits = model.run(task.clean_tokens)[:, -1]
            expected = metrics.logit_diff(logits, task.answers, task.wrong_answers, None)
            np.testing.assert_allclose(result.arrays["patched_metric"][:, i], expected, atol=1e-5, err_msg=f"{kind} {name}")


def test_resample_ablation_is_seeded_and_never_keeps_a_prompts_own_activation():
    from interp.ablation import derangement

    order = derangement(5, seed=3)
    assert torch.equal(order, derangement(5, seed=3)) and (order != torch.arange(5)).all()
    model = _model("llama")
    left, right = (activation_patching(model, _tasks(model, side=side)[0], "heads", corruption="resample", seed=2,
                                       progress=False) for side in SIDES)
    np.testing.assert_allclose(left.arrays["patched_metric"], right.arrays["patched_metric"], atol=1e-5)


def test_ablations_go_through_atp_and_eap_ig():
    from circuits.edge_attribution import edge_attribution

    model = _model("llama")
    mixed, _ = _tasks(model)
    exact = activation_patching(model, mixed, "heads", corruption="zero", progress=False)
    estimate = attribution_patching(model, mixed, "heads", method="atp*", corruption="zero", progress=False)
    assert estimate.corrupt_metric == pytest.approx(exact.corrupt_metric, abs=1e-5)
    assert np.corrcoef(estimate.scores, exact.scores)[0, 1] > 0.9
    edges = edge_attribution(model, mixed, "eap-ig", corruption="zero", progress=False)
    assert edges.source_metric != pytest.approx(edges.target_metric)  # the fully ablated run is the source


# ----------------------------------------------------------------------------- named positions
def test_named_positions_of_ioi_read_the_named_tokens():
    model = _model("llama")
    task = interp.tasks.ioi(model, n_prompts=4, seed=0)
    frame = task.frame("named")
    assert frame.slots == ("S1", "IO", "S2", "END")
    for i, prompt in enumerate(task.clean_prompts):
        tokens = model.to_str_tokens(task.clean_tokens[i])
        io, s = task.answers[i].item(), task.wrong_answers[i].item()
        assert task.clean_tokens[i, frame.rows("IO")[i]] == io
        assert task.clean_tokens[i, frame.rows("S1")[i]] == s and task.clean_tokens[i, frame.rows("S2")[i]] == s
        assert frame.rows("END")[i] == len(tokens) - 1
    named = activation_patching(model, task, "heads_pos", positions="named", progress=False)
    start = activation_patching(model, task, "heads_pos", progress=False)
    assert named.position_labels == ["S1", "IO", "S2", "END"] and named.shape[-1] == 4
    s2 = int(frame.rows("S2")[0])  # the same token in every prompt of this template
    assert (frame.rows("S2") == s2).all()
    np.testing.assert_allclose(named.grid()[..., 2], start.grid()[..., s2], atol=1e-6)


def test_the_built_in_tasks_keep_their_prompts():
    """IOI, capitals and greater-than became templates; their seeded draws are the old ones."""
    import random

    model = _model("llama")
    rng = random.Random(5)
    from interp.templates import _NAMES, _OBJECTS, _PLACES

    expected = []
    for _ in range(4):
        io, s = rng.sample(_NAMES, 2)
        place, obj = rng.choice(_PLACES), rng.choice(_OBJECTS)
        first = (io, s) if rng.random() < 0.5 else (s, io)
        expected.append("When{} and{} went to the{},{} gave a{} to".format(*first, place, s, obj))
    assert interp.tasks.ioi(model, n_prompts=4, seed=5).clean_prompts == expected
    rng = random.Random(2)
    years = [rng.randint(22, 78) for _ in range(3)]
    assert interp.tasks.greater_than(model, n_prompts=3, seed=2).clean_prompts == [
        f"The war lasted from the year 17{yy:02d} to the year 17" for yy in years]


def test_a_task_run_reads_each_prompts_last_token():
    model = _model("llama")
    for side in SIDES:
        mixed, alone = _tasks(model, side=side)
        metric_of, _ = metrics.task_metric("logit_diff", model, mixed)
        with torch.no_grad():
            values = metric_of(model.forward(task_run(mixed).spec()).logits)
        expected = [metrics.logit_diff(model.run(one.clean_tokens)[:, -1], one.answers, one.wrong_answers, None).item()
                    for one in alone]
        np.testing.assert_allclose(values.numpy(), expected, atol=1e-5)


# ----------------------------------------------------------------------------- SmolLM2
def test_smollm2_padded_patching_and_atp_star_equal_each_prompt_alone(smollm2_nnsight):
    """To 1e-5 in normalized units (1 = the task's whole clean-vs-corrupt difference, about 13
    here): a padded row's logits differ from the prompt alone by up to 3e-5 on logits of about 20,
    float32 rounding of attention over a wider row (a batch of unpadded copies is bit-identical)."""
    model = smollm2_nnsight
    pairs = [row for _, row in jsonl_rows(interp.tasks.LANDMARKS)][:3]
    layers = [0, 29]
    for side in SIDES:
        mixed, alone = _tasks(model, pairs, side)
        assert len({len(p) for p in mixed.prompt_ids}) > 1
        exact = activation_patching(model, mixed, "heads_pos", layers=layers, progress=False)
        unit = abs(exact.corrupt_metric - exact.clean_metric)
        assert unit > 5
        _assert_per_prompt(exact, [activation_patching(model, one, "heads_pos", layers=layers, positions="end", progress=False)
                                   for one in alone], atol=1e-5 * unit, rel=0)
        estimate = attribution_patching(model, mixed, "heads", method="atp*", progress=False)
        ones = [attribution_patching(model, one, "heads", method="atp*", progress=False) for one in alone]
        difference = estimate.corrupt_metric - estimate.clean_metric
        _assert_per_prompt(estimate, ones, "per_prompt", (difference, [one.corrupt_metric - one.clean_metric for one in ones]),
                           atol=1e-5 * unit, rel=0)


def test_smollm2_atp_star_recovers_the_exact_top_heads_of_a_mixed_length_task(smollm2_nnsight):
    """The 16 landmark pairs (6 to 16 tokens): every one of exact patching's top-10 heads is in
    AtP*'s top 20."""
    task = interp.tasks.landmarks(smollm2_nnsight)
    assert len({len(p) for p in task.prompt_ids}) >= 5
    exact = activation_patching(smollm2_nnsight, task, "heads", progress=False)
    estimate = attribution_patching(smollm2_nnsight, task, "heads", method="atp*", progress=False)
    top10 = set(np.argsort(-np.abs(exact.scores), kind="stable")[:10].tolist())
    assert top10 <= set(estimate.ranking()[:20].tolist())
    assert exact.clean_metric > 3 and exact.corrupt_metric < -3


def test_a_release_that_pads_wrongly_is_caught_at_load_and_padded_runs_are_refused(monkeypatch):
    """Position ids that ignore the mask (as a release that mishandled it would give) shift a
    left-padded row's learned position embeddings (GPT-2's; rotary attention only sees relative
    positions, so a shift changes nothing there); the load-time check says so, and padded runs stop."""
    from interp import hf_compat
    from interp.backends import base
    from interp.batch import PaddingError

    model = interp.load_model("random-gpt2")
    assert model.padding_problem is None
    monkeypatch.setattr(base, "position_ids", lambda mask: torch.arange(mask.shape[1]).expand(mask.shape[0], -1))
    problem = hf_compat.check_padding(model)
    assert problem.startswith("random-gpt2 on the nnsight backend: a left-padded row's logits differ") and "transformers" in problem
    model.padding_problem = problem
    mixed, _ = _tasks(model)
    with pytest.raises(PaddingError, match="^random-gpt2 on the nnsight backend: a left-padded row"):
        activation_patching(model, mixed, "heads", progress=False)
    model.run(model.to_tokens(PAIRS[0]["clean"]))  # unpadded runs still work
