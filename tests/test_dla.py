"""Direct logit attribution: the parts sum to the frozen-scale logit difference (which is the
model's own) on every family of the matrix; one head's part equals its output through W_O
projected by hand, on Llama and through Gemma-2's frozen attention output norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp.dla import direct_logit_attribution
from interp.dla_analysis import DLAConfig, run_dla
from interp.tasks import Task
from interp.ui import cli

FAMILIES = ["gpt2", "neox", "llama", "llama3", "gemma", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen2moe", "olmoe",
            "gemma2", "gemma3", "olmo2"]
TEXT = "The Eiffel Tower is in the city of"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_parts_sum_to_the_models_logit_difference(family):
    model = interp.load_model(f"random-{family}")
    ids = model.tokenizer(TEXT)["input_ids"]
    found = direct_logit_attribution(model, ids, 100, 200)
    assert found.total == pytest.approx(found.logit_diff, abs=1e-5)
    logits = model.run(torch.tensor([ids]))[0, -1].double()
    cap = getattr(model.hf_model.config, "final_logit_softcapping", None)
    if cap:  # DLA is in raw logits, before Gemma-2's soft-capping: undo it
        logits = cap * torch.atanh(logits / cap)
    assert found.logit_diff == pytest.approx((logits[100] - logits[200]).item(), abs=1e-4)
    assert len([p for p in found.parts if ".H" in p]) == model.config.n_layers * model.config.n_heads


def test_the_family_list_is_the_whole_matrix():
    from interp.toy_models import RANDOM_FAMILIES

    assert set(FAMILIES) == set(RANDOM_FAMILIES)


def _last_inputs(hf, ids: torch.Tensor, modules: dict) -> dict:
    """{key: the last position's input of each module} in a plain forward of ``ids``."""
    seen = {}
    handles = [module.register_forward_pre_hook(lambda m, args, key=key: seen.update({key: args[0][0, -1].detach()}))
               for key, module in modules.items()]
    with torch.no_grad():
        hf(ids)
    for handle in handles:
        handle.remove()
    return seen


def test_a_gemma2_heads_part_goes_through_the_frozen_attention_output_norm():
    """Gemma-2: head 0 of layer 1 writes W_O's slice of its z; the attention output norm divides
    by the rms of the whole attention output o (frozen), multiplies by 1 + w; then the final norm
    with the scale of the clean final residual, onto W_U[a] - W_U[b]."""
    model = interp.load_model("random-gemma2")
    hf = model.hf_model
    ids = torch.tensor([model.tokenizer(TEXT)["input_ids"]])
    layer = hf.model.layers[1]
    seen = _last_inputs(hf, ids, {"z": layer.self_attn.o_proj, "o": layer.post_attention_layernorm, "final": hf.model.norm})

    def rms(x, norm):
        return torch.sqrt(x.double().pow(2).mean() + norm.eps)

    d_head = model.config.d_head
    write = layer.self_attn.o_proj.weight[:, :d_head].double() @ seen["z"][:d_head].double()
    post = layer.post_attention_layernorm
    written = (1 + post.weight.double()) * write / rms(seen["o"], post)
    final = hf.model.norm
    direction = hf.lm_head.weight[100].double() - hf.lm_head.weight[200].double()
    expected = (((1 + final.weight.double()) * written / rms(seen["final"], final)) @ direction).item()
    found = direct_logit_attribution(model, ids[0].tolist(), 100, 200)
    assert found.parts["L1.H0"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


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
    assert cli.main(["dla", "--model", "random-gemma2", "--task", "ioi", "--n-prompts", "2", "--no-progress",
                     "--out", str(tmp_path / "gemma2")]) == 0
    rows = tmp_path / "long.jsonl"
    rows.write_text('{"clean": "The capital of France is", "corrupt": "The capital of Spain is", "answer": " Paris France", '
                    '"wrong_answer": " Madrid"}\n')
    assert cli.main(["dla", "--model", "random-llama", "--task", str(rows), "--out", str(tmp_path / "x")]) == 2
    assert "direct logit attribution reads one answer token" in capsys.readouterr().err


def test_a_neurons_part_is_its_activation_times_its_output_row_projected_by_hand():
    """Llama: neuron 7 of layer 1 writes act * W_down[:, 7]; the neurons' parts sum to the MLP's
    (checked inside); the analysis lists the largest and keeps every neuron's mean."""
    model = interp.load_model("random-llama")
    hf = model.hf_model
    ids = torch.tensor([model.tokenizer(TEXT)["input_ids"]])
    down = hf.model.layers[1].mlp.down_proj
    seen = _last_inputs(hf, ids, {"a": down, "final": hf.model.norm})
    norm = hf.model.norm
    rms = torch.sqrt(seen["final"].double().pow(2).mean() + norm.variance_epsilon)
    direction = hf.lm_head.weight[100].double() - hf.lm_head.weight[200].double()
    write = seen["a"][7].double() * down.weight[:, 7].double()
    expected = ((norm.weight.double() * write / rms) @ direction).item()
    found = direct_logit_attribution(model, ids[0].tolist(), 100, 200, neurons=True)
    assert found.neurons[1, 7].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert found.neurons.sum(1).numpy() == pytest.approx([found.parts[f"L{l}.MLP"] for l in range(3)], abs=1e-5)
    task = Task.from_pairs(model, "one", [{"clean": TEXT, "corrupt": TEXT, "answer": " Paris", "wrong_answer": " Rome"}])
    result = run_dla(model, task, DLAConfig(neurons=5, progress=False))
    top = result.extra["top_neurons"]
    assert len(top) == 5 and abs(top[0][1]) == pytest.approx(float(abs(result.arrays["neurons"]).max()))
    with pytest.raises(ValueError, match="mixtures of"):
        direct_logit_attribution(interp.load_model("random-mixtral"), ids[0].tolist(), 100, 200, neurons=True)


def test_a_heads_sources_are_its_attention_times_values_projected_by_hand():
    """Llama with 2 KV groups for 4 heads: head 3 of layer 1 reads source s as A[-1, s] v_1[s]
    (its KV group's value); through o_proj's slice and the frozen final RMSNorm onto W_U[a] - W_U[b].
    The sources sum to the head's part."""
    model = interp.load_model("random-llama")
    hf = model.hf_model
    ids = torch.tensor([model.tokenizer(TEXT)["input_ids"]])
    attention = hf.model.layers[1].self_attn
    values = {}
    handle = attention.v_proj.register_forward_hook(lambda m, args, out: values.update(v=out[0].detach()))
    with torch.no_grad(), model.eager_attention():  # eager: the probabilities are returned
        out = hf(ids, output_attentions=True, output_hidden_states=True)
    handle.remove()
    d_head, group = model.config.d_head, 3 // (model.config.n_heads // model.config.n_kv_heads)
    pattern = out.attentions[1][0, 3, -1].double()  # [pos]
    v = values["v"][:, group * d_head:(group + 1) * d_head].double()  # [pos, d_head]
    writes = (pattern[:, None] * v) @ attention.o_proj.weight[:, 3 * d_head:4 * d_head].double().T  # [pos, d_model]
    final = out.hidden_states[-1][0, -1]  # after the final norm: recompute its input's scale instead
    seen = _last_inputs(hf, ids, {"final": hf.model.norm})
    norm = hf.model.norm
    rms = torch.sqrt(seen["final"].double().pow(2).mean() + norm.variance_epsilon)
    direction = hf.lm_head.weight[100].double() - hf.lm_head.weight[200].double()
    expected = (norm.weight.double() * writes / rms) @ direction
    found = direct_logit_attribution(model, ids[0].tolist(), 100, 200, by_source=True)
    assert final is not None and found.by_source.shape == (3, 4, ids.shape[1])
    torch.testing.assert_close(found.by_source[1, 3], expected, rtol=1e-4, atol=1e-6)
    assert found.by_source[1, 3].sum().item() == pytest.approx(found.parts["L1.H3"], abs=1e-6)
    assert found.by_source[1, 3].abs().max() > 1e-3


def test_the_induction_head_writes_the_answer_from_the_token_after_the_earlier_match():
    """Known ground truth: on [BOS] r1..rn r1..r(n-1) the toy induction model predicts rn by
    attending from the last token to rn's first occurrence; the largest source part of any head
    is there, and nearly all of the logit difference comes from it."""
    model = interp.load_model("toy-induction")
    task = interp.tasks.induction(model, n_prompts=4, seed=0)
    result = run_dla(model, task, DLAConfig(by_source=True, progress=False))
    by_source = result.arrays["by_source"]  # [prompts, layers, heads, positions]
    bos = len(task.prompt_ids[0]) - 2 * 10 + 1  # 1 where the tokenizer adds BOS
    answer_at = bos + 10 - 1  # rn's first occurrence
    for i in range(len(task)):
        flat = abs(by_source[i]).reshape(-1, by_source.shape[-1])
        assert int(flat.max(0).argmax()) == answer_at, i
    from_there = by_source[:, :, :, answer_at].sum((1, 2)).mean()  # all heads (layer 1's four are induction heads)
    assert from_there > 0.9 * result.extra["logit_diff"] > 5
    head, offset, token, part = result.extra["top_sources"][0]
    assert head.startswith("L1.") and offset == answer_at - by_source.shape[-1] and part > 1
    assert token == model.to_str_tokens(task.prompt_ids[0])[answer_at]


@pytest.mark.parametrize("family", ["gemma2", "phi3", "gpt2"])
def test_sources_sum_to_each_head_on_other_families(family, tmp_path):
    """Gemma-2's attention output norm (frozen), Phi-3's fused q/k/v, GPT-2's value bias: the
    function checks the sums; the command writes the array and the largest parts."""
    out = tmp_path / family
    assert cli.main(["dla", "--model", f"random-{family}", "--task", "ioi", "--n-prompts", "2", "--by-source",
                     "--no-progress", "--out", str(out)]) == 0
    from interp.results import Result

    result = Result.load(out)
    model = interp.load_model(f"random-{family}")
    assert result.arrays["by_source"].shape[:3] == (2, model.config.n_layers, model.config.n_heads)
    heads = result.arrays["per_prompt"].reshape(2, model.config.n_layers, model.config.n_heads)
    assert abs(result.arrays["by_source"]).max() > 1e-4
    np.testing.assert_allclose(np.nansum(result.arrays["by_source"], -1), heads, atol=1e-5)
    assert len(result.extra["top_sources"]) == 20
