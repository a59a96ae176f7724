"""Direct logit attribution: the parts sum to the frozen-scale logit difference (which is the
model's own) on every family whose sublayers write additively; one head's part equals its output
through W_O projected by hand; other families are one line."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.architectures import UnsupportedArchitectureError
from interp.dla import direct_logit_attribution
from interp.dla_analysis import DLAConfig, run_dla
from interp.tasks import Task
from interp.ui import cli

ADDITIVE = ["gpt2", "neox", "llama", "llama3", "gemma", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen2moe", "olmoe"]
NORMED = ["gemma2", "gemma3", "olmo2"]
TEXT = "The Eiffel Tower is in the city of"


@pytest.mark.parametrize("family", ADDITIVE)
def test_the_parts_sum_to_the_models_logit_difference(family):
    model = interp.load_model(f"random-{family}")
    ids = model.tokenizer(TEXT)["input_ids"]
    found = direct_logit_attribution(model, ids, 100, 200)
    assert found.total == pytest.approx(found.logit_diff, abs=1e-5)
    logits = model.run(torch.tensor([ids]))[0, -1].double()
    assert found.logit_diff == pytest.approx((logits[100] - logits[200]).item(), abs=1e-4)
    assert len([p for p in found.parts if ".H" in p]) == model.config.n_layers * model.config.n_heads


@pytest.mark.parametrize("family", NORMED)
def test_families_with_normed_sublayer_outputs_are_one_line(family):
    model = interp.load_model(f"random-{family}")
    with pytest.raises(UnsupportedArchitectureError, match="direct logit attribution does not apply"):
        direct_logit_attribution(model, model.tokenizer(TEXT)["input_ids"], 100, 200)


def test_one_heads_part_is_its_output_projected_by_hand():
    """Llama: head 1 of layer 2 writes o_proj's slice of its z; through the final RMSNorm with the
    scale of the clean final residual, onto W_U[a] - W_U[b]."""
    model = interp.load_model("random-llama")
    hf = model.hf_model
    ids = torch.tensor([model.tokenizer(TEXT)["input_ids"]])
    z, final = {}, {}
    layer = hf.model.layers[2]
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: z.update(x=args[0][0, -1].detach())),
               hf.model.norm.register_forward_pre_hook(lambda m, args: final.update(x=args[0][0, -1].detach()))]
    with torch.no_grad():
        hf(ids)
    for handle in handles:
        handle.remove()
    d_head = model.config.d_head
    write = layer.self_attn.o_proj.weight[:, d_head:2 * d_head].double() @ z["x"][d_head:2 * d_head].double()
    norm = hf.model.norm
    rms = torch.sqrt(final["x"].double().pow(2).mean() + norm.variance_epsilon)
    direction = hf.lm_head.weight[100].double() - hf.lm_head.weight[200].double()
    expected = ((norm.weight.double() * write / rms) @ direction).item()
    found = direct_logit_attribution(model, ids[0].tolist(), 100, 200)
    assert found.parts["L2.H1"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_the_analysis_averages_prompts_and_the_command_writes_its_folder(tmp_path, capsys):
    model = interp.load_model("random-llama")
    pairs = [{"clean": "The Eiffel Tower is in the city of", "corrupt": "The Colosseum is in the city of", "answer": " Paris",
              "wrong_answer": " Rome"},
             {"clean": "Big Ben is in", "corrupt": "Big Ben was in", "answer": " London", "wrong_answer": " Paris"}]
    task = Task.from_pairs(model, "mixed", pairs)
    result = run_dla(model, task, DLAConfig(progress=False))
    assert result.extra["total"] == pytest.approx(result.extra["logit_diff"], abs=1e-5)
    parts = (result.scores.sum() + result.arrays["mlp"].sum() + result.arrays["attn_bias"].sum() + result.extra["embed"]
             + result.extra["final_norm_bias"] + result.extra["unembed_bias"])
    assert parts == pytest.approx(result.extra["total"], abs=1e-5)
    assert result.arrays["per_prompt"].shape == (2, model.config.n_layers * model.config.n_heads)
    out = tmp_path / "dla"
    assert cli.main(["dla", "--model", "random-llama", "--task", "ioi", "--n-prompts", "2", "--no-progress",
                     "--out", str(out)]) == 0
    assert (out / "dla.html").is_file()
    assert cli.main(["dla", "--model", "random-gemma2", "--task", "ioi", "--n-prompts", "2", "--out", str(tmp_path / "x")]) == 2
    assert "direct logit attribution does not apply to random-gemma2" in capsys.readouterr().err
