"""Latents and error terms of spliced dictionaries as components: names, exact patching against
brute force, AtP identities, and the CLI."""

import json

import numpy as np
import pytest
import torch

import interp
from circuits.dictionary import DictionaryConfig, DictionaryError, SparseDictionary
from circuits.dictionary_evaluation import spliced
from circuits.dictionary_io import save_dictionary
from interp.attribution import attribution_patching
from interp.ui.cli import main
from interp.components import Component, ComponentError, Site
from interp.patching import activation_patching
from interp.sublayers import Sublayers


def _dictionary(kind: str, site: str, d_sae: int = 96, k: int = 8) -> SparseDictionary:
    torch.manual_seed(1)
    return SparseDictionary(DictionaryConfig(d_in=64, d_sae=d_sae, k=k, kind=kind, site=site,
                                             model_name="random-llama")).eval()


def _logit_diff(model, task, tokens) -> np.ndarray:
    logits = model.run(tokens)[:, -1]
    return interp.metrics.logit_diff(logits, task.answers, task.wrong_answers, None).numpy()


def test_names_round_trip_and_exist_only_while_spliced(random_llama):
    for text in ("L1.TC.95", "L1.SAE.3@-1", "L1.TC_ERR@4", "L0.SAE_ERR"):
        assert str(Component.parse(text)) == text
    assert Component.parse("l1.tc.7@2") == Component("tc", 1, 7, 2)
    with pytest.raises(ComponentError, match="no transcoder is spliced in at layer 1 \\(spliced: none\\)"):
        random_llama.validate("L1.TC.3")
    with spliced(random_llama, _dictionary("transcoder", "L1.MLP"), error_term=True):
        assert random_llama.validate("L1.TC.95@3") == Component("tc", 1, 95, 3)
        with pytest.raises(ComponentError, match="L1.TC.96 is out of range: the dictionary has 96 latents"):
            random_llama.validate("L1.TC.96")
        with pytest.raises(ComponentError, match="no SAE is spliced in at layer 1 \\(spliced: TC at L1\\)"):
            random_llama.validate("L1.SAE_ERR")
        with pytest.raises(ComponentError, match="already spliced in as L1.TC"):
            with spliced(random_llama, _dictionary("transcoder", "L1.MLP")):
                pass
    with pytest.raises(ComponentError, match="none is spliced in"):
        activation_patching(random_llama, interp.tasks.ioi(random_llama, n_prompts=2), "features", progress=False)
    with pytest.raises(DictionaryError, match="a dictionary replaces a whole activation .* not L1.H0"):
        with spliced(random_llama, _dictionary("sae", "L1.RESID_POST"), site="L1.H0"):
            pass
    with spliced(random_llama, _dictionary("transcoder", "L1.MLP", d_sae=96)):
        with spliced(random_llama, _dictionary("sae", "L0.ATTN", d_sae=128)):
            with pytest.raises(ComponentError, match="needs dictionaries of one width, got \\[96, 128\\]"):
                activation_patching(random_llama, interp.tasks.ioi(random_llama, n_prompts=2), "features",
                                    progress=False)


def test_reading_and_editing_latents_is_decoding_them(random_llama, llama_ioi):
    """Reads at L1.TC are the transcoder's latents of the MLP input; zeroing one latent moves the
    MLP output by exactly minus its decoder row times its activation."""
    model, tokens = random_llama, llama_ioi.clean_tokens
    dictionary = _dictionary("transcoder", "L1.MLP")
    with spliced(model, dictionary, error_term=True):
        _, cache = model.run_with_cache(tokens, ["L1.TC.0", "L1.TC_ERR", "L1.MLP", "L1.RESID_MID"])
        normalized = Sublayers(model).mlp_normalized_input(1, cache["L1.RESID_MID"])
        latents = cache[Site("tc", 1)]
        torch.testing.assert_close(latents, dictionary.encode(normalized.float()), atol=1e-5, rtol=1e-5)
        reconstruction = dictionary.decode(latents)
        torch.testing.assert_close(reconstruction + cache["L1.TC_ERR"], cache["L1.MLP"], atol=1e-5, rtol=1e-5)
        i = int(latents[0, -1].argmax())
        with model.patch({f"L1.TC.{i}@-1": lambda value: torch.zeros_like(value)}):
            _, edited = model.run_with_cache(tokens, ["L1.MLP"])
    moved = edited["L1.MLP"][:, -1] - cache["L1.MLP"][:, -1]
    expected = -latents[:, -1, i, None] * dictionary.W_dec[i]
    torch.testing.assert_close(moved, expected.detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind,site,error_term", [("transcoder", "L1.MLP", True), ("sae", "L2.RESID_PRE", False),
                                                  ("sae", "L0.ATTN", True)])
