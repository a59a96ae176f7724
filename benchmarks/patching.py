"""Exact head x position patching: interp's sweep vs TransformerLens'
``get_act_patch_attn_head_out_by_pos``, same model, same prompts, same process, in turn.

    python benchmarks/patching.py --n-prompts 16 [--model smollm2-135m] [--layers 0,7,14,22,29] [--out ...]

``--layers`` restricts both sweeps to the same layers (TransformerLens through its generic sweep
with an explicit index of the same cells), for machines where the full TransformerLens sweep
(one forward per cell: 3,780 on SmolLM2) takes too long. ``--interp-only`` prints our sweep's time
and peak memory against one batched forward, with no TransformerLens run and no JSON.

Prints a table (wall time, peak memory, forward passes, forward-pass equivalents of work), the
layer lower bound of an exhaustive sweep (sum over components of the layers from the component's
on) with our share of it, and the largest difference between the two result grids; writes the
same as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu import transformer_lens_sweep  # noqa: E402
from peak_memory import peak_rss_mb  # noqa: E402

import interp  # noqa: E402
from interp import tasks  # noqa: E402
from interp.patching import activation_patching  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--memory-mb", type=float, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--layers", default=None, help="comma-separated layers (default all)")
    parser.add_argument("--out", default="benchmarks/results/patching.json")
    parser.add_argument("--interp-only", action="store_true",
                        help="skip TransformerLens (its sweep takes ~35 min on the full grid): time and memory of ours only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None

    model = interp.load_model(args.model, backend="transformer_lens")
    task = tasks.ioi(model, n_prompts=args.n_prompts, seed=0)
    c = model.config
    n, positions = task.clean_tokens.shape
    memory: dict[str, float] = {}

    # warm-up, untimed: the first forwards of a process allocate ~500 MiB of one-time buffers that
    # would otherwise be charged to whichever side runs first
    with torch.no_grad():
        activation_patching(model, task, "heads_pos", direction="denoising", layers=[c.n_layers - 1], progress=False)
        model.backend.bridge.run_with_cache(task.clean_tokens)

    gc.collect()
    start = time.perf_counter()
    with peak_rss_mb(memory, "interp"):
        ours = activation_patching(model, task, "heads_pos", direction="denoising", layers=layers,
                                   memory_budget_mb=args.memory_mb)
    ours_seconds = time.perf_counter() - start
    ours_grid = torch.tensor(ours.arrays["patched_metric"]).mean(0).reshape(ours.shape)

    # the largest batch our sweep used: every head of one (layer, position) group, n prompts each
    batch = c.n_heads * n
    gc.collect()
    with peak_rss_mb(memory, "one_batched_forward"), torch.no_grad():
        model.run(task.corrupt_tokens.repeat(c.n_heads, 1), logits_to_keep=1)

    if args.interp_only:
        print(f"interp {ours_seconds:.1f} s, peak {memory['interp']:.0f} MiB, {ours.n_forward_passes} forwards, "
              f"{ours.extra['forward_equivalents']:.1f} forward-equivalents; one batched forward of {batch} sequences "
              f"peaks at {memory['one_batched_forward']:.0f} MiB (ratio {memory['interp'] / memory['one_batched_forward']:.2f}x)")
        return

    gc.collect()
    start = time.perf_counter()
    with peak_rss_mb(memory, "transformer_lens"):
        reference = transformer_lens_sweep(model, task, layers).reshape(ours.shape)
    tl_seconds = time.perf_counter() - start

    n_components = len(ours.components)
    # the FLOP lower bound of an exhaustive sweep: each component's forward from its own layer on
    lower_bound = sum((c.n_layers - int(name.split(".")[0][1:])) / c.n_layers for name in ours.components)
    report = {
        "model": args.model, "task": "ioi", "n_prompts": n, "layers": layers or "all", "n_positions": positions, "granularity": "heads_pos",
        "n_components": n_components, "threads": torch.get_num_threads(),
        "interp": {"seconds": ours_seconds, "peak_rss_mb": memory["interp"], "forward_passes": ours.n_forward_passes,
                   "forward_equivalents": ours.extra["forward_equivalents"],
                   "unchanged_components": ours.extra["unchanged_components"],
                   "first_differing_position": ours.extra["first_differing_position"]},
        "transformer_lens": {"seconds": tl_seconds, "peak_rss_mb": memory["transformer_lens"],
                             "forward_passes": n_components + 1, "forward_equivalents": n_components + 1},
        "one_batched_forward": {"batch": batch, "peak_rss_mb": memory["one_batched_forward"]},
        "speedup": tl_seconds / ours_seconds,
        "layer_lower_bound_forward_equivalents": lower_bound,
        "fraction_of_layer_lower_bound": ours.extra["forward_equivalents"] / lower_bound,
        "max_abs_difference": (ours_grid - reference).abs().max().item(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nhead x position patching, {args.model}, {n} IOI prompts x {positions} tokens, {n_components} components "
          f"(layers {args.layers or 'all'}), "
          f"{report['threads']} threads")
    print(f"{'':18}{'seconds':>10}{'peak MiB':>10}{'forwards':>10}{'fwd-equiv':>11}")
    for name in ("interp", "transformer_lens"):
        row = report[name]
        print(f"{name:18}{row['seconds']:10.1f}{row['peak_rss_mb']:10.0f}{row['forward_passes']:10d}{row['forward_equivalents']:11.1f}")
    print(f"layer lower bound of an exhaustive sweep (each component from its own layer on): {lower_bound:.1f} "
          f"forward-equivalents; we do {report['fraction_of_layer_lower_bound']:.1%} of it (positions resumed too)")
    print(f"speed-up {report['speedup']:.1f}x; {ours.extra['unchanged_components']} components sit before the first "
          f"differing position ({ours.extra['first_differing_position']}) and need no forward; "
          f"one batched forward of {batch} sequences peaks at "
          f"{memory['one_batched_forward']:.0f} MiB; max |difference| {report['max_abs_difference']:.2e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
