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
