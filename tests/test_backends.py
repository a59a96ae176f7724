"""Both backends must give the same numbers: logits and every cached activation kind."""

import pytest
import torch

import interp
from interp import Component, Site

KINDS = ["resid_pre", "q", "k", "v", "z", "attn_out", "mlp_post", "mlp_out", "resid_post", "pattern"]


def _compare(spec, tokens):
    tl = interp.load_model(spec, backend="transformer_lens")
    ns = interp.load_model(spec, backend="nnsight")
    sites = [Site(kind, layer) for kind in KINDS for layer in (0, tl.config.n_layers - 1)]
    logits_tl, cache_tl = tl.run_with_cache(tokens, sites)
    logits_ns, cache_ns = ns.run_with_cache(tokens, sites)
    assert torch.allclose(logits_tl, logits_ns, atol=1e-4)
    for site in sites:
        assert cache_tl[site].shape == cache_ns[site].shape, site
        assert torch.allclose(cache_tl[site], cache_ns[site], atol=1e-4), site
    return tl, ns


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "gemma"])
def test_backend_parity_random_models(family):
    tl, _ = _compare(f"random-{family}", torch.tensor([[5, 60, 700, 8000, 9, 10, 11]]))
    assert tl.config.n_layers == 3


def test_backend_parity_smollm2(smollm2):
    tokens = smollm2.to_tokens("When Mary and John went to the store, John gave a drink to")
    _compare("smollm2-135m", tokens)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_patch_context_and_gradients_agree_across_backends(backend):
    model = interp.load_model("random-llama", backend=backend)
    tokens = torch.tensor([[5, 60, 700, 8000, 9, 10]])
    with model.patch({"L1.H2": torch.zeros(6, 16)}):
        _, cache = model.run_with_cache(tokens, ["L1.H2"])
    assert cache["L1.H2"].abs().max().item() == 0.0
    value, acts, grads = model.gradients(tokens, lambda logits: logits[0, -1, 42], ["L1.ATTN", "L2.RESID_PRE"])
    # finite-difference check of d logit / d attn_out along a random direction
    direction = torch.randn_like(acts["L1.ATTN"])
    eps = 1e-3
    with model.patch({"L1.ATTN": lambda x: x + eps * direction}):
        bumped = model.run(tokens)[0, -1, 42]
    predicted = (grads["L1.ATTN"] * direction).sum()
    assert torch.allclose(bumped - value, eps * predicted, rtol=2e-2, atol=1e-5)
    assert grads["L2.RESID_PRE"].abs().sum() > 0


def test_nnsight_rejects_pattern_edits():
    model = interp.load_model("random-llama", backend="nnsight")
    with pytest.raises(NotImplementedError, match="attention patterns"):
        with model.patch({"L0.A0": torch.zeros(3, 3)}):
            model.run(torch.tensor([[5, 6, 7]]))


def test_unknown_component_in_patch(random_llama):
    with pytest.raises(interp.ComponentError, match="L9.H0"):
        with random_llama.patch({"L9.H0": torch.zeros(1)}):
            pass
    assert Component.parse("L0.H0").site == Site("z", 0)


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_run_and_run_with_cache_take_text(backend):
    """Text is tokenized as tokenize does (several texts left-padded): the same logits and cache
    as the ids; a mask given with text is refused."""
    import interp

    model = interp.load_model("random-llama", backend=backend)
    texts = ["The Eiffel Tower is in", "Big Ben is in the city of"]
    assert torch.equal(model.run(texts[0]), model.run(model.to_tokens(texts[0])))
    batch = model.tokenize(texts)
    logits, cache = model.run_with_cache(texts, ["L1.H0"])
    expected, expected_cache = model.run_with_cache(batch, ["L1.H0"])
    assert torch.equal(logits, expected) and torch.equal(cache["L1.H0"], expected_cache["L1.H0"])
    with pytest.raises(ValueError, match="text makes its own attention mask"):
        model.run(texts, attention_mask=batch.mask)
