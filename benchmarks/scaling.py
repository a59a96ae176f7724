"""Cost at scale: how the wall time and peak memory of interp's methods grow with the model and the data.

    python benchmarks/scaling.py                    # this CPU: ~30M-150M parameter models, a few minutes
    python benchmarks/scaling.py --max-params 1.5e9 # up to the ~1.2B model (a GPU, or patience)
    python benchmarks/scaling.py --tiny             # seconds: tiny models (the suite runs this)

Random-weight Llama-style models (no download; SmolLM2's tokenizer, vocabulary 49,152) on the
induction task (repeated random tokens). From a base (4 layers, d_model 512, 8 heads, 8 prompts of
32 positions) one axis moves at a time:

- ``layers`` 2, 4, 8, 16;  ``heads`` 4, 8, 16 (d_model fixed, so d_head shrinks);
- ``positions`` 16, 32, 64, 128;  ``prompts`` 4, 8, 16, 32;
- ``size``: (layers, d_model) from 4 x 512 (~38M parameters) to 16 x 2048 (~1.2B).

Per point: an exhaustive exact head sweep, AtP* over every head, one EAP-IG run (5 steps) and
one TopK SAE training step (d_sae = 8 d_model, 4096 tokens), each with its wall time, its peak
memory (CPU: resident memory above the start; CUDA: allocated) and its FLOPs estimated from the
passes it reports:

- one forward over the task: F = 2 P T N + 4 P L T^2 d + 2 P V d (P prompts, T positions, N
  weights in the decoder layers, L layers, d = d_model, V the vocabulary: matrix products, the
  attention scores and mixing, the unembedding at one position);
- exact sweep: its forward-equivalents (resumed runs count their share of layers and positions)
  times F; AtP*: (forwards + 2 backwards) times F; EAP-IG with s steps: (2 + 3 s) F (two plain
  forwards, s forwards and backwards, over all prompts however they are batched) plus the edge
  scores' product of every upstream node's difference with every downstream node's gradient,
  2 U D P T d; SAE step: 12 n d d_sae.

For each axis and method the exponent of the power law through the points (least squares on
log-log) is printed for time, memory and FLOPs: time growing like the FLOPs means no overhead
grows faster than the work. Writes ``benchmarks/results/scaling.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import interp  # noqa: E402
from benchmarks.gpu import build, timed  # noqa: E402
from circuits.dictionary import DictionaryConfig  # noqa: E402
from circuits.dictionary_training import TrainingConfig, train_dictionary  # noqa: E402
from circuits.edge_attribution import edge_attribution  # noqa: E402
from interp.attribution import attribution_patching  # noqa: E402
from interp.patching import activation_patching  # noqa: E402

BASE = {"layers": 4, "d_model": 512, "heads": 8, "positions": 32, "prompts": 8}
AXES = {"layers": [2, 4, 8, 16], "heads": [4, 8, 16], "positions": [16, 32, 64, 128], "prompts": [4, 8, 16, 32],
        "size": [(4, 512), (8, 1024), (12, 1536), (16, 2048)]}
TINY_BASE = {"layers": 2, "d_model": 64, "heads": 4, "positions": 8, "prompts": 2}
TINY_AXES = {"layers": [2, 4], "heads": [2, 4], "positions": [8, 16], "prompts": [2, 4], "size": [(2, 64), (4, 128)]}
METHODS = ("exact_heads", "atp_star", "eap_ig", "sae_step")
SAE_TOKENS = 4096


def shape_of(point: dict) -> dict:
    d, heads = point["d_model"], point["heads"]
    return {"num_hidden_layers": point["layers"], "hidden_size": d, "num_attention_heads": heads,
            "num_key_value_heads": heads, "head_dim": d // heads, "intermediate_size": int(round(d * 8 / 3 / 64)) * 64}


def points(base: dict, axes: dict) -> list[tuple[str, dict]]:
    """(axis, point) for every value of every axis, the others at the base."""
    out = []
    for axis, values in axes.items():
        for value in values:
            point = dict(base)
            if axis == "size":
                point["layers"], point["d_model"] = value
                point["heads"] = max(1, value[1] // 64)
            else:
                point[axis] = value
            out.append((axis, point))
    return out


def parameters(point: dict, vocab: int) -> tuple[int, int]:
    """(weights in the decoder layers, all weights with a tied embedding)."""
    s = shape_of(point)
    d, mlp = s["hidden_size"], s["intermediate_size"]
    per_layer = 4 * d * d + 3 * d * mlp + 2 * d
    return point["layers"] * per_layer, point["layers"] * per_layer + vocab * d + d


def forward_flops(point: dict, vocab: int) -> float:
    P, T, L, d = point["prompts"], point["positions"], point["layers"], point["d_model"]
    layer_weights, _ = parameters(point, vocab)
    return 2.0 * P * T * layer_weights + 4.0 * P * L * T * T * d + 2.0 * P * vocab * d


class Peak:
    """Peak memory of a block: CUDA's allocator peak, else resident memory (benchmarks/peak_memory.py)."""

    def __init__(self) -> None:
        self.mb = 0.0

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            from benchmarks.peak_memory import peak_rss_mb

            self.box: dict = {}
            self.context = peak_rss_mb(self.box, "mb")
            self.context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            self.mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.context.__exit__(*exc)
            self.mb = self.box["mb"]


