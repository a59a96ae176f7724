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


def kl(logits: torch.Tensor, answers: torch.Tensor, wrong_answers: torch.Tensor, clean_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(clean || run) of the next-token distributions, in nats (0 on the clean run)."""
    logprobs = logits.float().log_softmax(-1)
    return (clean_logprobs.exp() * (clean_logprobs - logprobs)).sum(-1)


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
