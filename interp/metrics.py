"""Metrics on the logits at the answer position, one value per prompt.

Each metric maps ``logits`` [batch, d_vocab] (at the answer position), ``answers`` and
``wrong_answers`` [batch] token ids, and ``clean_logprobs`` [batch, d_vocab] (log-softmax of the
clean run, used by ``kl``) to [batch] values.
"""

from __future__ import annotations

from typing import Callable

import torch

MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def logit_diff(logits: torch.Tensor, answers: torch.Tensor, wrong_answers: torch.Tensor, clean_logprobs: torch.Tensor) -> torch.Tensor:
    """logit(answer) - logit(wrong answer), in nats."""
    return logits.gather(-1, answers[:, None])[:, 0] - logits.gather(-1, wrong_answers[:, None])[:, 0]


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
    """The metric ``name`` bound to a task: ``metric_of(logits [batch, d_vocab], rows=None) -> [batch]``.

    ``rows`` maps each batch row to its prompt (default: row i is prompt i), so batches that
    stack several variants of the prompts share the task's answers. Also returns the number of
    forward passes spent (1 for ``kl``, which needs the clean run's distribution; else 0).
    """
    fn = get_metric(name)
    n_prompts = task.clean_tokens.shape[0]
    clean_logprobs = None
    if name == "kl":
        with torch.no_grad():
            clean_logprobs = model.run(task.clean_tokens, logits_to_keep=1)[:, -1].float().log_softmax(-1)

    def metric_of(logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        rows = torch.arange(n_prompts, device=logits.device) if rows is None else rows
        reference = None if clean_logprobs is None else clean_logprobs[rows]
        return fn(logits, task.answers[rows], task.wrong_answers[rows], reference).float()

    return metric_of, int(clean_logprobs is not None)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy [batch, pos - 1] in nats of predicting tokens[:, 1:] from logits[:, :-1]
    (logits [batch, pos, d_vocab]; log-probabilities work too)."""
    logprobs = logits[:, :-1].float().log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
