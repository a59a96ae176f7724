"""tracr-compiled models: the GPT-2 ports reproduce tracr, non-causal attention is honoured
everywhere (both backends, the patching engine), and edge discovery is scored against the
compiled circuit."""

import shutil

import numpy as np
import pytest
import torch

import interp
from circuits.edge_attribution import edge_attribution
from circuits.ground_truth import GroundTruthError, KnownCircuit, acdc_sweep, relative_thresholds
from interp import tasks
from interp.patching import activation_patching
from interp.tasks import TaskError
from interp.toy_models import random_model_dir
from interp.tracr_models import read_metadata

TRACR = ["tracr-reverse", "tracr-frac-prevs"]


@pytest.fixture(scope="module", params=TRACR)
def tracr_model(request):
    return interp.load_model(request.param, backend="transformer_lens")


@pytest.mark.parametrize("name", TRACR)
@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_port_reproduces_tracr_outputs(name, backend):
    """tracr's own outputs, recorded at compile time on 32 inputs, at every position."""
    model = interp.load_model(name, backend=backend)
    metadata = read_metadata(model.source)
    assert model.config.causal == metadata["causal"]
    inputs = [" ".join(ref["input"]) for ref in metadata["reference_outputs"]]
    logits = model.run(model.to_tokens(inputs))[:, 1:]  # BOS's output is not defined
    for row, ref in zip(logits, metadata["reference_outputs"]):
        if metadata["numerical_output"]:
            column = model.tokenizer.convert_tokens_to_ids(metadata["output_tokens"][0])
            np.testing.assert_allclose(row[:, column].numpy(), ref["output"], atol=1e-5)
        else:
            assert model.tokenizer.convert_ids_to_tokens(row.argmax(-1).tolist()) == ref["output"]


def test_reverse_needs_the_bidirectional_mask():
    """The first output of reverse is the last token: a causal mask would hide it."""
    model = interp.load_model("tracr-reverse", backend="transformer_lens")
    tokens = model.to_tokens(["a b c d a", "a b c d b"])
    first_output = model.run(tokens)[:, 1].argmax(-1)
    assert model.tokenizer.convert_ids_to_tokens(first_output.tolist()) == ["a", "b"]


def test_known_circuit_of_frac_prevs_is_the_program():
    """frac_prevs(x): an MLP maps tokens to [token == x]; one head averages it over positions
    selected by index (query and key read positions); the unembedding reads the head."""
    known = KnownCircuit.of(interp.load_model("tracr-frac-prevs", backend="transformer_lens"))
    assert sorted(known.edge_names()) == sorted(
        ["EMBED->L0.MLP", "EMBED->L1.Q0", "EMBED->L1.K0", "L0.MLP->L1.V0", "L1.H0->LOGITS"])


def test_edge_recovery_against_the_compiled_circuit(tracr_model):
    """Every method ranks the true edges that the corruption reaches first (AUC 1 on reachable
    edges); over all edges the AUC is capped by the inert true edges, which tie with the negatives."""
    task = tasks.get_task(tracr_model, "tracr", n_prompts=16)
    known = KnownCircuit.of(tracr_model)
    scored = [edge_attribution(tracr_model, task, method, steps=5, progress=False) for method in ("eap", "eap-ig")]
    report = known.report(tracr_model, task, scored, acdc_sweep(tracr_model, task, relative_thresholds(tracr_model, task, n=4)))
    n_true, n_inert = len(report["true_edges"]), len(report["inert_true_edges"])
    negatives = report["n_edges"]["all"] - n_true
    capped = ((n_true - n_inert) + n_inert * 0.5) / n_true  # inert positives tie with every negative
    for method in ("eap", "eap-ig", "acdc"):
        assert report["auc"][method]["reachable"] == pytest.approx(1.0)
        assert report["auc"][method]["all"] == pytest.approx(capped, abs=0.5 / negatives)
    expected_inert = {"tracr-reverse": 11, "tracr-frac-prevs": 2}[tracr_model.config.name]
    assert n_inert == expected_inert
    if tracr_model.config.name == "tracr-reverse":  # only the value path of the last head sees the tokens
        reachable = set(report["true_edges"]) - set(report["inert_true_edges"])
        assert reachable == {"EMBED->L3.V0", "L3.H0->LOGITS"}


def test_tracr_task_and_ground_truth_need_a_tracr_model(random_llama):
    with pytest.raises(TaskError, match="tracr-compiled model"):
        tasks.get_task(random_llama, "tracr")
    with pytest.raises(GroundTruthError, match="random-llama"):
        KnownCircuit.of(random_llama)


@pytest.fixture(scope="module")
def bidirectional_gpt2(tmp_path_factory):
    """The random GPT-2 with ``is_causal = False`` and its attention sharpened (query/key/value
    weights x 8), so later positions move earlier ones measurably."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("models") / "bidirectional-gpt2"
    shutil.copytree(random_model_dir("gpt2"), folder)
    hf_model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for block in hf_model.transformer.h:
            block.attn.c_attn.weight.mul_(8)
    hf_model.config.is_causal = False
    hf_model.save_pretrained(folder)
    return interp.load_model(str(folder), backend="transformer_lens")


def test_backends_agree_without_causal_mask(bidirectional_gpt2):
    nnsight_model = interp.load_model(bidirectional_gpt2.source, backend="nnsight")
    tokens = bidirectional_gpt2.to_tokens(["When Mary and John went", "Then the cat sat on"])
    ours = bidirectional_gpt2.run(tokens)
    assert torch.allclose(ours, nnsight_model.run(tokens), atol=1e-5)
    changed = tokens.clone()
    changed[:, -1] = tokens[0, 1]
    assert not torch.allclose(bidirectional_gpt2.run(changed)[:, 1], ours[:, 1])  # a later token moved an earlier output


@pytest.mark.parametrize("granularity", ["heads_pos", "resid"])
def test_patching_without_causal_mask_matches_brute_force(bidirectional_gpt2, granularity):
    """The sweep may not reuse earlier positions' keys and values when attention is bidirectional."""
    model = bidirectional_gpt2
    task = tasks.ioi(model, n_prompts=3, seed=0)
    result = activation_patching(model, task, granularity, layers=[0, 1], progress=False)
    _, corrupt = model.run_with_cache(task.corrupt_tokens, result.components)
    for i in np.random.default_rng(0).choice(len(result.components), size=24, replace=False):
        name = result.components[i]
        with model.patch({name: corrupt[name]}):
            logits = model.run(task.clean_tokens)[:, -1]
        expected = interp.metrics.logit_diff(logits, task.answers, task.wrong_answers, None)
        np.testing.assert_allclose(result.arrays["patched_metric"][:, i], expected.numpy(), atol=2e-6, err_msg=name)


def test_compiling_reproduces_the_shipped_checkpoint(tmp_path):
    """scripts/compile_tracr.py is deterministic: a fresh compile gives the shipped weights and metadata."""
    from safetensors.torch import load_file

    from interp.tracr_models import compile_program, tracr_model_dir

    fresh = compile_program("frac-prevs", tmp_path / "tracr-frac-prevs")
    shipped = tracr_model_dir("tracr-frac-prevs")
    ours, theirs = load_file(fresh / "model.safetensors"), load_file(shipped / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert read_metadata(fresh) == read_metadata(shipped)
