"""The logit lens: its last stage is the model's output exactly, on every family; its other stages
equal the final norm and unembedding applied by hand to the residual stream read with plain
hooks; the analysis' numbers equal the task metric; a broken decoding is caught."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import interp
from interp import metrics
from interp.lens import lens_logits, stages, unembed
from interp.lens_analysis import LensConfig, run_lens
from interp.shortcuts import ShortcutError
from interp.tasks import Task
from interp.ui import cli

FAMILIES = ["gpt2", "neox", "llama", "llama3", "gemma", "gemma2", "gemma3", "mistral", "qwen2", "qwen3", "phi3", "olmo2",
            "mixtral", "qwen2moe", "olmoe"]
TEXTS = ["The Eiffel Tower is in", "Big Ben is in the city of"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_stage_is_the_models_output_exactly(family):
    model = interp.load_model(f"random-{family}")
    tokens = model.tokenize(TEXTS, padding_side="left")
    lens, logits = lens_logits(model, tokens)
    assert lens.shape[0] == model.config.n_layers + 1
    real = tokens.mask
    assert torch.equal(lens[-1][real], logits[real])


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_the_last_stage_is_the_models_output_on_the_bridge(family):
    model = interp.load_model(f"random-{family}", backend="transformer_lens")
    tokens = model.tokenize(TEXTS)
    lens, logits = lens_logits(model, tokens)
    assert (lens[-1][tokens.mask] - logits[tokens.mask]).abs().max().item() <= 1e-5


def test_every_stage_equals_the_final_norm_and_unembedding_of_the_hooked_residual():
    """Gemma-2 (final soft-capping): stage l + 1 is layer l's output through model.norm, lm_head and
    tanh soft-capping, computed by hand."""
    model = interp.load_model("random-gemma2")
    hf = model.hf_model
    ids = model.to_tokens(TEXTS[0])
    outputs = []
    handles = [layer.register_forward_hook(lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach()))
               for layer in hf.model.layers]
    with torch.no_grad():
        hf(ids)
    for handle in handles:
        handle.remove()
    lens, _ = lens_logits(model, interp.batch.Tokens(ids))
    cap = hf.config.final_logit_softcapping
    assert cap
    for layer, residual in enumerate(outputs):
        with torch.no_grad():
            by_hand = torch.tanh(hf.lm_head(hf.model.norm(residual)) / cap) * cap
        assert torch.allclose(lens[layer + 1], by_hand, atol=1e-5), layer


def test_the_analysis_last_stage_equals_the_task_metric():
    model = interp.load_model("random-llama")
    pairs = [{"clean": "The Eiffel Tower is in the city of", "corrupt": "The Colosseum is in the city of", "answer": " Paris",
              "wrong_answer": " Rome"},
             {"clean": "Big Ben is in", "corrupt": "Big Ben was in", "answer": " London", "wrong_answer": " Paris"}]
    task = Task.from_pairs(model, "mixed", pairs)
    result = run_lens(model, task, LensConfig(top_k=3, progress=False))
    assert result.components == stages(model) and result.shape == [model.config.n_layers + 1]
    expected = metrics.measure(model, task, "logit_diff").mean().item()
    assert result.scores[-1] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert result.arrays["kl_to_final"][-1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(result.arrays["kl_to_final"] >= -1e-6)
    first = result.arrays["first_probability"]
    assert first.shape == (model.config.n_layers + 1, len(task.prompt_ids[0]))
    assert len(result.extra["top_tokens"][-1][-1]) == 3
    ids = torch.tensor([task.prompt_ids[0]])
    final = model.run(ids)[0, -1].float().softmax(-1)
    assert first[-1, -1] == pytest.approx(final[task.answer_ids[0][0]].item(), rel=1e-5)


def test_a_wrong_decoding_is_caught(monkeypatch):
    model = interp.load_model("random-llama")
    import interp.lens as lens_module

    monkeypatch.setattr(lens_module, "unembed", lambda m, r: unembed(m, r) * 1.01)
    with pytest.raises(ShortcutError, match="the logit lens's decoding of the last residual stream"):
        lens_logits(model, model.tokenize(TEXTS[0]))


def test_the_command_writes_a_run_folder_and_refuses_several_token_answers(tmp_path, capsys):
    out = tmp_path / "lens"
    assert cli.main(["lens", "--model", "random-llama", "--task", "ioi", "--n-prompts", "2", "--no-progress",
                     "--out", str(out)]) == 0
    assert (out / "result.json").is_file() and (out / "lens.html").is_file()
    assert "per stage (logit_diff):" in capsys.readouterr().out
    rows = tmp_path / "long.jsonl"
    rows.write_text('{"clean": "The capital of France is", "corrupt": "The capital of Spain is", "answer": " Paris France", '
                    '"wrong_answer": " Madrid"}\n')
    assert cli.main(["lens", "--model", "random-llama", "--task", str(rows), "--out", str(tmp_path / "x")]) == 2
    assert "the lens reads one answer token" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["llama", "gemma2", "olmo2"])
def test_the_stage_after_each_attention_is_resid_mid(family):
    """With sublayers, the stage between a layer's attention and its MLP decodes the layer's
    resid_mid as TransformerLens' bridge hooks it (blocks.<l>.hook_resid_mid)."""
    model = interp.load_model(f"random-{family}", backend="transformer_lens")
    tokens = model.tokenize(TEXTS)
    lens, logits = lens_logits(model, tokens, sublayers=True)
    names = stages(model, sublayers=True)
    assert names[:3] == ["L0.RESID_PRE", "L0.RESID_MID", "L0.RESID_POST"] and len(names) == 2 * model.config.n_layers + 1
    _, cache = model.run_with_cache(tokens, ["L1.RESID_MID"])
    real = tokens.mask
    torch.testing.assert_close(lens[names.index("L1.RESID_MID")][real], unembed(model, cache["L1.RESID_MID"])[real],
                               atol=1e-4, rtol=1e-4)
    plain, _ = lens_logits(model, tokens)
    torch.testing.assert_close(lens[[names.index(n) for n in stages(model)]], plain)


def test_sublayer_stages_are_refused_where_attention_and_mlp_run_in_parallel(tmp_path, capsys):
    model = interp.load_model("random-neox")
    assert model.config.parallel_attn_mlp
    with pytest.raises(ValueError, match="runs attention and MLP in parallel"):
        lens_logits(model, model.tokenize(TEXTS[0]), sublayers=True)
    assert cli.main(["lens", "--model", "random-llama", "--task", "ioi", "--n-prompts", "2", "--sublayers", "--no-progress",
                     "--out", str(tmp_path / "mid")]) == 0
    data = json.loads((tmp_path / "mid" / "result.json").read_text())
    assert len(data["components"]) == 7 and data["components"][1] == "L0.RESID_MID"
