"""Activation patching: cross-checked against TransformerLens' own patching functions,
brute force through ``Model.patch``, and known ground truth."""

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

import interp
from interp import tasks
from interp.patching import activation_patching

# our granularity -> (TransformerLens function, permutation of TL's axes into ours)
TL_ORACLES = {
    "resid": (tl_patching.get_act_patch_resid_pre, None),
    "heads": (tl_patching.get_act_patch_attn_head_out_all_pos, None),
    "heads_pos": (tl_patching.get_act_patch_attn_head_out_by_pos, (0, 2, 1)),
    "block": (tl_patching.get_act_patch_block_every, None),
}


def _mean_patched(result):
    return torch.tensor(result.arrays["patched_metric"]).mean(0).reshape(result.shape)


def _tl_metric(task):
    """Mean logit difference at the last position: the scalar metric TransformerLens' sweeps take."""
    return lambda logits: interp.metrics.logit_diff(logits[:, -1], task.answers, task.wrong_answers, None).mean()


def _tl_reference(model, task, granularity):
    function, permutation = TL_ORACLES[granularity]
    bridge = model.backend.bridge
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(task.clean_tokens)
        reference = function(bridge, task.corrupt_tokens, clean_cache, _tl_metric(task))
    return reference.permute(*permutation) if permutation else reference


@pytest.mark.parametrize("granularity", list(TL_ORACLES))
def test_matches_transformer_lens_on_random_llama(random_llama, llama_ioi, granularity):
    result = activation_patching(random_llama, llama_ioi, granularity, direction="denoising", progress=False)
    reference = _tl_reference(random_llama, llama_ioi, granularity)
    assert _mean_patched(result).shape == reference.shape
    assert torch.allclose(_mean_patched(result), reference.float(), atol=1e-4)


@pytest.mark.slow
def test_matches_transformer_lens_on_smollm2(smollm2):
    task = tasks.capitals(smollm2, n_prompts=2, seed=0)
    result = activation_patching(smollm2, task, "heads", direction="denoising", progress=False)
    reference = _tl_reference(smollm2, task, "heads")
    assert torch.allclose(_mean_patched(result), reference.float(), atol=1e-4)


@pytest.mark.slow
def test_block_matches_transformer_lens_on_smollm2_layers(smollm2):
    """The three sweeps TransformerLens' ``get_act_patch_block_every`` stacks (resid_pre, attn_out,
    mlp_out by layer x position), through its generic sweep with an explicit index on three layers
    (the whole model costs one forward per cell: 45 s here)."""
    task = tasks.capitals(smollm2, n_prompts=2, seed=0)
    layers = [0, 14, 29]
    result = activation_patching(smollm2, task, "block", layers=layers, direction="denoising", progress=False)
    index = pd.DataFrame([(l, p) for l in layers for p in range(task.n_positions)], columns=["layer", "pos"])
    bridge = smollm2.backend.bridge
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(task.clean_tokens)
        reference = torch.stack([tl_patching.generic_activation_patch(
            bridge, task.corrupt_tokens, clean_cache, _tl_metric(task), tl_patching.layer_pos_patch_setter, kind,
            index_df=index).view(len(layers), task.n_positions) for kind in ("resid_pre", "attn_out", "mlp_out")])
    assert _mean_patched(result).shape == reference.shape
    assert torch.allclose(_mean_patched(result), reference.float(), atol=1e-4)
    assert reference.abs().max() > 1


@pytest.mark.slow
def test_heads_by_position_matches_transformer_lens_on_smollm2_layers(smollm2):
    """TransformerLens' by-position head patching on three layers of SmolLM2 (its generic sweep
    with an explicit index, since the full sweep costs one forward per cell)."""
    task = tasks.capitals(smollm2, n_prompts=2, seed=0)
    layers = [0, 14, 29]
    result = activation_patching(smollm2, task, "heads_pos", layers=layers, direction="denoising", progress=False)
    n_heads, n_positions = smollm2.config.n_heads, task.n_positions
    index = pd.DataFrame([(l, p, h) for l in layers for h in range(n_heads) for p in range(n_positions)],
                         columns=["layer", "pos", "head"])
    bridge = smollm2.backend.bridge
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(task.clean_tokens)
        reference = tl_patching.generic_activation_patch(
            bridge, task.corrupt_tokens, clean_cache, _tl_metric(task), tl_patching.layer_pos_head_vector_patch_setter,
            "z", index_df=index)
    ours = torch.tensor(result.arrays["patched_metric"]).mean(0)
    assert torch.allclose(ours, reference.float(), atol=1e-4)


