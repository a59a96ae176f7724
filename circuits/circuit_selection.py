"""Circuits from edge scores: top-n or threshold selection, dangling-edge pruning, graph JSON.

A circuit is a boolean mask [n_upstream, n_downstream] over ``EdgeGraph`` edges. Pruning removes
edges out of nodes that receive no circuit edge (their inputs are all patched, so what they write
equals the source run's value) and edges into nodes whose output feeds nothing in the circuit;
neither changes the patched run, only the count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from circuits.edge_graph import LOGITS, EdgeGraph

GRAPH_FORMAT = "interp-circuit-graph"


class CircuitError(ValueError):
    """A circuit graph file that is missing, corrupt or not written by interp."""


def top_edges(graph: EdgeGraph, scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` existing edges with the largest |score| (ties broken by edge order)."""
    if n < 0:
        raise ValueError(f"a circuit needs n >= 0 edges, got {n}")
    magnitude = np.where(graph.valid, np.abs(scores), -np.inf).ravel()
    order = np.argsort(-magnitude, kind="stable")[:min(n, graph.n_edges)]
    keep = np.zeros(magnitude.shape, dtype=bool)
    keep[order] = True
    return keep.reshape(graph.valid.shape)


def input_owners(graph: EdgeGraph) -> list[list[int]]:
    """For each downstream column, the upstream rows of the node(s) it is an input of
    (a KV group feeds every query head of the group; LOGITS has none)."""
    c = graph.config
    owners = []
    for node in graph.downstream:
        if node.kind == "logits":
            owners.append([])
            continue
        first = graph.upstream_slice(node.layer).start
        if node.kind == "q":
            owners.append([first + node.index])
        elif node.kind in ("k", "v"):
            group = c.heads_per_kv_group
            owners.append([first + h for h in range(node.index * group, (node.index + 1) * group)])
        else:
            owners.append([first + c.n_heads])
    return owners


def prune_dangling(graph: EdgeGraph, keep: np.ndarray) -> np.ndarray:
    """``keep`` without edges out of unfed nodes and edges into nodes that feed nothing."""
    keep = keep & graph.valid
    owners = input_owners(graph)
    inputs: list[list[int]] = [[] for _ in graph.upstream]
    for column, rows in enumerate(owners):
        for row in rows:
            inputs[row].append(column)
    for row in range(1, len(graph.upstream)):  # upstream rows are in topological order
        if not keep[:, inputs[row]].any():
            keep[row] = False
    for layer in reversed(range(graph.config.n_layers)):
        rows = graph.upstream_slice(layer)
        for group in (range(rows.stop - 1, rows.stop), range(rows.start, rows.stop - 1)):  # the MLP, then the heads
            useful = {row: keep[row].any() for row in group}
            for row in group:
                if useful[row]:
                    continue
                for column in inputs[row]:
                    if not any(keep[owner].any() for owner in owners[column]):
                        keep[:, column] = False
    return keep


def circuit_graph(graph: EdgeGraph, normalized: np.ndarray, keep: np.ndarray, info: dict) -> dict:
    """The circuit as JSON-ready nodes and edges (scores normalized: 1 = the whole clean-vs-corrupt
    difference). Each edge names the downstream input it enters (``target``, e.g. ``L3.K0``) and
    the circuit nodes that input feeds (``into``)."""
    owners = input_owners(graph)
    rows, columns = np.nonzero(keep & graph.valid)
    used = {int(r) for r in rows}
    edges = []
    for row, column in zip(rows, columns):
        target = graph.downstream[column]
        feeds = [o for o in owners[column] if o in used] or owners[column]
        into = [LOGITS] if target.kind == "logits" else [graph.upstream[o].name for o in feeds]
        edges.append({"source": graph.upstream[row].name, "target": target.name, "port": target.kind,
                      "into": into, "score": float(normalized[row, column])})
    names = {e["source"] for e in edges} | {n for e in edges for n in e["into"]}
    node_scores = normalized.sum(axis=1)
    nodes = [{"id": node.name, "kind": node.kind, "layer": node.layer, "index": node.index,
              "score": float(node_scores[i])} for i, node in enumerate(graph.upstream) if node.name in names]
    if LOGITS in names:
        nodes.append({"id": LOGITS, "kind": "logits", "layer": graph.config.n_layers, "index": None, "score": None})
    return {"format": GRAPH_FORMAT, **info, "n_layers": graph.config.n_layers, "n_heads": graph.config.n_heads,
            "n_edges": len(edges), "nodes": nodes, "edges": edges}


def load_graph(path: str | Path) -> dict:
    """Read a circuit graph JSON; a missing, corrupt or foreign file raises :class:`CircuitError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CircuitError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CircuitError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != GRAPH_FORMAT:
        raise CircuitError(f"{path} is not an interp circuit graph (no 'format': '{GRAPH_FORMAT}')")
    missing = [key for key in ("nodes", "edges", "n_layers") if key not in data]
    if missing:
        raise CircuitError(f"{path} lacks {', '.join(missing)}")
    return data
