import pytest
import torch
from transformers import AutoModelForCausalLM

import interp
from interp import ModelLoadError, tasks
from interp.loading import resolve_model_dir


def test_smollm2_matches_plain_transformers(smollm2):
    model_dir, _ = resolve_model_dir("smollm2-135m")
    plain = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    tokens = smollm2.to_tokens(["The capital of France is Paris, and the capital of Spain is"])
    with torch.no_grad():
        expected = plain(tokens).logits
    assert torch.allclose(smollm2.run(tokens), expected, atol=1e-4)


def test_smollm2_config_has_grouped_query_attention(smollm2):
    c = smollm2.config
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_head, c.d_mlp, c.d_vocab) == (30, 9, 3, 576, 64, 1536, 49152)


def test_smollm2_ioi_logit_diff_positive(smollm2):
    task = tasks.ioi(smollm2, n_prompts=32, seed=3)
    logits = smollm2.run(task.clean_tokens, logits_to_keep=1)[:, -1]
    diff = interp.metrics.logit_diff(logits, task.answers, task.wrong_answers, None)
    assert (diff > 0).float().mean().item() >= 0.9


def test_second_load_reuses_the_converted_folder(smollm2, monkeypatch):
    import transformers

    from interp.loading import bundled_gguf_path, convert_gguf

    first = convert_gguf(bundled_gguf_path())

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was dequantized again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_second_conversion)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_second_conversion)
    assert convert_gguf(bundled_gguf_path()) == first


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_unembedding_reads_a_contiguous_slice(backend):
    """With logits_to_keep, Hugging Face unembeds hidden[:, -k:], a strided view; F.linear on it is a
    batched matmul over an expanded W_U (14x slower at 400 sequences). The unembedding must see a
    contiguous tensor, and the kept logits equal the full run's."""
    model = interp.load_model("random-llama", backend=backend)
    seen = []
    handle = model.hf_model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous()))
    tokens = torch.randint(0, model.config.d_vocab, (3, 7))
    try:
        kept = model.run(tokens, logits_to_keep=1)
    finally:
        handle.remove()
    assert seen == [True]
    assert torch.allclose(kept[:, -1], model.run(tokens)[:, -1], atol=1e-5)


@pytest.mark.parametrize("spec, message", [
    ("definitely-not-a-model", "unknown model 'definitely-not-a-model'"),
    ("/no/such/file.gguf", "GGUF file not found: /no/such/file.gguf"),
    ("random-bert", "unknown random model family 'bert'"),
])
def test_bad_model_specs(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        interp.load_model(spec, backend="transformer_lens")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        interp.load_model(str(tmp_path), backend="transformer_lens")


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        interp.load_model(str(bad), backend="transformer_lens")


def test_unknown_backend():
    with pytest.raises(ModelLoadError, match="unknown backend 'tf'"):
        interp.load_model("random-llama", backend="tf")


def test_toy_induction_head(toy_induction):
    from interp.toy_models import induction_scores, repeated_random_tokens

    tokens = repeated_random_tokens(16, 20, seed=123)
    _, cache = toy_induction.run_with_cache(tokens, ["L1.A0"])
    scores = induction_scores(cache[interp.Site("pattern", 1)], 20)
    assert scores.max().item() > 0.8