@pytest.mark.parametrize("granularity", ["heads_pos", "resid"])
def test_full_forwards_give_the_shortcut_numbers(granularity):
    """``model.full_forwards`` (what a remote model sets): every patched forward runs from the first
    layer and position, nothing recorded is replayed; the numbers are the resumed sweep's, and the
    diagnostic's too."""
    from interp.attribution import attribution_patching, diagnose

    model = interp.load_model("random-llama")
    task = tasks.ioi(model, n_prompts=4, seed=1)
    results = []
    for full in (False, True):
        model.full_forwards = full
        exact = activation_patching(model, task, granularity, progress=False)
        star = attribution_patching(model, task, granularity, progress=False)
        diagnose(model, task, star, samples=8, seed=0)
        results.append((exact, star.extra["diagnostic"]))
    (shortcut, shortcut_bound), (full, full_bound) = results
    np.testing.assert_allclose(full.scores, shortcut.scores, atol=1e-5)
    assert abs(full.scores).max() > 0.05
    assert full.extra["forward_equivalents"] > shortcut.extra["forward_equivalents"]
    assert full_bound["bound"] == pytest.approx(shortcut_bound["bound"], abs=1e-5)


@pytest.mark.parametrize("granularity", ["heads_pos", "k_pos", "neurons", "pattern", "mlp_out_pos"])
def test_matches_brute_force_noising(random_llama, llama_ioi, granularity):
    """Every component, patched alone through Model.patch, gives the sweep's number."""
    layers = [1] if granularity == "neurons" else None
    result = activation_patching(random_llama, llama_ioi, granularity, layers=layers, progress=False, batch_size=7)
    _, corrupt = random_llama.run_with_cache(llama_ioi.corrupt_tokens, result.components)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(result.components), size=min(12, len(result.components)), replace=False):
        name = result.components[i]
        with random_llama.patch({name: corrupt[name]}):
            logits = random_llama.run(llama_ioi.clean_tokens)[:, -1]
        expected = interp.metrics.logit_diff(logits, llama_ioi.answers, llama_ioi.wrong_answers, None)
        np.testing.assert_allclose(result.arrays["patched_metric"][:, i], expected.numpy(), atol=1e-4, err_msg=name)


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_patching_the_only_differing_token_is_the_whole_effect(random_llama, llama_ioi, direction):
    """Clean and corrupt IOI prompts differ in one token: patching the residual stream entering
    layer 0 there turns one run into the other exactly."""
    result = activation_patching(random_llama, llama_ioi, "resid", direction=direction, progress=False)
    position = int(llama_ioi.subject_positions[0].nonzero()[0])
    grid = result.grid()
    assert grid[0, position] == pytest.approx(1.0, abs=1e-4)
    assert np.abs(np.delete(grid[0], position)).max() < 1e-5  # other positions of layer 0 are identical


def test_whole_layer0_residual_reproduces_clean_logits(random_llama, llama_ioi):
    _, clean = random_llama.run_with_cache(llama_ioi.clean_tokens, ["L0.RESID_PRE"])
    with random_llama.patch({"L0.RESID_PRE": clean["L0.RESID_PRE"]}):
        patched = random_llama.run(llama_ioi.corrupt_tokens)
    assert torch.equal(patched, random_llama.run(llama_ioi.clean_tokens))


def test_batch_size_and_backend_do_not_change_results(random_llama, llama_ioi):
    reference = activation_patching(random_llama, llama_ioi, "heads_pos", progress=False)
    one_at_a_time = activation_patching(random_llama, llama_ioi, "heads_pos", batch_size=1, progress=False)
    np.testing.assert_allclose(reference.scores, one_at_a_time.scores, atol=1e-5)
    nnsight_model = interp.load_model("random-llama", backend="nnsight")
    via_nnsight = activation_patching(nnsight_model, llama_ioi, "heads_pos", progress=False)
    np.testing.assert_allclose(reference.scores, via_nnsight.scores, atol=1e-4)
    assert reference.n_forward_passes < len(reference.components)


