"""SDPA attention: chosen where the family and backend allow it, checked against eager at load,
the same numbers as eager, and eager for every run that reads or edits attention probabilities."""

import pytest
import torch

import interp
from interp import hf_compat
from interp.loading import ModelLoadError
from interp.shortcuts import ShortcutError

TEXTS = ["The Eiffel Tower is in the city of", "Big Ben is in"]


def test_auto_picks_sdpa_where_it_can():
    assert interp.load_model("random-llama", attention="auto").attention == "sdpa"
    assert interp.load_model("random-gemma2", attention="auto").attention == "eager"  # transformers has no SDPA for Gemma-2
    assert interp.load_model("random-llama", backend="transformer_lens", attention="auto").attention == "eager"
    assert interp.load_model("random-llama").attention == "sdpa"  # the default is auto
    assert interp.load_model("random-llama", attention="eager").attention == "eager"
    with pytest.raises(ModelLoadError, match="random-gemma2 cannot run SDPA attention"):
        interp.load_model("random-gemma2", attention="sdpa")
    with pytest.raises(ModelLoadError, match="needs backend='nnsight'"):
        interp.load_model("random-llama", backend="transformer_lens", attention="sdpa")


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "phi3"])
def test_sdpa_gives_eager_numbers_and_patterns_run_eager(family):
    fast, eager = interp.load_model(f"random-{family}", attention="sdpa"), interp.load_model(f"random-{family}", attention="eager")
    assert fast.attention == "sdpa"
    tokens = fast.tokenize(TEXTS)
    real = tokens.mask
    sites = ["L1.H0", "L1.MLP", "L0.A1"]
    fast_logits, fast_cache = fast.run_with_cache(tokens, sites)
    eager_logits, eager_cache = eager.run_with_cache(tokens, sites)
    torch.testing.assert_close(fast_logits[real], eager_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_cache["L1.H0"][real], eager_cache["L1.H0"][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_cache["L0.A1"], eager_cache["L0.A1"])  # probabilities: read under eager
    assert fast.hf_model.config._attn_implementation == "sdpa"  # and back to SDPA after


def test_an_sdpa_that_disagrees_with_eager_is_caught():
    model = interp.load_model("random-llama", attention="sdpa")
    attention = model.hf_model.model.layers[0].self_attn

    def skew(module, args, output):
        if model.hf_model.config._attn_implementation == "sdpa":
            return (output[0] * 1.5, *output[1:])
        return output

    handle = attention.register_forward_hook(skew)
    try:
        with pytest.raises(ShortcutError, match="sdpa attention"):
            hf_compat.check_attention(model)
    finally:
        handle.remove()


def test_an_sdpa_that_fails_its_check_falls_back_to_eager_under_auto(monkeypatch):
    """Some transformers releases offer SDPA for a family whose attention it cannot express
    (Gemma-2's soft-capping under transformers 5.9): auto falls back to eager, sdpa is one line."""
    checked = hf_compat.check_attention

    def failing(model, n_tokens=6):
        if model.attention == "sdpa":
            raise ShortcutError("sdpa attention gives the logits [1] where the plain computation gives [2] (here)")
        return checked(model, n_tokens)

    monkeypatch.setattr(hf_compat, "check_attention", failing)
    model = interp.load_model("random-qwen3", attention="auto")
    assert model.attention == "eager" and model.hf_model.config._attn_implementation == "eager"
    with pytest.raises(ModelLoadError, match="random-qwen3 cannot run SDPA attention here: it gives other logits"):
        interp.load_model("random-qwen3", attention="sdpa")