def test_exact_feature_patching_matches_brute_force(random_llama, llama_ioi, kind, site, error_term):
    """Every latent (x position), patched alone through Model.patch, gives the sweep's number;
    latents equal in both runs cost no forward. The RESID_PRE SAE without error term checks that a
    patched run does not resume from an already-spliced residual stream (which splices twice)."""
    model, task = random_llama, llama_ioi
    with spliced(model, _dictionary(kind, site), error_term=error_term):
        result = activation_patching(model, task, "features_pos", progress=False, batch_size=11)
        _, corrupt = model.run_with_cache(task.corrupt_tokens, result.components[:1])
        patched = result.arrays["patched_metric"]
        skipped = np.all(patched == result.arrays["clean_metric"][:, None], axis=0)  # noising: the target is clean
        assert result.extra["identical_components"] > 0
        assert skipped.sum() == result.extra["unchanged_components"]
        rng = np.random.default_rng(0)
        live = np.flatnonzero(~skipped)
        assert len(live) > 20
        for i in list(rng.choice(live, size=8, replace=False)) + list(rng.choice(np.flatnonzero(skipped), size=4)):
            name = result.components[i]
            with model.patch({name: corrupt[name]}):
                expected = _logit_diff(model, task, task.clean_tokens)
            np.testing.assert_allclose(patched[:, i], expected, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("kind,site,prefix", [("transcoder", "L1.MLP", "L1.TC"), ("sae", "L1.ATTN", "L1.SAE")])
def test_atp_over_latents_and_error_adds_up_to_the_replaced_output(random_llama, llama_ioi, kind, site, prefix):
    """The replaced output is decode(latents) + error, linear in both: AtP of all latents at a
    position plus AtP of the error term there is AtP of the output itself, for every position."""
    model, task = random_llama, llama_ioi
    n = task.n_positions
    with spliced(model, _dictionary(kind, site), error_term=True):
        latents = attribution_patching(model, task, "features_pos", method="atp", progress=False)
        outputs = attribution_patching(model, task, method="atp", progress=False,
                                       components=[f"{site}@{p}" for p in range(n)] + [f"{prefix}_ERR@{p}" for p in range(n)])
    by_position = latents.grid()[0].sum(0)  # [position]
    assert np.abs(outputs.scores[:n]).max() > 1e-2  # the identity is not 0 = 0
    np.testing.assert_allclose(by_position + outputs.scores[n:], outputs.scores[:n], atol=1e-4)
    assert np.abs(latents.scores).max() > 1e-2


def test_atp_refuses_latents_of_a_residual_stream_dictionary(random_llama, llama_ioi):
    with spliced(random_llama, _dictionary("sae", "L1.RESID_POST"), error_term=True):
        with pytest.raises(ValueError, match="L1.SAE.0 belongs to one spliced at .*resid_post.*use exact patching"):
            attribution_patching(random_llama, llama_ioi, components=["L1.SAE.0"], progress=False)


def test_cli_patches_the_latents_of_a_dictionary_folder(tmp_path, capsys):
    save_dictionary(_dictionary("transcoder", "L1.MLP"), tmp_path / "tc")
    out = tmp_path / "run"
    code = main(["patch", "--model", "random-llama", "--n-prompts", "4", "--dictionary", str(tmp_path / "tc"),
                 "--granularity", "features_pos", "--method", "atp*", "--verify-top", "5", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["shape"] == [1, 96, result["shape"][2]] and result["axes"] == ["dictionary", "latent", "position"]
    assert result["components"][0] == "L1.TC.0@0" and result["settings"]["error_term"] is True
    assert (out / "heatmap.html").stat().st_size > 1000
    code = main(["patch", "--model", "random-llama", "--n-prompts", "4", "--components", "L1.TC.3@5",
                 "--out", str(tmp_path / "bad")])
    assert code == 2 and "no transcoder is spliced in at layer 1" in capsys.readouterr().err
