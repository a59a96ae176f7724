"""The logit-lens analysis (``interp lens``): what each stage of the residual stream predicts.

``run_lens(model, task, LensConfig())`` decodes the residual stream before layer 0 and after every
layer (:mod:`interp.lens`) at each prompt's last token and reports, per stage, averaged over the
task's prompts: the answer's logit minus the wrong answer's (``scores``), the answer's probability
and rank, the KL divergence from the model's final distribution to the stage's, and the stage's
entropy. For the first prompt it also keeps, per stage and position, the answer's probability and
rank, the KL to the final distribution and the top-k tokens (the heatmap with token labels). At
the last stage the numbers are the model's own (checked on every run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from interp.analysis import Analysis, Config, ConfigError, Printed, option, register
from interp.batch import Tokens
from interp.lens import lens_logits, stages
from interp.metrics import kl_divergence
from interp.model import Model
from interp.results import Result
from interp.tasks import Task


@dataclass(frozen=True)
class LensConfig(Config):
    """``interp lens``: the logit lens over a task's prompts."""

    top_k: int = option(5, "tokens listed per stage and position for the first prompt", minimum=1, maximum=50)
    tuned: str | None = option(None, "a tuned-lens folder (interp tuned-lens writes one in its run folder): decode "
                                     "each stage through its translator instead of directly")
    sublayers: bool = option(False, "also decode after each attention sublayer, before the layer's MLP")
    progress: bool = option(True, "show progress bars")


@dataclass
class LensPayload:
    """``top_tokens[stage][position]``: the first prompt's top-k (token, probability) pairs;
    ``stages``: the residual-stream sites decoded; ``answer`` / ``wrong_answer``: the first
    prompt's answer tokens."""

    stages: list
    top_tokens: list
    answer: str
    wrong_answer: str | None


@torch.no_grad()
def run_lens(model: Model, task: Task, config: LensConfig = LensConfig()) -> Result:
    """The logit lens (see module doc). A task whose answers have several tokens is refused."""
    if task.multi_token:
        raise ConfigError(f"the lens reads one answer token; task {task.name!r} has answers of several tokens")
    start = time.perf_counter()
    names = stages(model, config.sublayers)
    tuned = None
    if config.tuned is not None:
        from interp.tuned_lens import TunedLens

        tuned = TunedLens.load(config.tuned, model)
    per_prompt = {key: [] for key in ("logit_diff", "probability", "rank", "kl_to_final", "entropy")}
    first = {}
    for i, ids in enumerate(task.prompt_ids):
        tokens = Tokens(torch.tensor([ids], device=model.device))
        lens, _ = lens_logits(model, tokens, tuned, config.sublayers)  # [stage, 1, pos, vocab]
        log_p = lens[:, 0].log_softmax(-1)  # [stage, pos, vocab]
        answer = task.answer_ids[i][0]
        wrong = task.wrong_ids[i][0] if task.wrong_ids else None
        last = log_p[:, -1]  # [stage, vocab]
        per_prompt["logit_diff"].append((lens[:, 0, -1, answer] - lens[:, 0, -1, wrong]) if wrong is not None
                                        else lens[:, 0, -1, answer])
        per_prompt["probability"].append(last[:, answer].exp())
        per_prompt["rank"].append((last > last[:, answer:answer + 1]).sum(-1).float())
        per_prompt["kl_to_final"].append(kl_divergence(last[-1:], last))
        per_prompt["entropy"].append(-(last.exp() * last).sum(-1))
        if i == 0:
            top = log_p.exp().topk(config.top_k, dim=-1)
            first = {"probability": log_p[..., answer].exp(), "rank": (log_p > log_p[..., answer:answer + 1]).sum(-1).float(),
                     "kl_to_final": kl_divergence(log_p[-1:], log_p),
                     "top": [[[(model.tokenizer.decode([int(t)]), round(float(p), 6)) for t, p in zip(ids_, ps)]
                              for ids_, ps in zip(stage_ids, stage_ps)] for stage_ids, stage_ps in zip(top.indices, top.values)]}
    mean = {key: torch.stack(values).mean(0).double().cpu().numpy() for key, values in per_prompt.items()}
    tokens = [model.tokenizer.decode([t]) for t in task.prompt_ids[0]]
    labels = [f"{p}: {t!r}"[:24] for p, t in enumerate(tokens)]
    n = len(names)
    return Result(
        method="logit-lens" if tuned is None else "tuned-lens", analysis="lens", model=model.config.name, task=task.name,
        metric="logit_diff" if task.wrong_ids else "logit", granularity="stages", components=names,
        scores=mean["logit_diff"], shape=[n], axes=["stage"], wall_seconds=time.perf_counter() - start,
        n_forward_passes=len(task.prompt_ids), settings={"top_k": config.top_k, "n_prompts": len(task.prompt_ids), "tuned": config.tuned,
                  "sublayers": config.sublayers},
        tokens=tokens, position_labels=labels,
        arrays={"probability": mean["probability"], "rank": mean["rank"], "kl_to_final": mean["kl_to_final"],
                "entropy": mean["entropy"],
                **{f"first_{key}": first[key].double().cpu().numpy() for key in ("probability", "rank", "kl_to_final")}},
        extra=vars(LensPayload(names, first["top"], model.tokenizer.decode([task.answer_ids[0][0]]),
                               model.tokenizer.decode([task.wrong_ids[0][0]]) if task.wrong_ids else None)),
    )


register(Analysis(
    name="lens", inputs="task", config=LensConfig, run=run_lens, methods=("logit-lens", "tuned-lens"), page="Lens", payload=LensPayload,
    figures="interp.ui.figures:lens_figures", figure_file="lens.html", printed=Printed(ordered=True),
    summary="the logit lens: what the residual stream before and after each layer predicts at every position"))
