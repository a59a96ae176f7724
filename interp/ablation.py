"""Ablations: a corrupt run that needs no paired prompt.

Many behaviours have no natural counterfactual prompt. An ablation replaces a component's
activation by a baseline instead, on every token of each prompt (the tokens of a longer answer,
which the metric teacher-forces, keep their own values; padding is never touched):

* ``zero``: 0. Off the model's distribution (a residual stream or a head is never exactly 0), so
  read zero-ablation effects with care.
* ``mean``: the component's mean over a reference set, at the same position counted from the end
  of the prompt (``@-1`` takes the mean over the reference prompts' last tokens); where no
  reference prompt is that long, the mean over every token of the reference. The reference is a
  set of prompts (this task's own, or another task's) or corpus text (then one mean over all its
  tokens, the same at every position).
* ``resample``: the component's activation in another prompt of the task, chosen by a seeded
  derangement (no prompt keeps its own), aligned at the end of the prompt; where the donor prompt
  is shorter, the prompt keeps its own value there.

The *ablated run* ablates every site of the sweep at once (heads: every head's output z at every
layer): it plays the corrupt run. So exact patching reports effect = (m(clean with the component
ablated) - m(clean)) / (m(everything ablated) - m(clean)) when noising, and restores one
component's clean value into the ablated run when denoising; AtP/AtP* use the ablated values as
the source activations, and EAP-IG integrates from the ablated embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.batch import Tokens
from interp.components import ACTIVATION_KINDS, Site
from interp.corruption import ABLATIONS, CarriedEdit, RunInput, task_run
from interp.tasks import Task


class AblationError(ValueError):
    """An ablation that cannot be made (a site it cannot ablate, an empty reference)."""


@dataclass(frozen=True)
class MeanReference:
    """What a mean ablation averages over: ``tokens`` (padded prompts or corpus windows) and, for
    prompts, their ``mask``; ``per_position``: average at each position counted from the end
    (prompts) or over all tokens alone (corpus text). ``label`` says which, in a result's settings."""

    tokens: Tokens
    per_position: bool
    label: str

    @classmethod
    def of_task(cls, task: Task, label: str | None = None) -> "MeanReference":
        """The prompts of ``task`` (without any answer continuation), padded on the left so their
        ends align."""
        return cls(Tokens.pad(task.prompt_ids, task.pad_token, "left", task.device), True, label or f"task:{task.name}")

    @classmethod
    def of_tokens(cls, tokens: torch.Tensor, label: str) -> "MeanReference":
        """Corpus windows [n, pos]: one mean over all their tokens."""
        return cls(Tokens(tokens), False, label)


def prompt_positions(task: Task) -> torch.Tensor:
    """[rows, pos] bool: the tokens of each row's prompt (not padding, not an answer continuation)."""
    positions = torch.arange(task.n_positions)
    return (positions >= task.starts[:, None]) & (positions < task.ends[:, None])


def _check_site(site: Site, kind: str) -> None:
    if ACTIVATION_KINDS[site.kind].position_axis != 1 or site.kind in ("tc", "sae", "tc_error", "sae_error"):
        raise AblationError(f"{kind} ablation replaces [batch, pos, ...] activations; it cannot ablate "
                            f"{ACTIVATION_KINDS[site.kind].token} (L{site.layer}): ablate the head or the sublayer instead")


