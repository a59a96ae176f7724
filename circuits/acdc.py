"""ACDC (Conmy et al. 2023): the slow reference for edge-level circuit discovery.

Start from the full graph. Visit readers in reverse topological order (the logits, then each
layer's MLP, values, keys and queries from the last layer down), skipping readers whose node no
longer feeds anything; for each edge into the reader still in the circuit, patch it from the
corrupt run and keep it patched (remove it) when the metric, KL(clean || circuit) at the answer
positions averaged over prompts (each answer token's position, for longer answers), grows by
less than ``threshold``. One forward per tested edge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from circuits.circuit_selection import input_owners
from circuits.edge_graph import EdgeGraph
from circuits.edge_patching import run_with_patched_edges
from circuits.edge_runs import upstream_outputs, upstream_sites
from interp.corruption import task_run
from interp.metrics import kl_divergence
from interp.model import Model
from interp.sublayers import Sublayers
from interp.tasks import Task


@dataclass
class ACDCResult:
    """The circuit ``keep`` [n_up, n_down], its KL to the clean run, and per tested edge the KL
    increase its removal caused when it was tested (NaN where never tested)."""

    graph: EdgeGraph
    keep: np.ndarray
    threshold: float
    kl: float
    increase: np.ndarray
    n_forward_passes: int
    wall_seconds: float


def _reverse_topological_columns(graph: EdgeGraph) -> list[int]:
    columns = [graph.downstream_slice(0, "logits").start]
    for layer in reversed(range(graph.config.n_layers)):
        for kind in ("mlp", "v", "k", "q"):
            columns += list(reversed(range(*graph.downstream_slice(layer, kind).indices(len(graph.downstream)))))
    return columns


def acdc(model: Model, task: Task, threshold: float, progress: bool = True) -> ACDCResult:
    """Run ACDC at ``threshold`` (nats of KL) on all of ``task``'s prompts in one batch."""
    if not threshold >= 0:
        raise ValueError(f"the ACDC threshold must be >= 0, got {threshold}")
    start = time.perf_counter()
    graph = EdgeGraph(model.config)
    sublayers = Sublayers(model).for_edges("ACDC")
    clean = task_run(task, "clean")
    with torch.no_grad():
        corrupt = model.forward(task_run(task, "corrupt").spec(reads=upstream_sites(graph)))
        clean_logprobs = model.forward(clean.spec()).logits.float().log_softmax(-1)
    source = upstream_outputs(sublayers, graph, corrupt.activations)
    scored = task.read_mask.to(clean_logprobs.device)

    def kl(keep: np.ndarray) -> float:
        logprobs = run_with_patched_edges(model, clean, graph.valid & ~keep, source, sublayers).float().log_softmax(-1)
        return float(kl_divergence(clean_logprobs, logprobs)[scored].mean())

    keep = graph.valid.copy()
    current = kl(keep)
    n_forward = 3
    increase = np.full(graph.valid.shape, np.nan)
    owners = input_owners(graph)
    bar = tqdm(total=graph.n_edges, desc=f"ACDC tau={threshold:g}", disable=not progress, unit="edge")
    for column in _reverse_topological_columns(graph):
        feeds = not owners[column] or any(keep[o].any() for o in owners[column])
        for row in reversed(np.flatnonzero(keep[:, column])):
            bar.update()
            if not feeds:
                keep[row, column] = False  # the reader feeds nothing: its inputs cannot matter
                continue
            keep[row, column] = False
            trial = kl(keep)
            n_forward += 1
            increase[row, column] = trial - current
            if trial - current < threshold:
                current = trial
            else:
                keep[row, column] = True
    bar.close()
    return ACDCResult(graph, keep, threshold, current, increase, n_forward, time.perf_counter() - start)
