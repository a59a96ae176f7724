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

from interp import hf_compat
from interp.backends.base import Edit, RunSpec
from interp.components import Site
from interp.tasks import Task

DIRECTIONS = ("noising", "denoising")
CORRUPTIONS = ("tokens", "gaussian")


@dataclass
class RunInput:
    """Tokens [n, pos] and optional noise on the embeddings [n, pos, d_model]."""

    tokens: torch.Tensor
    noise: torch.Tensor | None = None

    def edits(self) -> dict[Site, list[Edit]]:
        """The edits that add this run's noise (none for a plain token run)."""
        return {} if self.noise is None else {Site("resid_pre", 0): [noise_edit(self.noise, 0, 1)]}

    def positions(self, start: int, stop: int | None = None) -> "RunInput":
        """The same run on positions ``start`` to ``stop`` (exclusive) only."""
        return RunInput(self.tokens[:, start:stop], None if self.noise is None else self.noise[:, start:stop])

    @torch.no_grad()
    def prefix_cache(self, model, stop: int):
        """The KV cache of this run's positions before ``stop`` (None when ``stop`` is 0): for runs
        that share those positions, a constant (read-only) every later forward can start from."""
        if not stop:
            return None
        shared = self.positions(0, stop)
        return hf_compat.read_only(model.forward(RunSpec(shared.tokens, edits=shared.edits(), logits_to_keep=1,
                                                         return_cache=True)).past_key_values)


def gaussian_noise(model, task: Task, std_multiple: float, seed: int) -> torch.Tensor:
    """Noise for causal tracing: N(0, (std_multiple * sigma)^2) on the subject tokens, where sigma
    is the std of the embedding matrix; zero elsewhere. Shape [n, pos, d_model]."""
    sigma = model.hf_model.get_input_embeddings().weight.float().std().item()
    generator = torch.Generator().manual_seed(seed)
    shape = (*task.clean_tokens.shape, model.config.d_model)
    noise = torch.randn(shape, generator=generator) * std_multiple * sigma
    mask = task.subject_positions.cpu()[..., None]
    if not mask.any():
        raise ValueError(f"task {task.name!r} has no subject tokens (clean and corrupt prompts are identical) to noise")
    return (noise * mask).to(device=task.clean_tokens.device, dtype=model.hf_model.dtype)


def noise_edit(noise: torch.Tensor, start: int, repeats: int) -> Edit:
    """Add ``noise`` from position ``start`` on, tiled ``repeats`` times on the batch axis."""
    chunk = noise[:, start:].repeat(repeats, 1, 1)
    return lambda resid: resid + chunk


def target_and_source(model, task: Task, direction: str, corruption: str, noise_std: float = 3.0,
                      seed: int = 0) -> tuple[RunInput, RunInput]:
    """(run being patched, run activations come from) for a direction and a corruption."""
    check_settings(model, task, direction, corruption)
    clean = RunInput(task.clean_tokens)
    if corruption == "gaussian":
        corrupt = RunInput(task.clean_tokens, gaussian_noise(model, task, noise_std, seed))
    else:
        corrupt = RunInput(task.corrupt_tokens)
    return (clean, corrupt) if direction == "noising" else (corrupt, clean)


def first_difference(target: RunInput, source: RunInput) -> int:
    """The first position at which the two runs' inputs differ in any prompt (a token, or noise
    added there); the sequence length when they never do. In a causal model every activation at
    an earlier position is the same in both runs, so patching it changes nothing."""
    differs = target.tokens != source.tokens
    for run in (target, source):
        if run.noise is not None:
            differs = differs | (run.noise != 0).any(-1)
    positions = differs.any(0).nonzero()
    return int(positions[0]) if len(positions) else target.tokens.shape[1]


def clean_and_corrupt(direction: str, target, source) -> tuple:
    """Reorder a (target, source) pair of anything per-run into (clean, corrupt)."""
    return (target, source) if direction == "noising" else (source, target)


def check_settings(model, task: Task, direction: str, corruption: str) -> None:
    """One-line errors for an unknown direction or corruption, or a task the model cannot read."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; known: {', '.join(DIRECTIONS)}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if task.clean_tokens.max().item() >= model.config.d_vocab:
        raise ValueError(f"task {task.name!r} has token ids beyond the vocabulary of {model.config.name} ({model.config.d_vocab})")


def select_rows(run: RunInput, rows: slice) -> RunInput:
    """The same run restricted to some prompts."""
    return RunInput(run.tokens[rows], None if run.noise is None else run.noise[rows])


@dataclass
class PromptChunk:
    """A batch of prompts: ``rows`` of the task, their ids [n] (for a task metric's ``rows``), and
    the target and source runs restricted to them."""

    rows: slice
    row_ids: torch.Tensor
    target: RunInput
    source: RunInput


def prompt_chunks(target: RunInput, source: RunInput, batch_size: int | None) -> Iterator[PromptChunk]:
    """The prompts of a (target, source) pair in batches of ``batch_size`` (default: all at once)."""
    n_prompts = target.tokens.shape[0]
    step = batch_size or n_prompts
    for first in range(0, n_prompts, step):
        rows = slice(first, first + step)
        row_ids = torch.arange(n_prompts, device=target.tokens.device)[rows]
        yield PromptChunk(rows, row_ids, select_rows(target, rows), select_rows(source, rows))
