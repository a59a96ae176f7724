"""How well edge discovery recovers a known circuit: ROC AUC against tracr ground truth.

A tracr port (``interp.tracr_models``) records which residual labels every node writes and every
reader reads; an edge u -> d of the :class:`EdgeGraph` is in the true circuit when d reads a label
u writes (Conmy et al.'s ACDC evaluation uses the same per-edge ground truth). Attribution
methods give a score per edge, so their ROC curve ranks edges by |score|; ACDC gives one circuit
per threshold, so its ROC curve joins the (false positive rate, true positive rate) points of a
threshold sweep, from (0, 0) to (1, 1), as in the ACDC paper.

AUCs are reported three ways:

* ``all``: every edge of the graph;
* ``live``: only edges whose two nodes read or write anything (tracr leaves unused heads and MLPs
  with all-zero weights, whose edges are easy negatives);
* ``reachable``: every edge, less the true edges that are inert under the task's corruption
  (patching that edge alone changes no prompt's metric beyond float32 noise). Equal-length clean and corrupt inputs
  leave some sub-circuits constant (reverse's length and opposite-index computation, frac-prevs'
  position-only selection), and no corruption-based method, ACDC included, can see those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from circuits.edge_attribution import EdgeScores
from circuits.edge_graph import EdgeGraph
from circuits.edge_patching import patched_metrics
from interp.corruption import task_run
from interp.metrics import kl_divergence
from interp.model import Model
from interp.tasks import Task
from interp.tracr_models import read_metadata


class GroundTruthError(ValueError):
    """A model with no recorded circuit."""


@dataclass(frozen=True)
class KnownCircuit:
    """[n_upstream, n_downstream] masks over ``graph``: ``true`` edges and ``live`` edges."""

    graph: EdgeGraph
    true: np.ndarray
    live: np.ndarray

    @classmethod
    def of(cls, model: Model) -> "KnownCircuit":
        metadata = read_metadata(model.source)
        if metadata is None:
            raise GroundTruthError(f"model {model.config.name!r} has no known circuit "
                                   "(only tracr ports do: tracr-reverse, tracr-frac-prevs)")
        graph = EdgeGraph(model.config)
        writes = {node: set(labels) for node, labels in metadata["writes"].items()}
        reads = {node: set(labels) for node, labels in metadata["reads"].items()}
        true = np.zeros(graph.valid.shape, dtype=bool)
        live = np.zeros(graph.valid.shape, dtype=bool)
        for u, up in enumerate(graph.upstream):
            for d, down in enumerate(graph.downstream):
                if graph.valid[u, d]:
                    true[u, d] = bool(writes[up.name] & reads[down.name])
                    live[u, d] = bool(writes[up.name]) and bool(reads[down.name])
        return cls(graph, true, live)

    def edge_names(self) -> list[str]:
        rows, cols = np.nonzero(self.true)
        return [f"{self.graph.upstream[u].name}->{self.graph.downstream[d].name}" for u, d in zip(rows, cols)]

    def inert(self, model: Model, task: Task, settings: dict, relative_tolerance: float = 1e-4) -> np.ndarray:
        """True edges whose lone patch (``settings`` as in :class:`EdgeScores`) moves no prompt's
        metric by more than ``relative_tolerance`` times the largest clean-vs-corrupt difference
        (float32 noise is about 1e-6 of it): [n_upstream, n_downstream] bool."""
        rows, cols = np.nonzero(self.true)
        masks = [self.graph.valid.copy(), np.zeros_like(self.true)]
        for u, d in zip(rows, cols):
            keep = self.graph.valid.copy()
            keep[u, d] = False
            masks.append(keep)
        values = patched_metrics(model, task, settings, masks, progress=False, per_prompt=True)
        tolerance = relative_tolerance * np.abs(values[1] - values[0]).max()
        inert = np.zeros_like(self.true)
        inert[rows, cols] = np.abs(values[2:] - values[0]).max(axis=1) <= tolerance
        return inert

    def _among(self, among: str, inert: np.ndarray | None) -> np.ndarray:
        if among == "all":
            return self.graph.valid
        if among == "live":
            return self.live
        return self.graph.valid & ~inert

    def score_auc(self, scores: np.ndarray, among: np.ndarray, noise: float = 1e-5) -> float:
        """ROC AUC of ranking the edges of mask ``among`` by |scores| ([n_up, n_down]). Scores
        below ``noise`` times the largest are float32 noise and count as 0; ties count half."""
        magnitude = np.abs(scores[among])
        magnitude[magnitude <= noise * magnitude.max()] = 0.0
        return float(roc_auc_score(self.true[among], magnitude))

    def circuits_roc(self, circuits: list[np.ndarray], among: np.ndarray) -> tuple[list[float], list[float], float]:
        """(false positive rates, true positive rates, AUC) of a sweep of circuit masks over the
        edges of ``among``, the curve closed with (0, 0) and (1, 1) and integrated by trapezoids."""
        truth = self.true[among]
        points = {(0.0, 0.0), (1.0, 1.0)}
        for keep in circuits:
            kept = keep[among]
            points.add((float((kept & ~truth).sum() / max(1, (~truth).sum())), float((kept & truth).sum() / max(1, truth.sum()))))
        fpr, tpr = zip(*sorted(points))
        return list(fpr), list(tpr), float(np.trapezoid(tpr, fpr))

    def report(self, model: Model, task: Task, scored: list[EdgeScores], acdc_circuits: list[np.ndarray] | None = None) -> dict:
        """AUC of each scored method (and of ACDC's threshold sweep) over all, live and reachable
        edges, with the true and inert edge names."""
        inert = self.inert(model, task, scored[0].settings)
        amongs = {name: self._among(name, inert) for name in ("all", "live", "reachable")}
        auc = {s.method: {name: self.score_auc(s.scores, among) for name, among in amongs.items()} for s in scored}
        roc = {}
        if acdc_circuits is not None:
            auc["acdc"], roc["acdc"] = {}, {}
            for name, among in amongs.items():
                fpr, tpr, auc["acdc"][name] = self.circuits_roc(acdc_circuits, among)
                roc["acdc"][name] = {"fpr": fpr, "tpr": tpr}
        names = self.graph.edge_names()
        index = {name: i for i, name in enumerate(names)}
        inert_names = [n for n in self.edge_names() if inert[self.graph.valid][index[n]]]
        return {"auc": auc, "acdc_roc": roc, "true_edges": self.edge_names(), "inert_true_edges": inert_names,
                "n_edges": {name: int(among.sum()) for name, among in amongs.items()}}


def acdc_sweep(model: Model, task: Task, thresholds: list[float], progress: bool = False) -> list[np.ndarray]:
    """ACDC's circuit mask at each KL threshold (nats)."""
    from circuits.acdc import acdc

    return [acdc(model, task, threshold, progress=progress).keep for threshold in thresholds]


def relative_thresholds(model: Model, task: Task, n: int = 12) -> list[float]:
    """``n`` ACDC thresholds log-spaced from 1e-6 to 1 times the KL of the fully corrupted run
    (tracr's unscaled 0/1 logits make that KL small, so absolute thresholds do not transfer)."""
    with torch.no_grad():
        clean, corrupt = (model.forward(task_run(task, which).spec()).logits.float().log_softmax(-1)
                          for which in ("clean", "corrupt"))
    total = float(kl_divergence(clean, corrupt)[task.read_mask.to(clean.device)].mean())
    return [total * s for s in np.logspace(-6, 0, n)]
