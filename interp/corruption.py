"""The two runs every patching method compares, and how the corrupt one is made.

Token replacement uses the task's corrupt prompts; Gaussian noise (causal tracing) adds
N(0, (k sigma)^2) to the clean run's subject-token embeddings, sigma = std of the embedding matrix.
Noising patches the corrupt run into the clean one (target = clean, source = corrupt); denoising
the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from interp import hf_compat, placement
from interp.backends.base import Edit, RunSpec
from interp.batch import logit_reads
from interp.components import Site
from interp.tasks import Task

DIRECTIONS = ("noising", "denoising")
ABLATIONS = ("zero", "mean", "resample")
CORRUPTIONS = ("tokens", "gaussian") + ABLATIONS


@dataclass(frozen=True)
class CarriedEdit:
    """An edit one run always carries, given for every row and position: ``values`` [rows, pos, ...]
    (the site's canonical shape) added to the site's activation (``mode="add"``: Gaussian noise on
    the embeddings) or put in its place where ``where`` [rows, pos] is True (``"replace"``: an
    ablation)."""

    site: Site
    values: torch.Tensor
    mode: str = "replace"
    where: torch.Tensor | None = None

    def edit(self, start: int = 0, repeats: int = 1, stop: int | None = None) -> Edit:
        """The edit of positions ``start`` .. ``stop``, rows tiled ``repeats`` times."""
        values = self.values[:, start:stop]
        values = values.repeat(repeats, *[1] * (values.dim() - 1))
        if self.mode == "add":
            return lambda activation: activation + values.to(activation.dtype)
        where = self.where[:, start:stop].repeat(repeats, 1)
        where = where.reshape(*where.shape, *[1] * (values.dim() - 2)).to(values.device)
        return lambda activation: torch.where(where, values.to(activation.dtype), activation)

    def changed(self) -> torch.Tensor:
        """[rows, pos] bool: where this edit may change the activation."""
        if self.mode == "add":
            return (self.values != 0).reshape(*self.values.shape[:2], -1).any(-1)
        return self.where

    def select(self, rows) -> "CarriedEdit":
        return CarriedEdit(self.site, self.values[rows], self.mode, None if self.where is None else self.where[rows])


@dataclass
class RunInput:
    """One run of a task: tokens [rows, pos], the attention ``mask`` [rows, pos] (None: no
    padding), the positions whose logits the metric reads ``reads`` [rows, k] (None: the last),
    optional noise on the embeddings [rows, pos, d_model], and the edits the run always carries
    (``carried``: an ablated run's replaced sites). Every tensor covers all positions; :meth:`spec`
    builds the forward of the positions from ``start`` on (the earlier ones coming from a KV
    prefix, :meth:`prefix_cache`)."""

    tokens: torch.Tensor
    noise: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    reads: torch.Tensor | None = None
    carried: tuple[CarriedEdit, ...] = ()

    @property
    def own_edits(self) -> tuple[CarriedEdit, ...]:
        """This run's noise (as an edit of the embeddings) and its carried edits."""
        noise = () if self.noise is None else (CarriedEdit(Site("resid_pre", 0), self.noise, "add"),)
        return noise + tuple(self.carried)

    def edits(self, start: int = 0, repeats: int = 1, stop: int | None = None, from_layer: int = 0) -> dict[Site, list[Edit]]:
        """The run's own edits of positions ``start`` .. ``stop`` (rows tiled ``repeats`` times) at
        layers from ``from_layer`` on: a run resumed at a layer replays a residual stream that has
        the earlier ones."""
        out: dict[Site, list[Edit]] = {}
        for carried in self.own_edits:
            if carried.site.layer >= from_layer:
                out.setdefault(carried.site, []).append(carried.edit(start, repeats, stop))
        return out

    def spec(self, start: int = 0, repeats: int = 1, *, edits: dict[Site, list[Edit]] | None = None, from_layer: int = 0,
             **kwargs) -> RunSpec:
        """The forward of positions ``start`` on, rows tiled ``repeats`` times (variant-major), with
        this run's own edits first (those at layers from ``from_layer`` on) and then ``edits``; its
        logits are those the metric reads, unless ``kwargs`` say otherwise
        (``logits_to_keep``/``logit_positions``). Other ``RunSpec`` fields (reads,
        past_key_values, keep_grad, ...) pass through."""
        all_edits = self.edits(start, repeats, from_layer=from_layer)
        for site, fns in (edits or {}).items():
            all_edits.setdefault(site, []).extend(fns)
        tokens, mask = self.tokens[:, start:], self.mask
        if repeats > 1:
            tokens = tokens.repeat(repeats, 1)
            mask = None if mask is None else mask.repeat(repeats, 1)
        if "logits_to_keep" not in kwargs and "logit_positions" not in kwargs:
            reads = None if self.reads is None else self.reads.repeat(repeats, 1)
            kwargs.update(logit_reads(reads, self.tokens.shape[1], start))
        return RunSpec(tokens, edits=all_edits, attention_mask=mask, **kwargs)

    @torch.no_grad()
    def prefix_cache(self, model, stop: int):
        """The KV cache of this run's positions before ``stop`` (None when ``stop`` is 0): for runs
        that share those positions, a constant (read-only) every later forward can start from."""
        if not stop:
            return None
        spec = RunSpec(self.tokens[:, :stop], edits=self.edits(stop=stop), logits_to_keep=1, return_cache=True,
                       attention_mask=None if self.mask is None else self.mask[:, :stop])
        return hf_compat.read_only(model.forward(spec).past_key_values)

    @torch.no_grad()
    def plain_metric(self, model, metric_of, row_ids: torch.Tensor, limit: int = 4,
                     logits_bytes: float = 2**28) -> tuple[slice, torch.Tensor]:
        """(rows, metric) of this run's first rows computed the plain way: every position, no KV
        prefix, every position unembedded and the metric read from the full logits; what the
        shortcuts' numbers are checked against (``interp.shortcuts``). As many rows as ``limit``
        and as the full logits fit in ``logits_bytes`` (at least one: long prompts of a large
        vocabulary would otherwise make this check the largest tensor of a whole sweep)."""
        per_row = self.tokens.shape[1] * model.config.d_vocab * torch.empty((), dtype=model.dtype).element_size()
        rows = slice(0, max(1, min(limit, len(self.tokens), int(logits_bytes // per_row))))
        run = self.select(rows)
        logits = model.forward(run.spec(logits_to_keep=0)).logits
        width = logits.shape[1]
        reads = run.reads if run.reads is not None else torch.full((len(run.tokens), 1), width - 1, device=logits.device)
        gathered = logits.gather(1, reads.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1]))
        return rows, metric_of(gathered, row_ids[rows])

    def select(self, rows) -> "RunInput":
        """The same run restricted to some rows."""
        def pick(x):
            return None if x is None else x[rows]
        return RunInput(self.tokens[rows], pick(self.noise), pick(self.mask), pick(self.reads),
                        tuple(carried.select(rows) for carried in self.carried))


def task_run(task: Task, which: str = "clean") -> RunInput:
    """The plain run of a task's clean (or corrupt) rows."""
    if which == "corrupt" and not task.has_corrupt:
        raise ValueError(f"task {task.name!r} has no corrupt prompts; use --corruption zero, mean or resample")
    tokens = task.clean_tokens if which == "clean" else task.corrupt_tokens
    return RunInput(tokens, mask=task.attention_mask, reads=task.reads)


def gaussian_noise(model, task: Task, std_multiple: float, seed: int) -> torch.Tensor:
    """Noise for causal tracing: N(0, (std_multiple * sigma)^2) on the subject tokens, where sigma
    is the std of the embedding matrix; zero elsewhere. Shape [n, pos, d_model]."""
    sigma = placement.weight(model.hf_model.get_input_embeddings()).float().std().item()
    generator = torch.Generator().manual_seed(seed)
    shape = (*task.clean_tokens.shape, model.config.d_model)
    noise = torch.randn(shape, generator=generator) * std_multiple * sigma
    mask = task.subject_positions.cpu()[..., None]
    if not mask.any():
        raise ValueError(f"task {task.name!r} has no subject tokens (clean and corrupt prompts are identical) to noise")
    return (noise * mask).to(device=task.clean_tokens.device, dtype=model.hf_model.dtype)


def target_and_source(model, task: Task, direction: str, corruption: str, noise_std: float = 3.0,
                      seed: int = 0, *, sites=None, reference=None) -> tuple[RunInput, RunInput]:
    """(run being patched, run activations come from) for a direction and a corruption. The
    ablations (zero, mean, resample) make the corrupt run the clean one with every site in
    ``sites`` (the sweep's) ablated at once (``interp.ablation``; ``reference``: the mean's)."""
    check_settings(model, task, direction, corruption, reference)
    clean = task_run(task, "clean")
    if corruption == "gaussian":
        corrupt = RunInput(task.clean_tokens, gaussian_noise(model, task, noise_std, seed), task.attention_mask, task.reads)
    elif corruption in ABLATIONS:
        from interp.ablation import ablated_run

        if not sites:
            raise ValueError(f"--corruption {corruption} ablates the sites of a sweep, and none was given")
        corrupt = ablated_run(model, task, corruption, sites, reference=reference, seed=seed)
    else:
        corrupt = task_run(task, "corrupt")
    return (clean, corrupt) if direction == "noising" else (corrupt, clean)


def first_differences(target: RunInput, source: RunInput) -> torch.Tensor:
    """Per row [rows], the first position at which the two runs' inputs differ (a token, or noise
    added there); the row length when they never do. In a causal model every activation of that
    row at an earlier position is the same in both runs, so patching it changes nothing."""
    differs = target.tokens != source.tokens
    for run in (target, source):
        for carried in run.own_edits:
            differs = differs | carried.changed().to(differs.device)
    width = target.tokens.shape[1]
    first = differs.long().argmax(-1)
    return torch.where(differs.any(-1), first, torch.full_like(first, width))


def first_difference(target: RunInput, source: RunInput) -> int:
    """The first position at which the two runs' inputs differ in any row (see
    :func:`first_differences`)."""
    return int(first_differences(target, source).min())


def clean_and_corrupt(direction: str, target, source) -> tuple:
    """Reorder a (target, source) pair of anything per-run into (clean, corrupt)."""
    return (target, source) if direction == "noising" else (source, target)


def check_settings(model, task: Task, direction: str, corruption: str, reference=None) -> None:
    """One-line errors for an unknown direction or corruption, or a task the model cannot read."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; known: {', '.join(DIRECTIONS)}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if task.clean_tokens.max().item() >= model.config.d_vocab:
        raise ValueError(f"task {task.name!r} has token ids beyond the vocabulary of {model.config.name} ({model.config.d_vocab})")
    if corruption == "tokens" and not task.has_corrupt:
        raise ValueError(f"task {task.name!r} has no corrupt prompts; use --corruption zero, mean or resample "
                         "(or give each row a 'corrupt' prompt)")
    if corruption == "gaussian" and not task.has_corrupt:
        raise ValueError(f"task {task.name!r} has no corrupt prompts, so no subject tokens to noise; "
                         "use --corruption zero, mean or resample")
    if corruption == "mean" and reference is None:
        raise ValueError("--corruption mean needs --reference: the prompts whose mean replaces each component "
                         "('task' for this task's own prompts, a task file, or corpus[:<name>])")
    if corruption == "resample" and len(task) < 2:
        raise ValueError(f"--corruption resample takes each prompt's activations from another prompt; "
                         f"task {task.name!r} has {len(task)}")


@dataclass
class PromptChunk:
    """A batch of whole prompts: their ``rows`` of the task [m] (a prompt's answer and wrong-answer
    rows stay together), ``row_ids`` (the same, for a task metric's ``rows``), the ``prompts``
    [p] they belong to, ``row_prompt`` [m] (each row's index into ``prompts``), and the target and
    source runs restricted to them."""

    rows: torch.Tensor
    row_ids: torch.Tensor
    prompts: torch.Tensor
    row_prompt: torch.Tensor
    target: RunInput
    source: RunInput

    def fold(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row values [m, ...] summed into per-prompt values [p, ...]."""
        out = values.new_zeros((len(self.prompts), *values.shape[1:]))
        return out.index_add_(0, self.row_prompt.to(values.device), values)


def prompt_chunks(target: RunInput, source: RunInput, batch_size: int | None, task: Task) -> Iterator[PromptChunk]:
    """The task's prompts in batches of about ``batch_size`` rows (whole prompts, at least one;
    default: all at once). Rows are independent (each has its own metric), so any cut is exact."""
    per_prompt = task.n_rows // len(task)
    step = max(1, (batch_size or task.n_rows) // per_prompt)
    row_prompt = task.row_prompt.to(target.tokens.device)
    for first in range(0, len(task), step):
        prompts = torch.arange(first, min(first + step, len(task)), device=target.tokens.device)
        rows = torch.isin(row_prompt, prompts).nonzero()[:, 0]
        yield PromptChunk(rows, rows, prompts, row_prompt[rows] - first, target.select(rows), source.select(rows))