def measure(model, task, point: dict, vocab: int) -> dict:
    F = forward_flops(point, vocab)
    row: dict = {}

    def record(name: str, fn, flops_of) -> None:
        with Peak() as peak:
            value, seconds = timed(fn)
        row[name] = {"seconds": seconds, "peak_mb": peak.mb, "flops": flops_of(value)}

    record("exact_heads", lambda: activation_patching(model, task, "heads", progress=False),
           lambda r: r.extra["forward_equivalents"] * F)
    record("atp_star", lambda: attribution_patching(model, task, "heads", method="atp*", progress=False),
           lambda r: (r.n_forward_passes + 2 * r.n_backward_passes) * F)
    P, T, d = point["prompts"], point["positions"], point["d_model"]
    record("eap_ig", lambda: edge_attribution(model, task, "eap-ig", steps=5, progress=False),
           lambda r: (2 + 3 * r.steps) * F + 2.0 * len(r.graph.upstream) * len(r.graph.downstream) * P * T * d)
    d = model.config.d_model
    activations = torch.randn(4 * SAE_TOKENS, d, device=model.device)
    batches = iter([(x, x) for x in activations.split(SAE_TOKENS)])
    config = DictionaryConfig(d_in=d, d_sae=8 * d, architecture="topk", k=32)
    training = TrainingConfig(total_tokens=4 * SAE_TOKENS, batch_tokens=SAE_TOKENS, log_every=10**9)
    record("sae_step", lambda: train_dictionary(batches, config, training, progress=False),
           lambda trained: 12.0 * SAE_TOKENS * d * 8 * d)
    row["sae_step"]["seconds"] /= 4  # four steps were run: the first pays for the initialization
    return row


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (None with fewer than two usable points)."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({p[0] for p in pairs}) < 2:
        return None
    a = np.array(pairs)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def fits(rows: list[dict]) -> list[dict]:
    """Per axis and method: exponents of time, memory and FLOPs against the axis' value (size:
    against the parameter count)."""
    out = []
    for axis in dict.fromkeys(row["axis"] for row in rows):
        chosen = [row for row in rows if row["axis"] == axis]
        xs = [row["parameters"] if axis == "size" else row["point"][axis] for row in chosen]
        for method in METHODS:
            out.append({"axis": axis, "method": method, "values": xs, **{
                f"{key}_exponent": exponent(xs, [row["methods"][method][key] for row in chosen])
                for key in ("seconds", "peak_mb", "flops")}})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models, seconds (what the suite runs)")
    parser.add_argument("--max-params", type=float, default=None,
                        help="skip models with more parameters (default 2e8 on CPU, 1.5e9 with CUDA)")
    parser.add_argument("--axes", default=None, help="comma-separated subset of layers,heads,positions,prompts,size")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    args = parser.parse_args(argv)
    base, axes = (TINY_BASE, TINY_AXES) if args.tiny else (BASE, AXES)
    if args.axes:
        axes = {axis: axes[axis] for axis in args.axes.split(",")}
    limit = args.max_params or (1.5e9 if torch.cuda.is_available() else 2e8)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer_vocab = 49152
    cache = Path(tempfile.gettempdir()) / "interp-scaling" if args.tiny else ROOT / "benchmarks" / ".cache" / "scaling"
    rows, measured = [], {}  # a point on several axes (the base) is measured once
    for axis, point in points(base, axes):
        layer_weights, total = parameters(point, tokenizer_vocab)
        if total > limit:
            print(f"skipping {axis} {point}: {total / 1e6:.0f}M parameters > --max-params", file=sys.stderr)
            continue
        key = json.dumps(point, sort_keys=True)
        if key in measured:
            rows.append({"axis": axis, "point": point, "parameters": total, "methods": measured[key]})
            continue
        shape = shape_of(point)
        name = "-".join(f"{k}{v}" for k, v in sorted(shape.items()))
        folder = cache / name
        if not (folder / "config.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            build(folder, "LlamaConfig", shape, torch.float32)
        model = interp.load_model(str(folder), device=device)
        task = interp.tasks.induction(model, n_prompts=point["prompts"], half_length=point["positions"] // 2, seed=0)
        methods = measured[key] = measure(model, task, point, model.config.d_vocab)
        rows.append({"axis": axis, "point": point, "parameters": total, "methods": methods})
        print(f"{axis:>9} {json.dumps(point)}: " + ", ".join(f"{m} {v['seconds']:.2f}s" for m, v in methods.items()),
              file=sys.stderr)
        del model
    result = {"device": device, "torch": torch.__version__, "tiny": args.tiny, "rows": rows, "fits": fits(rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\n{'axis':>9} {'method':>12} {'time exp':>9} {'memory exp':>11} {'FLOP exp':>9}   values")

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for fit in result["fits"]:
        values = ",".join(f"{v / 1e6:.0f}M" if fit["axis"] == "size" else str(v) for v in fit["values"])
        print(f"{fit['axis']:>9} {fit['method']:>12} {show(fit['seconds_exponent']):>9} {show(fit['peak_mb_exponent']):>11} "
              f"{show(fit['flops_exponent']):>9}   {values}")
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
