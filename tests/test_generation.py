"""Generation with interventions: every edit reaches every decoded token, through the KV cache.

The oracles: the same edits applied by recomputing the whole sequence at every step
(``use_cache=False``), and for one edit a plain PyTorch forward hook on the Hugging Face model
with a hand-written greedy loop."""

import pytest
import torch

from circuits.dictionary import DictionaryConfig, SparseDictionary
from circuits.dictionary_evaluation import spliced
from interp.batch import PaddingError
from interp.layer_dropping import dropped
from tests.test_families import BACKENDS, _model

FAMILIES = ("llama", "gpt2")
PROMPTS = ["the cat sat on the mat and", "a b"]  # different lengths: left-padded


def _patches(d_model: int) -> dict:
    torch.manual_seed(0)
    vector = torch.randn(d_model)
    return {
        "L0.RESID_POST": lambda x: x + 3 * vector,  # every position, the new ones too
        "L1.ATTN@2": torch.zeros(d_model),  # one prompt position
        "L0.H1@-1": lambda x: 2 * x,  # the prompt's last token, counted once
        "L1.MLP@11": torch.zeros(d_model),  # a position that is generated (the third new token)
    }


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_patched_generation_equals_full_recomputation(family, backend):
    model = _model(family, backend)
    tokens = model.tokenize(PROMPTS)
    patches = _patches(model.config.d_model)
    cached = model.generate(tokens, 6, patches)
    assert torch.equal(cached, model.generate(tokens, 6, patches, use_cache=False))
    assert not torch.equal(cached, model.generate(tokens, 6))  # the edits change the text
    # sampling: the same seed gives the same tokens with and without the cache
    options = {"do_sample": True, "seed": 3, "top_k": 20, "top_p": 0.9, "temperature": 0.8}
    sampled = model.generate(tokens, 6, patches, **options)
    assert torch.equal(sampled, model.generate(tokens, 6, patches, use_cache=False, **options))
    assert torch.equal(model.generate(tokens, 6, patches, do_sample=True, top_k=1), cached)  # top-1 sampling is greedy


@pytest.mark.parametrize("backend", BACKENDS)
def test_patched_generation_equals_a_plain_hook_and_loop(backend):
    model = _model("llama", backend)
    tokens = model.to_tokens("the cat sat on the mat")
    torch.manual_seed(1)
    vector = torch.randn(model.config.d_model)
    hf = model.hf_model
    layer = hf.model.layers[0]
    layer = getattr(layer, "_original_component", layer)

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + 3 * vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    expected = tokens
    handle = layer.register_forward_hook(add)
    try:
        with torch.no_grad():
            for _ in range(5):
                expected = torch.cat([expected, hf(expected).logits[:, -1:].argmax(-1)], dim=1)
    finally:
        handle.remove()
    patch = {"L0.RESID_POST": lambda x: x + 3 * vector}
    assert torch.equal(model.generate(tokens, 5, patch), expected)
    with model.patch(patch):  # an enclosing patch block reaches generate too
        assert torch.equal(model.generate(tokens, 5), expected)
    assert model.generate_text("the cat sat on the mat", 5, patch) == [model.tokenizer.decode(expected[0, -5:])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_with_a_clamped_latent_and_dropped_layers(backend):
    model = _model("llama", backend)
    tokens = model.tokenize(PROMPTS)
    torch.manual_seed(2)
    dictionary = SparseDictionary(DictionaryConfig(d_in=model.config.d_model, d_sae=96, k=8, kind="sae",
                                                   site="L1.RESID_POST")).eval()
    clamp = {"L1.SAE.5": torch.tensor(20.0), "L0.H0": torch.zeros(model.config.d_head)}
    with spliced(model, dictionary, error_term=True), dropped(model, ["L0.MLP"]):
        cached = model.generate(tokens, 5, clamp)
        assert torch.equal(cached, model.generate(tokens, 5, clamp, use_cache=False))
        assert not torch.equal(cached, model.generate(tokens, 5))


def test_generation_refuses_bad_options(random_llama):
    tokens = random_llama.to_tokens("hello there")
    for options, message in (({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite"),
                             ({"top_p": 0.0}, "top_p must be in"), ({"top_k": -1}, "top_k must be")):
        with pytest.raises(ValueError, match=message):
            random_llama.generate(tokens, 2, **options)
    with pytest.raises(ValueError, match="new_tokens must be a whole number"):
        random_llama.generate(tokens, -1)
    right = random_llama.tokenize(PROMPTS, padding_side="right")
    with pytest.raises(PaddingError, match="pad the prompts on the left"):
        random_llama.generate(right, 2)


def test_a_model_with_full_forwards_generates_without_a_cache(monkeypatch):
    """What a remote model does: every step reruns the whole sequence (no cache goes in or out),
    with the cached generation's tokens."""
    model = _model("llama", "nnsight")
    tokens = model.tokenize(PROMPTS)
    patches = _patches(model.config.d_model)
    cached = model.generate(tokens, 4, patches)
    specs = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda spec, *a, **k: specs.append(spec) or forward(spec, *a, **k))
    monkeypatch.setattr(model, "full_forwards", True)
    assert torch.equal(model.generate(tokens, 4, patches), cached)
    assert len(specs) == 4 and all(s.past_key_values is None and not s.return_cache for s in specs)
    assert [s.input_ids.shape[1] for s in specs] == [tokens.ids.shape[1] + k for k in range(4)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backends_own_loop_gives_the_models_tokens(backend):
    """``Backend.generate`` (a forward of the whole sequence a step, what a remote model sends as
    one request) and the nnsight session that does it remotely give ``Model.generate``'s tokens,
    and each step's logits, padded prompts and position edits included."""
    from interp.backends.base import RunSpec
    from interp.model import Sampler

    model = _model("llama", backend)
    tokens = model.tokenize(PROMPTS)
    patches = _patches(model.config.d_model)
    options = {"do_sample": True, "seed": 3, "top_k": 20, "temperature": 0.8}
    expected = model.generate(tokens, 5, patches, **options)
    with model.patch(patches):
        spec = model._prepared(RunSpec(tokens.ids, attention_mask=tokens.mask), window=(0, tokens.ids.shape[1]))
        length = tokens.ids.shape[1]
        steps = [model.forward(RunSpec(expected[:, :length + k], logits_to_keep=1,
                                       attention_mask=torch.cat([tokens.mask, tokens.mask.new_ones(2, k)], 1)),
                               window=(0, length)).logits[:, -1] for k in range(5)]
    runs = [lambda *args: model.backend.generate(*args)]
    if backend == "nnsight":
        from interp.backends.nnsight_trace import run_generation

        b, c = model.backend, model.config
        runs.append(lambda *args: run_generation(b.lm, (b.layout, c.n_heads, c.n_kv_heads, c.d_head), *args, False,
                                                 b.unembed))
    for run in runs:
        sampler, seen = Sampler(**options), []
        assert torch.equal(run(spec, 5, lambda logits: seen.append(logits) or sampler(logits)), expected)
        for logits, step in zip(seen, steps, strict=True):
            torch.testing.assert_close(logits, step, rtol=0, atol=1e-5)
