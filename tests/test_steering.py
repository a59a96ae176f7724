"""Steering: vectors from contrastive sets, probes and decoder rows; the edits; the coefficient
sweep against the same measurements made by hand; the command and its bad input; and on SmolLM2,
that a sentiment vector moves a sentiment task's logit difference in the intended direction."""

import json

import numpy as np
import pytest
import torch

import interp
from circuits.dictionary import DictionaryConfig, SparseDictionary
from circuits.dictionary_io import save_dictionary
from interp import metrics
from circuits.steering_analysis import SteerConfig, feature_vector, run_steering
from interp.steering import SteeringError, contrast_vector, read_texts, steering_edit, steering_site
from interp.tasks import Task
from interp.ui import cli

POSITIVE = ["I love it", "What a wonderful day it is"]
NEGATIVE = ["I hate it", "What a terrible day"]


def _task(model) -> Task:
    pairs = [{"clean": "The Eiffel Tower is in the city of", "answer": " Paris", "wrong_answer": " Rome"},
             {"clean": "Big Ben is in", "answer": " London", "wrong_answer": " Paris"}]
    return Task.from_pairs(model, "cities", pairs)


def test_contrast_vector_is_the_difference_of_per_text_means(random_llama):
    site = "L1.RESID_PRE"
    means = []
    for texts in (POSITIVE, NEGATIVE):
        per_text = []
        for text in texts:  # one text at a time: no padding at all
            _, cache = random_llama.run_with_cache(random_llama.to_tokens(text), [site])
            per_text.append(cache[site][0].float())
        means.append((torch.stack([a.mean(0) for a in per_text]).mean(0), torch.stack([a[-1] for a in per_text]).mean(0)))
    for k, reduce in enumerate(("mean", "last")):
        vector = contrast_vector(random_llama, POSITIVE, NEGATIVE, site, reduce)
        torch.testing.assert_close(vector, means[0][k] - means[1][k], rtol=1e-4, atol=1e-5)


def test_add_and_project_out_edits(random_llama):
    tokens = random_llama.to_tokens("the cat sat on the mat")
    torch.manual_seed(0)
    vector = torch.randn(random_llama.config.d_model)
    site = "L2.RESID_PRE"
    _, plain = random_llama.run_with_cache(tokens, [site])
    with random_llama.patch({site: steering_edit(vector, 2.5)}):
        _, added = random_llama.run_with_cache(tokens, [site])
    torch.testing.assert_close(added[site], plain[site] + 2.5 * vector)
    with random_llama.patch({site: steering_edit(vector, 1.0, "project_out")}):
        _, removed = random_llama.run_with_cache(tokens, [site])
    unit = vector / vector.norm()
    assert (removed[site] @ unit).abs().max() < 1e-4
    torch.testing.assert_close(removed[site] - plain[site], -(plain[site] @ unit)[..., None] * unit, atol=1e-4, rtol=1e-4)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(SteeringError, match="finite number"):
            steering_edit(vector, bad)


def test_the_sweep_equals_the_measurements_made_by_hand(random_llama):
    task = _task(random_llama)
    config = SteerConfig(site="L1.RESID_PRE", positive="x", negative="y", coefficients=(-3.0, 0.0, 3.0), new_tokens=3,
                         neutral_chunks=2, neutral_length=16, progress=False)
    with pytest.raises(SteeringError, match="--positive 'x' is neither a bundled set"):
        run_steering(random_llama, task, config)
    config = SteerConfig(**{**vars(config), "positive": "sentiment-positive", "negative": "sentiment-negative"})
    result = run_steering(random_llama, task, config)
    vector = contrast_vector(random_llama, read_texts("sentiment-positive", ""), read_texts("sentiment-negative", ""),
                             "L1.RESID_PRE")
    base = metrics.measure(random_llama, task)
    assert result.components == ["-3", "+0", "+3"] and result.scores[1] == 0 and result.arrays["kl_neutral"][1] == 0
    for k, coefficient in enumerate((-3.0, 3.0)):
        with random_llama.patch({"L1.RESID_PRE": lambda x, c=coefficient: x + c * vector}):
            by_hand = metrics.measure(random_llama, task) - base
            text = random_llama.generate_text(read_texts("steering-prompts", ""), 3)
        row = 0 if k == 0 else 2
        assert result.scores[row] == pytest.approx(by_hand.mean().item(), abs=1e-4)
        assert result.extra["steered"][row] == text
        assert result.arrays["kl_neutral"][row] > 0
    assert result.extra["unsteered"] == random_llama.generate_text(read_texts("steering-prompts", ""), 3)
    assert result.extra["vector_norm"] == pytest.approx(float(vector.norm()), rel=1e-4)


