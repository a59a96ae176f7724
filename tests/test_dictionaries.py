"""Sparse dictionaries: recovery of planted sparse features, losses, scaling folds, errors."""

import pytest
import torch

from circuits.dictionary import DictionaryConfig, DictionaryError, SparseDictionary
from circuits.dictionary_training import TrainingConfig, train_dictionary


def _planted(n_features=64, d=32, active=3, batch=1024, seed=0):
    """Activations that are sums of 3 of 64 unit features with magnitudes in [0.5, 1.5]."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n_features, d, generator=generator)
    features /= features.norm(dim=1, keepdim=True)

    def batches():
        while True:
            chosen = torch.rand(batch, n_features, generator=generator).argsort(-1)[:, :active]
            weights = torch.rand(batch, active, generator=generator) + 0.5
            x = torch.zeros(batch, n_features).scatter(-1, chosen, weights) @ features
            yield x, x

    return features, batches()


def _mean_max_cosine(features, dictionary):
    decoder = dictionary.W_dec.detach()
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    return (features @ decoder.T).max(dim=1).values.mean().item()


@pytest.mark.parametrize("architecture, settings", [("topk", {"k": 3}), ("jumprelu", {}), ("batchtopk", {"k": 3})])
def test_planted_sparse_features_are_recovered(architecture, settings):
    features, batches = _planted()
    trained = train_dictionary(batches, DictionaryConfig(d_in=32, d_sae=128, architecture=architecture, dead_tokens=20_000, **settings),
                               TrainingConfig(total_tokens=1024 * 600, batch_tokens=1024, lr=1e-2 if architecture == "jumprelu" else 3e-3),
                               progress=False)
    assert _mean_max_cosine(features, trained.dictionary) > 0.9
    assert trained.history["explained_variance"][-1] > 0.85
    assert trained.history["l0"][-1] < 6


def test_batchtopk_threshold_converges_and_inference_l0_is_near_k():
    _, batches = _planted()
    trained = train_dictionary(batches, DictionaryConfig(d_in=32, d_sae=128, architecture="batchtopk", k=3),
                               TrainingConfig(total_tokens=1024 * 300, batch_tokens=1024, lr=3e-3), progress=False)
    x, _ = next(batches)
    f = trained.dictionary.encode(x)  # eval mode: JumpReLU at the tracked threshold
    assert float(trained.dictionary.threshold[0]) > 0
    assert 1.5 < (f > 0).float().sum(-1).mean().item() < 6


def test_fold_scaling_makes_the_dictionary_act_on_raw_activations():
    torch.manual_seed(0)
    for kind, d_out in (("sae", 8), ("skip_transcoder", 5), ("transcoder", 5)):
        config = DictionaryConfig(d_in=8, d_sae=16, architecture="relu", kind=kind, d_out=d_out)
        dictionary = SparseDictionary(config)
        with torch.no_grad():
            for p in dictionary.parameters():
                p.normal_()
        x = torch.randn(10, 8)
        s_in, s_out = (2.5, 2.5) if kind == "sae" else (2.5, 0.4)
        expected = dictionary(x * s_in)[0] / s_out
        dictionary.fold_scaling(s_in, s_out)
        torch.testing.assert_close(dictionary(x)[0], expected, atol=1e-5, rtol=1e-5)


def test_relu_loss_is_decoder_norm_weighted_l1_with_warmup():
    config = DictionaryConfig(d_in=4, d_sae=6, architecture="relu", l1_coefficient=2.0, sparsity_warmup_steps=10)
    dictionary = SparseDictionary(config)
    x = torch.randn(7, 4)
    f = dictionary.encode(x)
    l1 = (f * dictionary.W_dec.norm(dim=1)).sum(-1).mean()
    assert dictionary.loss(x, x, step=4)["sparsity"].item() == pytest.approx(0.5 * 2.0 * l1.item(), rel=1e-5)
    assert dictionary.loss(x, x, step=20)["sparsity"].item() == pytest.approx(2.0 * l1.item(), rel=1e-5)


def test_auxk_reconstructs_the_residual_from_dead_latents_without_b_dec():
    config = DictionaryConfig(d_in=4, d_sae=6, architecture="topk", k=1, aux_k=2, dead_tokens=1, aux_coefficient=1.0)
    dictionary = SparseDictionary(config)
    with torch.no_grad():
        dictionary.b_dec.fill_(100.0)  # would dominate the aux reconstruction if it were (wrongly) added
        dictionary.tokens_since_fired.fill_(5)
    x = torch.randn(3, 4)
    pre = dictionary.pre_activations(x)
    residual = torch.randn(3, 4)
    values, index = pre.topk(2, dim=-1)
    reconstruction = torch.zeros_like(pre).scatter(-1, index, torch.relu(values)) @ dictionary.W_dec
    energy = (residual - residual.mean(0)).pow(2).sum(-1).mean()
    expected = (residual - reconstruction).pow(2).sum(-1).mean() / energy
    assert dictionary._aux_loss(pre, residual).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_configs_inputs_and_nan_losses():
    with pytest.raises(DictionaryError, match="unknown architecture 'gated'"):
        DictionaryConfig(d_in=4, d_sae=8, architecture="gated").validate()
    with pytest.raises(DictionaryError, match="k must be in 1..d_sae=8"):
        DictionaryConfig(d_in=4, d_sae=8, k=9).validate()
    with pytest.raises(DictionaryError, match="d_out 3 must equal d_in 4"):
        DictionaryConfig(d_in=4, d_sae=8, d_out=3).validate()
    dictionary = SparseDictionary(DictionaryConfig(d_in=4, d_sae=8, k=2))
    with pytest.raises(DictionaryError, match="input has 5 features; this dictionary reads d_in=4"):
        dictionary(torch.randn(2, 5))

    def poisoned():
        yield torch.randn(8, 4), torch.randn(8, 4)
        while True:
            yield torch.full((8, 4), float("nan")), torch.full((8, 4), float("nan"))

    with pytest.raises(DictionaryError, match="loss became nan at step 1"):
        train_dictionary(poisoned(), DictionaryConfig(d_in=4, d_sae=8, k=2), TrainingConfig(total_tokens=64, batch_tokens=8),
                         progress=False)


# ----------------------------------------------------------------------------- on a model
import json  # noqa: E402


from circuits.activation_store import ActivationStore, batches_from_shards, read_pairs  # noqa: E402
from circuits.dictionary_evaluation import evaluate_dictionary, spliced  # noqa: E402
from circuits.dictionary_io import load_dictionary, save_dictionary  # noqa: E402
from interp.hf_compat import unwrapped  # noqa: E402
from interp.ui.cli import main  # noqa: E402
from interp.components import ComponentError, Site  # noqa: E402


@pytest.fixture(scope="module")
def chunks():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 5000, (12, 16), generator=generator)
    tokens[:, 0] = 1  # a special token the stores must leave out
    return tokens


@pytest.fixture(scope="module")
def random_llama_module():
    import interp

    return interp.load_model("random-llama", backend="transformer_lens")


def _identity_sae(d: int, site: str) -> "SparseDictionary":
    """relu(x) - relu(-x) = x: an SAE that reconstructs exactly."""
    dictionary = SparseDictionary(DictionaryConfig(d_in=d, d_sae=2 * d, architecture="relu", site=site))
    eye = torch.eye(d)
    with torch.no_grad():
        dictionary.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        dictionary.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        dictionary.b_enc.zero_()
        dictionary.b_dec.zero_()
    return dictionary.eval()


def test_read_pairs_sae_site_and_transcoder_mlp_pairs(random_llama_module, chunks):
    model = random_llama_module
    x, y = read_pairs(model, "L1.RESID_POST", "sae", chunks[:2])
    _, cache = model.run_with_cache(chunks[:2], ["L1.RESID_POST"])
    assert torch.equal(x, y) and len(x) == 2 * 15  # BOS rows left out
    torch.testing.assert_close(x, cache[Site("resid_post", 1)][:, 1:].reshape(-1, 64))
    x, y = read_pairs(model, "L1.MLP", "transcoder", chunks[:2])
    mlp = unwrapped(model.decoder_layers()[1].mlp)
    # the pair is exactly (MLP input after its norm, MLP output): the MLP maps one to the other
    expected = mlp.down_proj.weight @ (torch.nn.functional.silu(mlp.gate_proj.weight @ x.T) * (mlp.up_proj.weight @ x.T))
    torch.testing.assert_close(y, expected.T, atol=1e-5, rtol=1e-4)
    with pytest.raises(ComponentError, match="a transcoder replaces an MLP"):
        read_pairs(model, "L1.RESID_POST", "transcoder", chunks[:1])
    with pytest.raises(ComponentError, match="whole \\[batch, pos, d_model\\] site"):
        read_pairs(model, "L1.H0", "sae", chunks[:1])


def test_store_batches_memory_and_shards(random_llama_module, chunks, tmp_path):
    store = ActivationStore(random_llama_module, "L0.MLP", "transcoder", chunks, batch_tokens=16, buffer_tokens=64, forward_batch=2)
    assert store.memory_bytes == 64 * (64 + 64) * 4
    x, y = next(iter(store))
    assert x.shape == (16, 64) and y.shape == (16, 64)
    store.save_shards(tmp_path, n_tokens=100, shard_tokens=40)
    meta, batches = batches_from_shards(tmp_path, batch_tokens=10)
    assert meta["n_tokens"] == 100 and len(meta["shards"]) == 3
    assert next(batches)[0].shape == (10, 64)
    with pytest.raises(DictionaryError, match="must hold at least two batches"):
        ActivationStore(random_llama_module, "L0.MLP", "sae", chunks, batch_tokens=64, buffer_tokens=64)
    with pytest.raises(DictionaryError, match="holds no activation shards"):
        batches_from_shards(tmp_path / "nothing", 10)


def test_exact_sae_splices_to_the_clean_model_and_recovers_all_ce(random_llama_module, chunks):
    model = random_llama_module
    dictionary = _identity_sae(64, "L1.RESID_POST")
    clean = model.run(chunks[:3])
    with spliced(model, dictionary):
        torch.testing.assert_close(model.run(chunks[:3]), clean, atol=1e-5, rtol=1e-5)
    metrics = evaluate_dictionary(model, dictionary, chunks[:4], batch_size=2)
    assert metrics["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["kl_to_clean"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["n_tokens"] == 4 * 15 and metrics["l0"] == pytest.approx(64.0, abs=1.0)


def test_error_term_leaves_the_model_unchanged_and_metrics_match_by_hand(random_llama_module, chunks):
    model = random_llama_module
    for kind, site in (("sae", "L1.ATTN"), ("transcoder", "L1.MLP")):
        dictionary = SparseDictionary(DictionaryConfig(d_in=64, d_sae=128, k=4, kind=kind, site=site)).eval()
        clean = model.run(chunks[:2])
        with spliced(model, dictionary, error_term=True):
            torch.testing.assert_close(model.run(chunks[:2]), clean, atol=1e-5, rtol=1e-5)
        x, y = read_pairs(model, site, kind, chunks[:4])
        y_hat, _ = dictionary(x)
        by_hand = 1 - (y - y_hat).pow(2).sum(-1).mean() / (y.pow(2).sum(-1).mean() - y.mean(0).pow(2).sum())
        metrics = evaluate_dictionary(model, dictionary, chunks[:4], batch_size=3)
        assert metrics["explained_variance"] == pytest.approx(by_hand.item(), rel=1e-4)
        assert metrics["l0"] == pytest.approx(4.0)


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("kind", ["sae", "skip_transcoder"])
def test_saelens_format_roundtrip(architecture, kind, tmp_path):
    config = DictionaryConfig(d_in=8, d_sae=16, d_out=8 if kind == "sae" else 6, architecture=architecture, kind=kind,
                              k=3, site="L2.RESID_POST" if kind == "sae" else "L2.MLP", model_name="m")
    dictionary = SparseDictionary(config)
    with torch.no_grad():
        for p in dictionary.parameters():
            p.normal_()
        if dictionary.threshold is not None:
            dictionary.threshold.fill_(0.3)
    dictionary.eval()
    save_dictionary(dictionary, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert {"architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "normalize_activations"} <= set(cfg)
    assert cfg["meta"]["hook_name"] == ("blocks.2.hook_resid_post" if kind == "sae" else "blocks.2.hook_mlp_out")
    x = torch.randn(5, 8)
    torch.testing.assert_close(load_dictionary(tmp_path)(x)[0], dictionary(x)[0])
    if kind == "sae" and architecture != "batchtopk":  # what SAELens alone would see
        (tmp_path / "interp_dictionary.json").unlink()
        torch.testing.assert_close(load_dictionary(tmp_path)(x)[0], dictionary(x)[0])


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_saelens_topk_with_decoder_norm_rescaling_loads_with_saelens_numbers(tmp_path, apply_b_dec_to_input):
    """SAELens' TopK default multiplies pre-activations by ||W_dec[i]|| and decodes with W_dec[i]/||W_dec[i]||;
    a folder saved that way (decoder rows not unit norm) must give SAELens' reconstruction, by its formula."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    W_enc, b_enc = torch.randn(8, 16, generator=generator), torch.randn(16, generator=generator)
    W_dec = torch.randn(16, 8, generator=generator) * torch.rand(16, 1, generator=generator) * 3
    b_dec = torch.randn(8, generator=generator)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    cfg = {"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 3, "rescale_acts_by_decoder_norm": True,
           "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": "none", "dtype": "float32"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    x = torch.randn(5, 8, generator=generator)
    norms = W_dec.norm(dim=-1)
    pre = ((x - b_dec) if apply_b_dec_to_input else x) @ W_enc + b_enc
    pre = pre * norms
    top = pre.topk(3, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    saelens = acts @ (W_dec / norms[:, None]) + b_dec
    torch.testing.assert_close(load_dictionary(tmp_path)(x)[0], saelens, atol=1e-5, rtol=1e-5)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(DictionaryError, match="SAELens activation normalization 'layer_norm' is not supported"):
        load_dictionary(tmp_path)


def test_bad_dictionary_files_and_mismatched_models(random_llama_module, chunks, tmp_path):
    dictionary = SparseDictionary(DictionaryConfig(d_in=8, d_sae=16, k=2, site="L1.RESID_POST"))
    save_dictionary(dictionary, tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DictionaryError, match="sae_weights.safetensors is unreadable"):
        load_dictionary(tmp_path)
    with pytest.raises(DictionaryError, match="is not a dictionary folder"):
        load_dictionary(tmp_path / "missing")
    with pytest.raises(DictionaryError, match="reads d_in=8; L1.RESID_POST of random-llama has d_model=64"):
        evaluate_dictionary(random_llama_module, dictionary, chunks[:2])


def test_cli_sae_train_and_eval(tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(["sae", "train", "--model", "random-llama", "--site", "L1.RESID_POST", "--k", "4", "--expansion", "2",
                 "--tokens", "2048", "--batch-tokens", "128", "--buffer-tokens", "512", "--chunk-length", "32",
                 "--eval-chunks", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "explained variance" in printed and "CE recovered" in printed
    data = json.loads((out / "result.json").read_text())
    assert data["method"] == "sae" and len(data["components"]) == 128 and data["components"][0] == "L1.SAE.0"
    assert (out / "dictionary" / "cfg.json").is_file() and (out / "dictionary.html").is_file()
    assert main(["sae", "eval", "--dictionary", str(out / "dictionary"), "--model", "random-llama", "--chunk-length", "32",
                 "--eval-chunks", "2", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "result.json").read_text())["extra"]["metrics"]["l0"] == pytest.approx(4.0)
    assert main(["sae", "train", "--model", "random-llama", "--site", "L1.H0", "--tokens", "256", "--batch-tokens", "128",
                 "--buffer-tokens", "512", "--out", str(tmp_path / "x")]) == 2
    assert "whole [batch, pos, d_model] site" in capsys.readouterr().err
    assert main(["sae", "eval", "--dictionary", str(tmp_path / "nope"), "--model", "random-llama"]) == 2
    assert "is not a dictionary folder" in capsys.readouterr().err


def test_more_bad_dictionary_inputs(tmp_path):
    dictionary = SparseDictionary(DictionaryConfig(d_in=8, d_sae=16, k=2, site="L1.RESID_POST"))
    save_dictionary(dictionary, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    (tmp_path / "a" / "interp_dictionary.json").unlink()
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(DictionaryError, match="SAELens architecture 'gated' is not supported"):
        load_dictionary(tmp_path / "a")
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 32}))
    with pytest.raises(DictionaryError, match="W_enc has shape \\(8, 16\\), the config says \\(8, 32\\)"):
        load_dictionary(tmp_path / "a")
    with pytest.raises(DictionaryError, match="need total_tokens >= batch_tokens >= 1, got 4 and 8"):
        TrainingConfig(total_tokens=4, batch_tokens=8).validate()
    with pytest.raises(DictionaryError, match="learning rate must be positive, got 0"):
        TrainingConfig(lr=0).validate()
    with pytest.raises(DictionaryError, match="training device must name a torch device, got 'gpu0'"):
        TrainingConfig(device="gpu0").validate()
    with pytest.raises(DictionaryError, match="ran out after 1 of 4 steps"):
        train_dictionary(iter([(torch.randn(8, 8), torch.randn(8, 8))]), DictionaryConfig(d_in=8, d_sae=16, k=2),
                         TrainingConfig(total_tokens=32, batch_tokens=8), progress=False)
