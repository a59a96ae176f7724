"""The tuned lens: the least-squares translators against a direct solve, the KL table against a
brute-force computation, save/load and its refusals, the lens decoding through translators, the
KL refinement keeping only what helps, the command, and on SmolLM2 that it beats the logit lens
on held-out text at every stage but the last."""

import json

import pytest
import torch

from interp.corpus import load_corpus
from interp.lens import lens_logits, stages, unembed
from interp.tuned_lens import LensFileError, TunedLens, _least_squares, fit_tuned_lens, kl_per_stage, residuals
from interp.ui import cli


def _tokens(model, n: int, length: int = 16, seed: int = 0) -> torch.Tensor:
    return load_corpus("python-docs").token_chunks(model.tokenizer, length, n, seed=seed)


def test_translators_are_the_least_squares_solution_and_the_last_is_the_identity(random_llama):
    hidden = residuals(random_llama, _tokens(random_llama, 24))
    weight = _least_squares(hidden, ridge=0.0)
    target = hidden[-1] / hidden[-1].pow(2).mean(-1, keepdim=True).sqrt()
    for stage in (0, 2):
        x = torch.cat([hidden[stage], torch.ones(hidden.shape[1], 1)], 1).double()
        solution = torch.linalg.lstsq(x, target.double()).solution.float()
        torch.testing.assert_close(weight[stage], solution, atol=2e-3, rtol=2e-3)
    d = random_llama.config.d_model
    assert torch.equal(weight[-1], torch.cat([torch.eye(d), torch.zeros(1, d)]))


def test_the_kl_table_and_the_decoding_by_hand(random_llama, tmp_path):
    lens = fit_tuned_lens(random_llama, _tokens(random_llama, 16), _tokens(random_llama, 4, seed=1))
    held_out = residuals(random_llama, _tokens(random_llama, 4, seed=1))
    final = unembed(random_llama, held_out[-1]).log_softmax(-1)
    for stage in (0, 1):
        tuned = unembed(random_llama, lens.translate(stage, held_out[stage])).log_softmax(-1)
        by_hand = (final.exp() * (final - tuned)).sum(-1).mean().item()
        assert lens.report["kl_tuned_lens"][stage] == pytest.approx(by_hand, rel=1e-4)
    assert lens.report["kl_logit_lens"] == pytest.approx(kl_per_stage(random_llama, held_out), rel=1e-6)
    assert lens.report["kl_tuned_lens"][-1] == pytest.approx(0.0, abs=1e-6)
    tokens = random_llama.tokenize(["the cat sat on the mat", "a b"])
    decoded, logits = lens_logits(random_llama, tokens, lens)  # checks the last stage against the model itself
    _, cache = random_llama.run_with_cache(tokens, ["L1.RESID_POST"])
    torch.testing.assert_close(decoded[2], unembed(random_llama, lens.translate(2, cache["L1.RESID_POST"])))
    lens.save(tmp_path / "lens")
    loaded = TunedLens.load(tmp_path / "lens", random_llama)
    assert torch.equal(loaded.weight, lens.weight) and loaded.report == json.loads(json.dumps(lens.report))


def test_a_lens_file_for_another_model_or_broken_is_refused(random_llama, tmp_path):
    lens = TunedLens(random_llama.config.name, stages(random_llama),
                     torch.zeros(len(stages(random_llama)), random_llama.config.d_model + 1, random_llama.config.d_model),
                     random_llama.config.d_vocab)
    folder = lens.save(tmp_path / "lens")
    info = json.loads((folder / "lens.json").read_text())
    for change, message in (({"model": "gpt2"}, "trained for 'gpt2', not 'random-llama'"),
                            ({"d_vocab": 7}, "needs"), ({"format": "x"}, "not written by interp")):
        (folder / "lens.json").write_text(json.dumps({**info, **change}))
        with pytest.raises(LensFileError, match=message):
            TunedLens.load(folder, random_llama)
    (folder / "lens.json").write_text("{")
    with pytest.raises(LensFileError, match="not valid JSON"):
        TunedLens.load(folder, random_llama)
    with pytest.raises(LensFileError, match="lens.json is missing"):
        TunedLens.load(tmp_path / "nothing", random_llama)


def test_kl_steps_are_kept_only_where_they_lower_the_validation_kl(random_llama):
    train = _tokens(random_llama, 20)
    lens = fit_tuned_lens(random_llama, train, _tokens(random_llama, 4, seed=1), steps=3, lr=1e-2, batch_tokens=32)
    hidden = residuals(random_llama, train)
    valid_rows = hidden.shape[1] // 5
    start = _least_squares(hidden[:, valid_rows:], 1e-3)
    refined = set(lens.report["refined_stages"])
    for i, name in enumerate(lens.stages):
        assert torch.equal(lens.weight[i], start[i]) == (name not in refined), name
    plain = TunedLens(lens.model, lens.stages, start, lens.d_vocab)
    before, after = kl_per_stage(random_llama, hidden[:, :valid_rows], plain), kl_per_stage(random_llama, hidden[:, :valid_rows], lens)
    assert all(a < b for a, b, name in zip(after, before, lens.stages) if name in refined)


def test_the_commands(tmp_path, capsys):
    out = tmp_path / "fit"
    assert cli.main(["tuned-lens", "--model", "random-llama", "--train-chunks", "6", "--held-out-chunks", "2",
                     "--chunk-length", "16", "--no-progress", "--out", str(out)]) == 0
    assert (out / "tuned-lens" / "lens.safetensors").is_file() and (out / "tuned-lens.html").is_file()
    assert "logit lens" in capsys.readouterr().out
    assert cli.main(["lens", "--model", "random-llama", "--task", "ioi", "--n-prompts", "2", "--tuned", str(out),
                     "--no-progress", "--out", str(tmp_path / "lens")]) == 0
    assert json.loads((tmp_path / "lens" / "result.json").read_text())["method"] == "tuned-lens"
    assert cli.main(["lens", "--model", "toy-induction", "--task", "induction", "--n-prompts", "2", "--tuned", str(out),
                     "--out", str(tmp_path / "bad")]) == 2
    assert "was trained for 'random-llama', not 'toy-induction'" in capsys.readouterr().err


def test_the_tuned_lens_beats_the_logit_lens_on_smollm2(smollm2):
    lens = fit_tuned_lens(smollm2, _tokens(smollm2, 24, length=64), _tokens(smollm2, 8, length=64, seed=1))
    logit, tuned = lens.report["kl_logit_lens"], lens.report["kl_tuned_lens"]
    assert all(t < l for t, l in zip(tuned[:-1], logit[:-1])), list(zip(tuned, logit))
    assert tuned[-1] == pytest.approx(0.0, abs=1e-5)
