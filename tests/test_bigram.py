"""Bigram subnetworks: the sparse table, weight masks, continuous sparsification and its evaluation."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

import interp
from circuits.bigram_subnetwork import (BigramTarget, FullModelTarget, SubnetworkConfig, TrainingError,
                                        train_subnetwork)
from circuits.bigram_table import BigramTable
from circuits.subnetwork_evaluation import (ablation_table, bigram_fit, kept_by_layer, mask_overlap, residual_maps,
                                            surprisal_pairs)
from circuits.weight_masks import (MaskError, complement, kept_fraction, load_masks, maskable_matrices, masked,
                                   random_like, save_masks)
from interp.ui import cli
from interp.corpus import Corpus, CorpusError
from interp.results import Result
from interp.toy_models import markov_corpus, toy_tokenizer

FAMILIES = ["gpt2", "neox", "llama", "gemma"]


@pytest.fixture(scope="module")
def toy_bigram():
    return interp.load_model("toy-bigram", backend="nnsight")


@pytest.fixture(scope="module")
def markov():
    train = markov_corpus(n_documents=400, seed=2)
    held = markov_corpus(n_documents=40, seed=3)
    tokenizer = toy_tokenizer()
    return BigramTable.from_corpus(train, tokenizer), train.token_chunks(tokenizer, 64), held.token_chunks(tokenizer, 64)


@pytest.fixture(scope="module")
def trained(toy_bigram, markov):
    table, chunks, _ = markov
    config = SubnetworkConfig(lam=1.0, steps=500, batch_size=8, seq_len=64, lr=0.01, temperature_growth=1.01,
                              max_epochs=100)
    return train_subnetwork(toy_bigram, chunks, BigramTarget(table), config, progress=False)


# ---------------------------------------------------------------------- table
def test_alternating_corpus_gives_certain_bigrams():
    table = BigramTable.from_corpus(Corpus("ab", ("t1 t2 " * 20,)), toy_tokenizer())
    assert table.log_prob(torch.tensor([1, 2]), torch.tensor([2, 1])).exp().tolist() == [1.0, 1.0]
    rows = table.probabilities(torch.tensor([1, 2]))
    assert rows[0, 2] == 1.0 and rows[1, 1] == 1.0 and rows.sum().item() == 2.0
    start = table.probabilities(torch.tensor([0]))  # BOS reads START: every document starts with t1
    assert start[0, 1] == 1.0


def test_counts_match_brute_force_and_are_stored_sparse():
    corpus = markov_corpus(n_documents=30, seed=5)
    tokenizer = toy_tokenizer()
    table = BigramTable.from_corpus(corpus, tokenizer)
    pairs = Counter()
    for document in corpus.documents:
        ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        pairs.update(zip([table.vocab_size] + ids[:-1], ids))
    assert table.n_pairs == len(pairs) and table.columns.numel() == len(pairs)
    for (context, following), count in pairs.items():
        row = table.row_offsets[context], table.row_offsets[context + 1]
        index = row[0] + int((table.columns[row[0]:row[1]] == following).nonzero())
        assert table.counts[index] == count


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_rows_sum_to_one_and_sparse_lookups_match_dense_rows(alpha):
    table = BigramTable.from_corpus(markov_corpus(n_documents=30, seed=5), toy_tokenizer(), alpha=alpha)
    contexts = torch.arange(128)  # seen, unseen (START back-off) and BOS
    dense = table.probabilities(contexts)
    assert torch.allclose(dense.sum(-1), torch.ones(128, dtype=torch.float64), atol=1e-12)
    nexts = torch.randint(0, 128, (128,))
    assert torch.allclose(table.log_prob(contexts, nexts).exp(), dense[contexts, nexts], atol=1e-12)
    log_q = torch.log_softmax(torch.randn(128, 128, dtype=torch.float64), -1)
    assert torch.allclose(table.cross_entropy(log_q, contexts), -(dense * log_q).sum(-1), atol=1e-10)


def test_unseen_context_backs_off_to_add_one_unigram():
    table = BigramTable.from_corpus(Corpus("ab", ("t1 t2 " * 5,)), toy_tokenizer())
    row = table.probabilities(torch.tensor([7]))[0]
    assert row[1] == pytest.approx(6 / (10 + 128)) and row[50] == pytest.approx(1 / (10 + 128))


def test_smollm2_tokenizer_reads_the_start_row_at_end_of_text(smollm2):
    table = BigramTable.from_corpus(Corpus("two", ("Hello world", "Hello there")), smollm2.tokenizer,
                                    vocab_size=smollm2.config.d_vocab)
    hello = smollm2.tokenizer("Hello", add_special_tokens=False)["input_ids"][0]
    eos = smollm2.tokenizer.eos_token_id
    assert table.start_token == eos
    assert table.log_prob(torch.tensor([eos]), torch.tensor([hello])).exp().item() == 1.0


def test_table_round_trips_and_bad_files_fail_clearly(tmp_path):
    table = BigramTable.from_corpus(markov_corpus(n_documents=10), toy_tokenizer(), alpha=0.25)
    loaded = BigramTable.load(table.save(tmp_path / "t.npz"))
    assert torch.equal(loaded.probabilities(torch.arange(128)), table.probabilities(torch.arange(128)))
    (tmp_path / "bad.npz").write_text("nope")
    with pytest.raises(CorpusError, match="not a saved bigram table"):
        BigramTable.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        table.with_alpha(-1)


# ---------------------------------------------------------------------- masks
@pytest.mark.parametrize("family", FAMILIES)
def test_all_ones_mask_reproduces_the_model_and_zero_mask_equals_zeroed_weight(family):
    model = interp.load_model(f"random-{family}", backend="nnsight")
    tokens = torch.randint(0, 1000, (2, 10))
    reference = model.run(tokens)
    matrices = maskable_matrices(model)
    state = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    with masked(model, {m.name: torch.ones(m.shape, dtype=torch.bool) for m in matrices}):
        assert torch.equal(model.run(tokens), reference)
    target = matrices[len(matrices) // 2]
    with masked(model, {target.name: torch.zeros(target.shape)}):
        zeroed = model.run(tokens)
    saved = target.module.weight.data.clone()
    target.module.weight.data.zero_()
    try:
        assert torch.equal(zeroed, model.run(tokens))
    finally:
        target.module.weight.data.copy_(saved)
    assert not torch.equal(zeroed, reference)
    after = model.hf_model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_maskable_matrices_are_exactly_the_attention_and_mlp_weights(random_llama):
    names = [m.name for m in maskable_matrices(random_llama)]
    expected = [f"model.layers.{l}.{p}.weight" for l in range(3)
                for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert names == expected  # TransformerLens' bridge nesting is read through to the HF names


def test_masks_act_the_same_through_both_backends():
    outputs = []
    for backend in ("transformer_lens", "nnsight"):  # both eager (the bridge's attention): bit for bit
        model = interp.load_model("random-gemma", backend=backend, attention="eager")
        generator = torch.Generator().manual_seed(0)
        masks = {m.name: torch.rand(m.shape, generator=generator) > 0.5 for m in maskable_matrices(model)}
        with masked(model, masks):
            outputs.append(model.run(torch.arange(1, 9)[None]))
    assert torch.equal(outputs[0], outputs[1])


def test_mask_restored_after_an_exception_and_bad_masks_fail_clearly(random_llama):
    tokens = torch.randint(0, 1000, (1, 6))
    reference = random_llama.run(tokens)
    first = maskable_matrices(random_llama)[0]
    with pytest.raises(RuntimeError, match="boom"):
        with masked(random_llama, {first.name: torch.zeros(first.shape)}):
            raise RuntimeError("boom")
    assert torch.equal(random_llama.run(tokens), reference)
    with pytest.raises(MaskError, match="'model.embed_tokens.weight' is not a maskable weight"):
        with masked(random_llama, {"model.embed_tokens.weight": torch.ones(1)}):
            pass
    with pytest.raises(MaskError, match=r"has shape \(2, 2\)"):
        with masked(random_llama, {first.name: torch.ones(2, 2)}):
            pass
    gpt2 = interp.load_model("random-gpt2", backend="transformer_lens")
    with pytest.raises(MaskError, match="backend='nnsight'"):
        maskable_matrices(gpt2)


def test_mask_files_random_and_complement(tmp_path):
    generator = torch.Generator().manual_seed(0)
    masks = {"a.weight": torch.rand(8, 16, generator=generator) > 0.8, "b.weight": torch.rand(3, 5, generator=generator) > 0.5}
    assert {k: torch.equal(v, masks[k]) for k, v in load_masks(save_masks(masks, tmp_path / "m.npz")).items()} == \
        {"a.weight": True, "b.weight": True}  # 15 entries: not a whole number of bytes
    np.savez_compressed(tmp_path / "plain.npz", **{k: v.numpy() for k, v in masks.items()})  # older runs' files
    assert all(torch.equal(v, masks[k]) for k, v in load_masks(tmp_path / "plain.npz").items())
    rand = random_like(masks, seed=1)
    assert all(int(rand[k].sum()) == int(masks[k].sum()) for k in masks)
    assert kept_fraction(complement(masks)) == pytest.approx(1 - kept_fraction(masks))
    np.savez(tmp_path / "float.npz", x=np.ones(3))
    with pytest.raises(MaskError, match="not boolean"):
        load_masks(tmp_path / "float.npz")


# ---------------------------------------------------------------------- training
def test_subnetwork_of_the_toy_bigram_model_is_small_and_bigram_like(toy_bigram, markov, trained):
    table, _, held = markov
    assert trained.kept_fraction < 0.10
    rows = ablation_table(toy_bigram, held, table, trained.masks)
    assert rows["subnetwork"]["r"] > 0.9
    assert rows["full"]["r"] < rows["subnetwork"]["r"]  # the full model also does induction
    assert rows["random"]["r"] < 0.5 and rows["complement"]["r"] < 0.5
    assert rows["subnetwork"]["cross_entropy_to_bigram"] < rows["full"]["cross_entropy_to_bigram"]
    by_layer = kept_by_layer(trained.matrices, trained.masks, 2)
    assert by_layer[:, 1].sum() > 10 * by_layer[:, 0].sum()  # kept weights sit in the MLPs


def test_training_step_zero_is_the_half_masked_model_and_temperature_grows(toy_bigram, markov, trained):
    table, chunks, _ = markov
    config = trained.config
    first_batch = chunks[torch.randperm(len(chunks), generator=torch.Generator().manual_seed(config.seed))[:config.batch_size]]
    with masked(toy_bigram, {m.name: torch.full(m.shape, 0.5) for m in trained.matrices}):
        log_q = torch.log_softmax(toy_bigram.run(first_batch), -1)
    expected = table.cross_entropy(log_q, first_batch).mean().item()
    assert trained.history["cross_entropy"][0] == pytest.approx(expected, rel=1e-5)
    assert trained.history["soft_density"][0] == pytest.approx(0.5)
    assert np.allclose(trained.history["temperature"], 1.01 ** np.arange(trained.steps_run))


def test_early_stop_when_masks_are_decided(toy_bigram, markov):
    table, chunks, _ = markov
    config = SubnetworkConfig(lam=50.0, steps=2000, batch_size=4, seq_len=64, lr=0.05, temperature_growth=1.05,
                              check_every=5, max_epochs=100)
    result = train_subnetwork(toy_bigram, chunks, BigramTarget(table), config, progress=False)
    assert result.steps_run < 2000 and result.stop_reason.startswith("stopped at step")
    assert result.history["undecided"][-1] < 0.01 * max(result.history["kept"][-1], 0) or result.history["kept"][-1] == 0


class _FlakyTarget:
    """Bigram target whose loss is NaN on chosen calls (to force divergence)."""

    def __init__(self, table, bad_calls):
        self.inner, self.bad_calls, self.calls = BigramTarget(table), set(bad_calls), 0

    def cross_entropy(self, model, tokens, log_probs):
        self.calls += 1
        value = self.inner.cross_entropy(model, tokens, log_probs)
        return value * float("nan") if self.calls in self.bad_calls or "all" in self.bad_calls else value


def test_divergence_restarts_with_a_reshuffled_order_then_gives_up(toy_bigram, markov):
    table, chunks, _ = markov
    config = SubnetworkConfig(steps=5, batch_size=2, seq_len=64, lr=0.01, max_restarts=2)
    flags = [p.requires_grad for p in toy_bigram.hf_model.parameters()]
    messages = []
    result = train_subnetwork(toy_bigram, chunks, _FlakyTarget(table, {3}), config, progress=False, log=messages.append)
    assert result.restarts == 1 and result.steps_run == 5
    assert messages == ["mask training diverged at step 2 (loss nan); restart 1 of 2 with a reshuffled order"]
    with pytest.raises(TrainingError, match="diverged in all 3 attempts"):
        train_subnetwork(toy_bigram, chunks, _FlakyTarget(table, {"all"}), config, progress=False, log=messages.append)
    assert [p.requires_grad for p in toy_bigram.hf_model.parameters()] == flags  # the frozen base is thawed again


def test_bad_settings_fail_clearly(toy_bigram, markov):
    table, chunks, _ = markov
    with pytest.raises(ValueError, match="lambda must be a finite number >= 0, got -1"):
        SubnetworkConfig(lam=-1).validate()
    with pytest.raises(ValueError, match="unknown target 'bogus'"):
        SubnetworkConfig(target="bogus").validate()
    with pytest.raises(CorpusError, match="the corpus gives 400 chunks of 64 tokens and max_epochs is 1"):
        train_subnetwork(toy_bigram, chunks, BigramTarget(table),
                         SubnetworkConfig(steps=100, batch_size=8, seq_len=64, max_epochs=1), progress=False)


def test_optimal_pruning_target_is_the_full_models_distribution(toy_bigram, markov):
    _, chunks, _ = markov
    config = SubnetworkConfig(lam=0.0, target="model", steps=1, batch_size=2, seq_len=64)
    result = train_subnetwork(toy_bigram, chunks, FullModelTarget(), config, progress=False)
    batch = chunks[torch.randperm(len(chunks), generator=torch.Generator().manual_seed(0))[:2]]
    full = torch.softmax(toy_bigram.run(batch), -1)
    with masked(toy_bigram, {m.name: torch.full(m.shape, 0.5) for m in result.matrices}):
        log_q = torch.log_softmax(toy_bigram.run(batch), -1)
    assert result.history["cross_entropy"][0] == pytest.approx(-(full * log_q).sum(-1).mean().item(), rel=1e-5)


# ---------------------------------------------------------------------- evaluation
def test_bigram_fit_is_pearson_r_of_surprisals(toy_bigram, markov, trained):
    table, _, held = markov
    pairs = surprisal_pairs(toy_bigram, held, table, trained.masks)
    finite = np.isfinite(pairs["bigram"])
    fit = bigram_fit(toy_bigram, held, table, trained.masks)
    assert fit["r"] == pytest.approx(np.corrcoef(pairs["model"][finite], pairs["bigram"][finite])[0, 1])
    assert fit["n_tokens"] == held.shape[0] * (held.shape[1] - 1)
    assert fit["zero_probability_fraction"] == pytest.approx(1 - finite.mean())


def test_mask_overlap_against_the_row_shuffle_null():
    generator = torch.Generator().manual_seed(0)
    a = {"w": torch.zeros(50, 20, dtype=torch.bool)}
    a["w"][:5] = True  # five whole rows
    same = mask_overlap(a, a, n_permutations=50)
    assert same["overlap"] == 1.0 and same["jaccard"] == 1.0
    assert same["null_mean"] == pytest.approx(0.1, abs=0.06) and same["p_value"] == pytest.approx(1 / 51)
    other = {"w": torch.rand(50, 20, generator=generator) < 0.1}
    independent = mask_overlap(a, other, n_permutations=50)
    assert independent["p_value"] > 0.05
    with pytest.raises(ValueError, match="different weights"):
        mask_overlap(a, {"v": a["w"]})


def test_residual_maps_are_exact_at_the_ends(toy_bigram, markov):
    _, _, held = markov
    maps = residual_maps(toy_bigram, held[:8])
    assert maps["to_final"][-1] == pytest.approx(1.0, abs=1e-3)  # the final stream maps to itself
    assert maps["to_embedding"][0] == pytest.approx(1.0, abs=1e-3)  # Llama's first stream is the embedding
    assert maps["to_final"].shape == (3,)


# ---------------------------------------------------------------------- CLI
def test_cli_writes_a_run_folder(tmp_path):
    out = tmp_path / "bigram"
    assert cli.main(["bigram", "--model", "toy-bigram", "--corpus", "toy-markov", "--steps", "20", "--batch-size", "4",
                     "--seq-len", "64", "--lr", "0.01", "--temperature-growth", "1.01", "--lambda", "1", "10",
                     "--held-out-chunks", "8", "--permutations", "5", "--compare-optimal", "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    assert data["method"] == "bigram" and data["axes"] == ["layer", "matrix"] and data["shape"] == [2, 7]
    assert [row["lambda"] for row in data["extra"]["sweep"]] == [1.0, 10.0]
    assert set(data["extra"]["sweep"][0]["ablations"]) == {"full", "subnetwork", "random", "complement"}
    masks = load_masks(out / "masks-lambda1.npz")
    assert kept_fraction(masks) == pytest.approx(data["extra"]["sweep"][0]["kept_fraction"])
    assert (out / "masks-lambda10.npz").exists() and (out / "masks-optimal-lambda1.npz").exists()
    assert "overlap" in data["extra"]["optimal_pruning"]
    result = Result.load(out)
    assert result.arrays["residual_to_final"].shape == (2, 3)
    assert "kept fraction per weight matrix" in (out / "bigram.html").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--lambda", "-1"], "lambda must be a finite number >= 0, got -1"),
    (["--steps", "100000"], "use fewer steps"),
    (["--model", "random-gpt2", "--backend", "transformer_lens"], "backend='nnsight'"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, extra, message):
    args = ["bigram", "--model", "toy-bigram", "--corpus", "toy-markov", "--steps", "2", "--batch-size", "2",
            "--seq-len", "64", "--out", str(tmp_path / "r")]
    assert cli.main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("interp: error:") and message in err
