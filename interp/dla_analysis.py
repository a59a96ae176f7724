"""The direct-logit-attribution analysis (``interp dla``): what each head, MLP and bias writes
directly into the answer's logit difference (:mod:`interp.dla`), averaged over a task's prompts.

``scores`` are the heads' contributions as a layer x head grid; arrays ``mlp`` and ``attn_bias``
[n_layers] hold the MLPs' and attention biases'; the payload holds the embeddings', the final
norm's and unembedding's biases, the frozen-scale total (the sum of every part) and the model's
own logit difference, which equal each other (checked on every prompt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from interp.analysis import Analysis, Config, ConfigError, option, register
from interp.dla import direct_logit_attribution, mean_by_source
from interp.model import Model
from interp.results import Result
from interp.tasks import Task


@dataclass(frozen=True)
class DLAConfig(Config):
    """``interp dla``: direct logit attribution at each prompt's last token."""

    neurons: int = option(0, "also split every MLP into its neurons and list the N largest (array neurons: every "
                              "neuron's mean part; 0: no split)", minimum=0)
    by_source: bool = option(False, "also split every head's part over the source positions it attends to (array "
                                    "by_source [prompts, layers, heads, positions], positions counted from the last "
                                    "token; the payload lists the largest)")
    progress: bool = option(True, "show progress bars")


@dataclass
class DLAPayload:
    """Contributions that are not per head or per layer, and the checked totals (means over the
    prompts, in logits)."""

    embed: float
    final_norm_bias: float
    unembed_bias: float
    total: float
    logit_diff: float
    top_neurons: list | None = None  # [[L<l>.N<n>, mean part], ...], largest |part| first (--neurons)
    # [[L<l>.H<h>, source position (from the last token: -1 is the last), its token in the first
    # prompt, mean part], ...], the 20 largest |part| first (--by-source)
    top_sources: list | None = None
    prompt_tokens: list | None = None  # each prompt's tokens, the by_source array's labels (--by-source)


def run_dla(model: Model, task: Task, config: DLAConfig = DLAConfig()) -> Result:
    """Direct logit attribution over ``task`` (see module doc); answers of several tokens are refused."""
    if task.multi_token:
        raise ConfigError(f"direct logit attribution reads one answer token; task {task.name!r} has answers of several tokens")
    start = time.perf_counter()
    n, heads = model.config.n_layers, model.config.n_heads
    found = []
    for i, ids in enumerate(task.prompt_ids):
        wrong = task.wrong_ids[i][0] if task.wrong_ids else None
        found.append(direct_logit_attribution(model, ids, task.answer_ids[i][0], wrong, neurons=config.neurons > 0,
                                              by_source=config.by_source))
    mean = {name: float(np.mean([a.parts[name] for a in found])) for name in found[0].parts}
    names = [f"L{layer}.H{h}" for layer in range(n) for h in range(heads)]
    payload = DLAPayload(mean["EMBED"], mean["FINAL_NORM_BIAS"], mean["UNEMBED_BIAS"],
                         float(np.mean([a.total for a in found])), float(np.mean([a.logit_diff for a in found])))
    extra_arrays = {}
    if config.neurons:
        per_neuron = torch.stack([a.neurons for a in found]).mean(0).numpy()  # [n_layers, d_mlp]
        order = np.argsort(-np.abs(per_neuron), axis=None, kind="stable")[:config.neurons]
        payload.top_neurons = [[f"L{k // per_neuron.shape[1]}.N{k % per_neuron.shape[1]}", float(per_neuron.flat[k])]
                               for k in order]
        extra_arrays["neurons"] = per_neuron
    if config.by_source:
        extra_arrays["by_source"], payload.top_sources = _by_source(model, task, found)
        payload.prompt_tokens = [model.to_str_tokens(ids) for ids in task.prompt_ids]
    return Result(
        method="dla", analysis="dla", model=model.config.name, task=task.name,
        metric="logit_diff" if task.wrong_ids else "logit", granularity="heads", components=names,
        scores=np.array([mean[name] for name in names]), shape=[n, heads], axes=["layer", "head"],
        clean_metric=payload.logit_diff, tokens=list(task.first_tokens), wall_seconds=time.perf_counter() - start,
        n_forward_passes=len(found),
        settings={"n_prompts": len(found), "frozen_norm_scale": True, "neurons": config.neurons,
                  "by_source": config.by_source},
        arrays={"mlp": np.array([mean[f"L{layer}.MLP"] for layer in range(n)]),
                "attn_bias": np.array([mean[f"L{layer}.ATTN_BIAS"] for layer in range(n)]),
                "per_prompt": np.array([[a.parts[name] for name in names] for a in found]), **extra_arrays},
        extra=vars(payload),
    )


def _by_source(model: Model, task: Task, found: list, top: int = 20) -> tuple[np.ndarray, list]:
    """The sources' parts [n_prompts, n_layers, n_heads, longest prompt], each prompt's aligned at
    its last token (NaN before a shorter prompt's first), and the ``top`` largest mean parts."""
    width = max(a.by_source.shape[-1] for a in found)
    stacked = np.full((len(found), *found[0].by_source.shape[:2], width), np.nan)
    for i, attribution in enumerate(found):
        stacked[i, ..., width - attribution.by_source.shape[-1]:] = attribution.by_source.numpy()
    mean = mean_by_source(stacked)
    first = model.to_str_tokens(task.prompt_ids[0])
    order = np.argsort(-np.nan_to_num(np.abs(mean), nan=-1.0), axis=None, kind="stable")[:top]
    listed = []
    for k in order:
        layer, head, column = np.unravel_index(k, mean.shape)
        offset = int(column) - width  # -1: the last token
        token = first[offset] if -offset <= len(first) else ""
        listed.append([f"L{layer}.H{head}", offset, token, float(mean[layer, head, column])])
    return stacked, listed


register(Analysis(
    name="dla", inputs="task", config=DLAConfig, run=run_dla, methods=("dla",), page="DLA", payload=DLAPayload,
    figures="interp.ui.figures:dla_figures", figure_file="dla.html",
    summary="direct logit attribution: what each head, MLP and bias writes into the answer's logit difference"))
