"""Metrics on the logits at the answer position, one value per prompt.

Each metric maps ``logits`` [batch, d_vocab] (at the answer position), ``answers`` and
``wrong_answers`` [batch] token ids, and ``clean_logprobs`` [batch, d_vocab] (log-softmax of the
clean run, used by ``kl``) to [batch] values. :func:`task_metric` binds one to a task, including
tasks whose answers are several tokens (scored by their teacher-forced log-probability).
"""

from __future__ import annotations

from typing import Callable

import torch

MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def logit_diff(logits: torch.Tensor, answers: torch.Tensor, wrong_answers: torch.Tensor, clean_logprobs: torch.Tensor) -> torch.Tensor:
    """logit(answer) - logit(wrong answer), in nats (float32 whatever the logits' dtype)."""
    return logits.gather(-1, answers[:, None])[:, 0].float() - logits.gather(-1, wrong_answers[:, None])[:, 0].float()


def prob(logits: torch.Tensor, answers: torch.Tensor, wrong_answers: torch.Tensor, clean_logprobs: torch.Tensor) -> torch.Tensor:
    """Probability of the answer token."""
    return logits.float().softmax(-1).gather(-1, answers[:, None])[:, 0]


def kl_divergence(reference_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) over the last axis, in nats, from two log-distributions [..., d]."""
    return (reference_logprobs.exp() * (reference_logprobs - logprobs)).sum(-1)


def kl(logits: torch.Tensor, answers: torch.Tensor, wrong_answers: torch.Tensor, clean_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(clean || run) of the next-token distributions, in nats (0 on the clean run)."""
    return kl_divergence(clean_logprobs, logits.float().log_softmax(-1))


METRICS: dict[str, MetricFn] = {"logit_diff": logit_diff, "prob": prob, "kl": kl}


def get_metric(name: str) -> MetricFn:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def normalized(patched: torch.Tensor, target: float, source: float) -> torch.Tensor:
    """(patched - target) / (source - target): 0 = no effect, 1 = the whole clean-vs-corrupt difference.

    ``target`` is the metric of the run being patched, ``source`` that of the run activations come
    from (noising: target = clean, source = corrupt; denoising: the reverse).
    """
    difference = source - target
    if abs(difference) < 1e-8:
        raise ValueError(
            f"the clean and corrupt runs give the same metric ({target:.4g}): nothing to normalize; "
            "check that the corrupt prompts really change the answer"
        )
    return (patched - target) / difference


def task_metric(name: str, model, task) -> tuple[Callable[..., torch.Tensor], int]:
    """The metric ``name`` bound to a task: ``metric_of(logits [batch, k, d_vocab], rows=None) -> [batch]``.

    ``logits`` are those at the task's read positions (``task.reads``: the last prompt token, and
    for longer answers each continuation token's predecessor; a run's ``RunSpec`` asks for exactly
    those, see ``interp.batch.logit_reads``); [batch, d_vocab] is read as k = 1. ``rows`` maps each
    batch row to its row of the task (default: row i is row i), so batches that stack several
    variants share the task's answers. One value per row, which :meth:`Task.fold` sums into one per
    prompt:

    * single-token answers: the metric of the logits (``logit_diff``: logit(answer) -
      logit(wrong answer));
    * longer answers, teacher-forced: an answer row gives +log P(answer | prompt) (summed over its
      tokens), a wrong-answer row -log P(wrong | prompt), so their sum is the difference of the two
      continuations' log-probabilities; ``prob`` gives P(answer | prompt) on answer rows and ``kl``
      KL(clean || run) summed over the answer's positions (wrong-answer rows: 0).

    Also returns the number of forward passes spent (1 for ``kl``, which needs the clean run's
    distributions; else 0).
    """
    from interp.backends.base import RunSpec
    from interp.batch import logit_reads

    fn = get_metric(name)
    if name == "logit_diff" and task.wrong_answers is None:
        raise ValueError(f"metric logit_diff needs wrong answers, and task {task.name!r} gives none; "
                         "use --metric prob or kl, or add a wrong_answer field")
    clean_logprobs = None
    if name == "kl":
        with torch.no_grad():
            spec = RunSpec(task.clean_tokens, attention_mask=task.attention_mask,
                           **logit_reads(task.reads, task.n_positions))
            clean_logprobs = model.forward(spec).logits.float().log_softmax(-1)

    def metric_of(logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        logits = (logits[:, None] if logits.dim() == 2 else logits).float()  # bf16 logits: the metric in float32
        rows = torch.arange(task.n_rows, device=logits.device) if rows is None else rows.to(task.reads.device)
        reference = None if clean_logprobs is None else clean_logprobs[rows]
        if not task.multi_token:
            prompts = task.row_prompt.to(rows.device)[rows]
            wrong = None if task.wrong_answers is None else task.wrong_answers[prompts]
            return fn(logits[:, 0], task.answers[prompts], wrong, None if reference is None else reference[:, 0]).float()
        logprobs = logits.float().log_softmax(-1)
        mask = task.read_mask[rows].to(logits.device)
        sign = task.row_sign.to(logits.device)[rows]
        if name == "kl":
            per_position = kl_divergence(reference.to(logits.device), logprobs)
            return torch.where(sign > 0, (per_position * mask).sum(-1), torch.zeros_like(sign))
        targets = task.read_targets[rows].to(logits.device)
        total = (logprobs.gather(-1, targets[..., None])[..., 0] * mask).sum(-1)
        if name == "prob":
            return torch.where(sign > 0, total.exp(), torch.zeros_like(total))
        return sign * total

    return metric_of, int(clean_logprobs is not None)


@torch.no_grad()
def measure(model, task, metric: str = "logit_diff", prompts: str = "clean") -> torch.Tensor:
    """The metric of each prompt [prompts] on a plain run of the task's ``"clean"`` or
    ``"corrupt"`` prompts (padded, read at each prompt's own last token; several-token answers
    teacher-forced); inside a ``model.patch`` block, of the patched model."""
    from interp.corruption import task_run

    metric_of, _ = task_metric(metric, model, task)
    return task.fold(metric_of(model.forward(task_run(task, prompts).spec()).logits))


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy [batch, pos - 1] in nats of predicting tokens[:, 1:] from logits[:, :-1]
    (logits [batch, pos, d_vocab]; log-probabilities work too)."""
    logprobs = logits[:, :-1].float().log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