def test_vectors_at_several_sites_equal_the_edits_made_by_hand(random_llama):
    """``--site L0.RESID_PRE,L2.MLP@-1``: the contrast vector of each site added there, both under
    one coefficient; a repeated site is one line."""
    task = _task(random_llama)
    config = SteerConfig(site="L0.RESID_PRE, L2.MLP@-1", coefficients=(0.0, 2.0), new_tokens=2, neutral_chunks=2,
                         neutral_length=16, progress=False)
    result = run_steering(random_llama, task, config)
    positive, negative = read_texts("sentiment-positive", ""), read_texts("sentiment-negative", "")
    vectors = [contrast_vector(random_llama, positive, negative, site) for site in ("L0.RESID_PRE", "L2.MLP")]
    base = metrics.measure(random_llama, task)
    last = task.clean_tokens.shape[1] - 1  # L2.MLP@-1: left-padded, the last column is every prompt's last token
    with random_llama.patch({"L0.RESID_PRE": lambda x: x + 2 * vectors[0], f"L2.MLP@{last}": lambda x: x + 2 * vectors[1]}):
        by_hand = metrics.measure(random_llama, task) - base
    with random_llama.patch({"L0.RESID_PRE": lambda x: x + 2 * vectors[0]}):
        first_only = metrics.measure(random_llama, task) - base
    assert result.scores[1] == pytest.approx(by_hand.mean().item(), abs=1e-4)
    assert abs(result.scores[1] - first_only.mean().item()) > 1e-3  # the second site does something
    assert result.settings["site"] == "L0.RESID_PRE,L2.MLP@-1" and result.extra["sites"] == ["L0.RESID_PRE", "L2.MLP@-1"]
    assert result.extra["vector_norms"] == pytest.approx([float(v.norm()) for v in vectors], rel=1e-4)
    assert result.extra["vector_norm"] == result.extra["vector_norms"][0] and len(result.extra["site_norms"]) == 2
    with pytest.raises(SteeringError, match="--site names L0.RESID_PRE twice"):
        run_steering(random_llama, task, SteerConfig(site="L0.RESID_PRE,L0.RESID_PRE", progress=False))


def test_feature_vectors_and_sites(random_llama, tmp_path):
    dictionary = SparseDictionary(DictionaryConfig(d_in=64, d_sae=32, k=4, kind="transcoder", site="L1.MLP",
                                                   model_name=random_llama.config.name))
    save_dictionary(dictionary, tmp_path / "tc")
    vector, site = feature_vector(random_llama, tmp_path / "tc", 7)
    assert site == "L1.MLP" and torch.equal(vector, dictionary.W_dec[7].detach())
    with pytest.raises(SteeringError, match="latent 32 is out of range"):
        feature_vector(random_llama, tmp_path / "tc", 32)
    other = SparseDictionary(DictionaryConfig(d_in=64, d_sae=32, k=4, kind="sae", site="L1.RESID_POST", model_name="gpt2"))
    save_dictionary(other, tmp_path / "other")
    with pytest.raises(SteeringError, match="trained on 'gpt2'"):
        feature_vector(random_llama, tmp_path / "other", 0)
    for bad, message in (("L9.RESID_PRE", "out of range"), ("L1.H3", "cannot steer at L1.H3"), ("L1.MLP@IO", "cannot steer")):
        with pytest.raises(SteeringError, match=message):
            steering_site(random_llama, bad)


def test_the_command_and_its_bad_input(tmp_path, capsys):
    out = tmp_path / "steer"
    base = ["steer", "--model", "random-llama", "--task", "ioi", "--n-prompts", "2", "--new-tokens", "2",
            "--neutral-chunks", "1", "--neutral-length", "8", "--no-progress"]
    assert cli.main(base + ["--coefficients=-1,1", "--ablate", "L0.H1", "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    assert data["analysis"] == "steer" and data["settings"]["ablate"] == ["L0.H1"] and (out / "steer.html").is_file()
    assert "wrote" in capsys.readouterr().out
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for extra, message in ((["--coefficients=nan"], "--coefficients must be finite"),
                           (["--site", "L7.RESID_PRE"], "out of range"),
                           (["--positive", str(empty)], "holds no text"),
                           (["--positive", str(tmp_path / "missing.txt")], "neither a bundled set nor a file"[:20]),
                           (["--clamp", "L1.SAE.3=2"], "--clamp holds latents of a spliced dictionary"),
                           (["--vector", "feature:x"], "needs a latent number"),
                           (["--vector", "probe:" + str(tmp_path)], "not an interp run folder")):
        assert cli.main(base + extra + ["--out", str(tmp_path / "bad")]) == 2, extra
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("interp: error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, (extra, err)


def test_the_default_task_of_the_command_is_sentiment():
    parser = cli.build_parser()
    assert parser.parse_args(["steer"]).task == "sentiment"
    assert parser.parse_args(["lens"]).task == "ioi"


def test_a_sentiment_vector_steers_smollm2_in_the_intended_direction(smollm2):
    task = interp.tasks.get_task(smollm2, "sentiment", n_prompts=16)
    result = run_steering(smollm2, task, SteerConfig(coefficients=(-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0), new_tokens=8,
                                                     progress=False))
    assert result.settings["site"] == "L10.RESID_PRE"
    scores, kl = result.scores, result.arrays["kl_neutral"]
    assert (scores[:3] < -1).all() and (scores[4:] > 1).all() and np.all(np.diff(scores) > 0)  # monotone in the coefficient
    assert kl[3] == 0 and (kl[[0, 1, 2, 4, 5, 6]] > 0).all() and kl[6] > kl[4]
    assert result.extra["steered"][3] == result.extra["unsteered"]
