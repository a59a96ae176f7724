"""What interp relies on in transformers' KV caches and TransformerLens' bridge, pinned
(``interp/hf_compat.py`` is the one module that touches them), and the load-time checks that stop
a release which breaks them."""

import inspect
import warnings

import pytest
import torch

import interp
from interp import hf_compat
from interp.architectures import OVERRIDES, UnsupportedArchitectureError, register_override
from interp.backends.base import RunSpec


@pytest.fixture(scope="module", params=["transformer_lens", "nnsight"])
def gemma2(request):
    """Sliding-window layers (window 5) and a full one: the case Hugging Face's own cache cannot cut."""
    return interp.load_model("random-gemma2", backend=request.param)


def test_the_cache_keyword_is_the_installed_releases():
    model = interp.load_model("random-llama", backend="nnsight")
    hf = model.hf_model
    name = hf_compat.cache_argument(hf)
    assert name in inspect.signature(type(hf).forward).parameters
    tokens = torch.tensor([[5, 60, 700, 8000, 9]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated keyword on the way in or out
        with torch.no_grad():
            out = hf(tokens[:, :3], use_cache=True, **hf_compat.cache_kwargs(hf, hf_compat.new_cache()))
            cache = hf_compat.output_cache(out)
            rest = hf(tokens[:, 3:], use_cache=True, **hf_compat.cache_kwargs(hf, cache)).logits
            full = hf(tokens).logits
    torch.testing.assert_close(rest, full[:, 3:], atol=1e-5, rtol=1e-5)
    assert hf_compat.cache_in({name: cache}) is cache and hf_compat.cache_in({}) is None


def test_layer_states_are_keys_and_values_of_every_position(gemma2):
    """The one read of cache internals: every layer (sliding ones too) keeps every position."""
    tokens = torch.randint(3, 1000, (2, 9))
    cache = gemma2.forward(RunSpec(tokens, logits_to_keep=1, return_cache=True)).past_key_values
    states = hf_compat.layer_states(cache)
    c = gemma2.config
    assert len(states) == c.n_layers
    assert all(k.shape == v.shape == (2, c.n_kv_heads, 9, c.d_head) for k, v in states)


def test_a_prefix_cut_past_the_sliding_window_gives_the_plain_logits_and_stays_read_only(gemma2):
    tokens = torch.randint(3, 1000, (2, 12))
    plain = gemma2.run(tokens)
    cache = gemma2.forward(RunSpec(tokens, logits_to_keep=1, return_cache=True)).past_key_values
    rows = torch.tensor([1, 0, 1])
    prefix = hf_compat.kv_prefix(cache, 8, rows)  # 8 > the window of 5
    for _ in range(2):  # read-only: the same prefix serves twice
        resumed = gemma2.forward(RunSpec(tokens[rows, 8:], past_key_values=prefix)).logits
        torch.testing.assert_close(resumed, plain[rows, 8:], atol=1e-5, rtol=1e-5)
        assert hf_compat.cache_length(prefix) == 8
    assert all(k.shape[0] == 3 for k, _ in hf_compat.layer_states(prefix))
    with pytest.raises(hf_compat.KVCacheError, match="a KV prefix of 13 positions was asked of a cache holding 12"):
        hf_compat.kv_prefix(cache, 13)


def test_a_prefix_shared_by_repeated_rows_is_stored_once(gemma2):
    """``repeats``: one stored prefix serves a batch that holds the rows several times over (the
    variants of a patching forward), with the plain logits."""
    tokens = torch.randint(3, 1000, (2, 12))
    plain = gemma2.run(tokens)
    cache = gemma2.forward(RunSpec(tokens, logits_to_keep=1, return_cache=True)).past_key_values
    prefix = hf_compat.kv_prefix(cache, 8, repeats=3)
    assert all(k.shape[0] == 2 for k, _ in hf_compat.layer_states(prefix))
    rows = torch.arange(2).repeat(3)
    for _ in range(2):
        resumed = gemma2.forward(RunSpec(tokens[rows, 8:], past_key_values=prefix)).logits
        torch.testing.assert_close(resumed, plain[rows, 8:], atol=1e-5, rtol=1e-5)
        assert hf_compat.cache_length(prefix) == 8 and hf_compat.layer_states(prefix)[0][0].shape[0] == 2


def test_the_plain_check_keeps_its_logits_within_budget():
    from interp.corruption import task_run

    model = interp.load_model("random-llama")
    task = interp.tasks.induction(model, n_prompts=4, half_length=6)
    run = task_run(task)
    metric = lambda logits, rows: logits[:, -1, 0]  # noqa: E731
    assert run.plain_metric(model, metric, torch.arange(4))[0] == slice(0, 4)
    one_row = 12 * model.config.d_vocab * 4
    rows, values = run.plain_metric(model, metric, torch.arange(4), logits_bytes=2.5 * one_row)
    assert rows == slice(0, 2) and values.shape == (2,)
    assert run.plain_metric(model, metric, torch.arange(4), logits_bytes=1)[0] == slice(0, 1)


def test_the_bridge_fills_the_cache_it_is_handed():
    """Under TransformerLens the bridge's own attention runs; it must see and extend the cache
    (transformers 5.24 passes it as ``cache``, which the bridge did not read)."""
    model = interp.load_model("random-qwen3", backend="transformer_lens")
    tokens = torch.randint(3, 1000, (1, 7))
    cache = model.forward(RunSpec(tokens, logits_to_keep=1, return_cache=True)).past_key_values
    assert all(k.shape[-2] == 7 for k, _ in hf_compat.layer_states(cache))
    generated = model.generate(tokens, 3)
    expected = tokens
    with torch.no_grad():
        for _ in range(3):
            expected = torch.cat([expected, model.run(expected)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, expected)


def test_a_broken_cache_stops_loading_in_one_line(monkeypatch):
    model = interp.load_model("random-llama", backend="nnsight")
    real = hf_compat.kv_prefix

    def stale(cache, position, rows=None):  # a cache that lost its keys' content
        prefix = real(cache, position, rows)
        for keys, values in hf_compat.layer_states(prefix):
            keys.zero_()
        return prefix
    monkeypatch.setattr(hf_compat, "kv_prefix", stale)
    with pytest.raises(hf_compat.KVCacheError, match="a forward resumed from its KV cache differs from the plain forward") as caught:
        hf_compat.check_kv_cache(model)
    assert "\n" not in str(caught.value) and "transformers " in str(caught.value)


def test_an_empty_cache_layer_is_named():
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    cache.layers.append(DynamicLayer())
    with pytest.raises(hf_compat.KVCacheError, match="KV cache layer 0 holds no keys"):
        hf_compat.layer_states(cache)


@pytest.mark.parametrize("backend, dtype", [("nnsight", torch.float32), ("transformer_lens", torch.float32),
                                            ("nnsight", torch.bfloat16)])  # bf16: a wider tolerance, still caught
def test_a_fused_projection_read_in_the_wrong_order_is_caught_at_load(backend, dtype):
    saved = dict(OVERRIDES["GPTNeoXForCausalLM"])
    register_override("GPTNeoXForCausalLM", fused_qkv="concat")  # NeoX is per head
    try:
        with pytest.raises(UnsupportedArchitectureError, match="random-neox .*layer 0's head outputs .*'concat' order"):
            interp.load_model("random-neox", backend=backend, dtype=dtype)
    finally:
        OVERRIDES["GPTNeoXForCausalLM"] = saved
    with pytest.raises(ValueError, match="unknown layout fields \\['qkv_order'\\]"):
        register_override("GPTNeoXForCausalLM", qkv_order="x")