def test_gaussian_corruption_is_seeded_and_noising_moves_towards_corrupt(random_llama, llama_ioi):
    a = activation_patching(random_llama, llama_ioi, "resid", corruption="gaussian", seed=3, progress=False)
    b = activation_patching(random_llama, llama_ioi, "resid", corruption="gaussian", seed=3, progress=False)
    np.testing.assert_array_equal(a.scores, b.scores)
    position = int(llama_ioi.subject_positions[0].nonzero()[0])
    assert a.grid()[0, position] == pytest.approx(1.0, abs=1e-4)  # the noised token carries all of it
    denoise = activation_patching(random_llama, llama_ioi, "resid", corruption="gaussian", direction="denoising", seed=3, progress=False)
    assert denoise.grid()[0, position] == pytest.approx(1.0, abs=1e-4)


def test_toy_induction_ranks_an_induction_head_first(toy_induction):
    task = tasks.induction(toy_induction, n_prompts=8, seed=0, half_length=12)
    result = activation_patching(toy_induction, task, "heads", progress=False)
    top_name, top_score = result.top(1)[0]
    assert top_name.startswith("L1.H") and top_score > 0.1
    assert result.clean_metric > 2 and result.corrupt_metric < -2


def test_metrics_kl_and_prob_run(random_llama, llama_ioi):
    kl = activation_patching(random_llama, llama_ioi, "attn_out", metric="kl", progress=False)
    assert kl.clean_metric == pytest.approx(0.0, abs=1e-6) and kl.corrupt_metric > 0
    prob = activation_patching(random_llama, llama_ioi, "mlp_out", metric="prob", progress=False)
    assert len(prob.scores) == random_llama.config.n_layers


@pytest.mark.parametrize("kwargs, message", [
    ({"granularity": "bogus"}, "unknown granularity 'bogus'"),
    ({"direction": "sideways"}, "unknown direction 'sideways'"),
    ({"metric": "accuracy"}, "unknown metric 'accuracy'"),
    ({"corruption": "blur"}, "unknown corruption 'blur'"),
    ({"layers": [7]}, "layer 7 is out of range"),
])
def test_bad_arguments(random_llama, llama_ioi, kwargs, message):
    kwargs = {"granularity": "heads", **kwargs}
    with pytest.raises(ValueError, match=message):
        activation_patching(random_llama, llama_ioi, progress=False, **kwargs)


def test_vocabulary_mismatch(toy_induction, llama_ioi):
    with pytest.raises(ValueError, match="beyond the vocabulary of toy-induction"):
        activation_patching(toy_induction, llama_ioi, "heads", progress=False)


@pytest.mark.parametrize("corruption", ["tokens", "gaussian"])
def test_positions_before_the_first_difference_cost_no_forward(random_llama, llama_ioi, corruption):
    """IOI prompts differ only at the second name: every head at an earlier position has the
    same activation in both runs, so the sweep records the target metric there without running."""
    first = int(llama_ioi.subject_positions[0].nonzero()[0])
    assert (llama_ioi.subject_positions.int().argmax(1) == first).all()
    result = activation_patching(random_llama, llama_ioi, "heads_pos", corruption=corruption, progress=False)
    c = random_llama.config
    assert result.extra["first_differing_position"] == first
    assert result.extra["unchanged_components"] == c.n_layers * c.n_heads * first
    grid = result.grid()  # [layer, head, position]
    assert np.abs(grid[:, :, :first]).max() == 0.0
    assert np.abs(grid[:, :, first:]).max() > 1e-3


def test_a_wrong_resume_is_caught_by_the_unpatched_check_variant(random_llama, llama_ioi, monkeypatch):
    """Every group of patched runs carries one unpatched variant through the same shortcut; a
    resume that replays the wrong residual stream must fail loudly, not return numbers."""
    from interp import patching

    real = patching.Resume

    def wrong(layer, position, resid, past_key_values=None):
        return real(layer, position, None if resid is None else resid * 1.01, past_key_values)
    monkeypatch.setattr(patching, "Resume", wrong)
    with pytest.raises(patching.ResumeCheckError, match="a run resumed at layer 1 from position .* gives the metric"):
        activation_patching(random_llama, llama_ioi, "heads", progress=False)