@torch.no_grad()
def _activations(model, tokens: torch.Tensor, mask: torch.Tensor | None, sites: set[Site]) -> dict[Site, torch.Tensor]:
    from interp.backends.base import RunSpec

    return model.forward(RunSpec(tokens, reads=set(sites), logits_to_keep=1, attention_mask=mask)).activations


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of ``n`` >= 2 items that moves every item."""
    if n < 2:
        raise AblationError(f"resample ablation takes each prompt's activations from another prompt; there are {n}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        if bool((order != torch.arange(n)).all()):
            return order


def ablated_values(model, task: Task, kind: str, sites: set[Site], reference: MeanReference | None = None,
                   seed: int = 0) -> dict[Site, tuple[torch.Tensor, torch.Tensor]]:
    """Per site, (values [rows, pos, ...], where [rows, pos] bool): what the ablation puts where."""
    if kind not in ABLATIONS:
        raise AblationError(f"unknown ablation {kind!r}; known: {', '.join(ABLATIONS)}")
    for site in sites:
        _check_site(site, kind)
    inside = prompt_positions(task)
    device = task.clean_tokens.device
    if kind == "zero":
        clean = _activations(model, task.clean_tokens[:1], None if task.attention_mask is None else task.attention_mask[:1],
                             sites)
        return {site: (clean[site].new_zeros((task.n_rows, task.n_positions, *clean[site].shape[2:])), inside.to(device))
                for site in sites}
    ends = task.ends
    if kind == "resample":
        order = derangement(len(task), seed)
        donor = order[task.row_prompt]  # the donor prompt's answer row holds its prompt's positions
        acts = _activations(model, task.clean_tokens, task.attention_mask, sites)
        offset = torch.arange(task.n_positions)[None] - ends[:, None]  # position counted from the prompt's end
        source = ends[donor][:, None] + offset
        where = inside & (source >= task.starts[donor][:, None]) & (source < ends[donor][:, None])
        source = source.clamp(0, task.n_positions - 1)
        out = {}
        for site in sites:
            values = acts[site][donor.to(device)[:, None], source.to(device)]
            out[site] = (values, where.to(device))
        return out
    if reference is None:
        raise AblationError("mean ablation needs a reference set (MeanReference)")
    tokens = reference.tokens
    acts = _activations(model, tokens.ids.to(device), None if tokens.mask is None else tokens.mask.to(device), sites)
    real = (torch.ones(tokens.ids.shape, dtype=torch.bool) if tokens.mask is None else tokens.mask.bool().cpu()).to(device)
    distance = (ends[:, None] - torch.arange(task.n_positions)[None]).to(device)  # 1 = the prompt's last token
    out = {}
    for site in sites:
        values = acts[site].float()
        weight = real.reshape(*real.shape, *[1] * (values.dim() - 2)).float()
        overall = (values * weight).sum((0, 1)) / weight.sum((0, 1)).clamp_min(1)
        if reference.per_position:  # reference prompts are left-padded: column -k is each one's k-th last token
            by_end = (values * weight).sum(0) / weight.sum(0).clamp_min(1)  # [pos_ref, ...]
            counts = real.sum(0)  # reference prompts that have each column
            width = by_end.shape[0]
            column = (width - distance).clamp(0, width - 1)
            known = (distance >= 1) & (distance <= width)
            known = known & counts[column].bool()
            picked = by_end[column]  # [rows, pos, ...]
            fill = overall.expand_as(picked)
            known = known.reshape(*known.shape, *[1] * (picked.dim() - 2))
            result = torch.where(known, picked, fill)
        else:
            result = overall.expand(task.n_rows, task.n_positions, *overall.shape).clone()
        out[site] = (result.to(acts[site].dtype), inside.to(device))
    return out


def ablated_run(model, task: Task, kind: str, sites, reference: MeanReference | None = None, seed: int = 0) -> RunInput:
    """The task's clean run with every site in ``sites`` ablated (see the module doc)."""
    values = ablated_values(model, task, kind, set(sites), reference, seed)
    run = task_run(task, "clean")
    run.carried = tuple(CarriedEdit(site, value, "replace", where) for site, (value, where) in sorted(values.items()))
    return run


def mean_reference(model, task: Task, spec: str, seed: int = 0, n_prompts: int = 64,
                   chunk_length: int = 64, n_chunks: int = 32) -> MeanReference:
    """The reference set ``spec`` names: ``task`` (this task's own prompts), ``corpus`` or
    ``corpus:<name>`` (``n_chunks`` windows of ``chunk_length`` tokens of a corpus, one mean over
    all their tokens), or a task (a built-in name or a template draws ``n_prompts``; a file gives
    all its rows)."""
    from interp.tasks import GENERATORS, get_task

    if spec == "task":
        return MeanReference.of_task(task, "task")
    if spec == "corpus" or spec.startswith("corpus:"):
        from interp.corpus import load_corpus

        corpus = load_corpus(spec.partition(":")[2] or None)
        tokens = corpus.token_chunks(model.tokenizer, length=chunk_length, n_chunks=n_chunks, seed=seed)
        return MeanReference.of_tokens(tokens.to(model.device), f"corpus:{corpus.name}")
    drawn = spec in GENERATORS or spec.endswith(".json")
    reference = get_task(model, spec, n_prompts=n_prompts if drawn else 10**9, seed=seed + 1,
                         padding_side=task.padding_side)
    return MeanReference.of_task(reference, spec)
