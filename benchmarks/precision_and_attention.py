"""Two targets of running large models cheaply, measured on SmolLM2 on this machine:

    python benchmarks/precision_and_attention.py [--prompts 8] [--long-prompts 4] [--long-positions 512]

1. **bfloat16 against float32**: the exact head sweep on IOI (every head) in each dtype: wall time,
   the speed-up, and whether the top 20 heads are the same 20 (target: at least 1.5x, same top 20,
   where the CPU has bfloat16 arithmetic).
2. **SDPA against eager attention**: peak memory of an exact head sweep of ``--long-prompts``
   induction prompts of ``--long-positions`` tokens with ``--attention sdpa`` and with eager, both
   running the same batched forwards (target: SDPA at most half of eager).

Every measurement runs in a fresh Python process (peak resident memory above the process' memory
after loading the model; CUDA: the allocator's peak), so none inherits another's heap. Writes
``benchmarks/results/precision_and_attention.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args) -> dict:
    """One measurement, in this process."""
    sys.path.insert(0, str(ROOT))
    import torch

    import interp
    from benchmarks.peak_memory import peak_rss_mb
    from interp.patching import activation_patching

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = interp.load_model("smollm2-135m", dtype=getattr(torch, args.dtype), attention=args.attention, device=device)
    if args.long:
        task = interp.tasks.induction(model, n_prompts=args.long_prompts, half_length=args.long_positions // 2, seed=0)
        layers = [0, model.config.n_layers // 2, model.config.n_layers - 1]
    else:
        task = interp.tasks.ioi(model, n_prompts=args.prompts, seed=0)
        layers = None

    def sweep():
        return activation_patching(model, task, "heads", layers=layers, batch_size=args.batch_size or None, progress=False)

    sweep()  # warm up (allocator, kernels)
    box: dict = {}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with peak_rss_mb(box, "peak_mb"):
        result = sweep()
    if device == "cuda":
        torch.cuda.synchronize()
        box["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    seconds = time.perf_counter() - start
    return {"dtype": args.dtype, "attention": model.attention, "seconds": seconds, "peak_mb": box["peak_mb"],
            "ranking": result.ranking()[:20].tolist(), "scores": result.scores.ravel().tolist(), "device": device,
            "positions": int(task.clean_tokens.shape[1]), "rows": len(task)}


def run_child(args, **changes) -> dict:
    argv = [sys.executable, __file__, "--child", "--prompts", str(args.prompts), "--long-prompts", str(args.long_prompts),
            "--long-positions", str(args.long_positions), "--batch-size", str(args.batch_size)]
    for key, value in changes.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measurement {changes} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--long-prompts", type=int, default=4)
    parser.add_argument("--long-positions", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=0,
                        help="sequences per forward in every sweep (0, the default: interp's own choice from its "
                             "2 GiB budget, the same for eager and SDPA)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--attention", default="eager")
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision_and_attention.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    f32, bf16 = run_child(args, dtype="float32"), run_child(args, dtype="bfloat16")
    eager = run_child(args, long=True, attention="eager")
    sdpa = run_child(args, long=True, attention="sdpa")
    import numpy as np

    a, b = np.array(f32["scores"]), np.array(bf16["scores"])
    result = {
        "device": f32["device"],
        "precision": {"float32_seconds": f32["seconds"], "bfloat16_seconds": bf16["seconds"],
                      "speedup": f32["seconds"] / bf16["seconds"],
                      "top20_same": sorted(f32["ranking"]) == sorted(bf16["ranking"]),
                      "top20_overlap": len(set(f32["ranking"]) & set(bf16["ranking"])) / 20,
                      "max_abs_difference": float(np.abs(a - b).max()), "correlation": float(np.corrcoef(a, b)[0, 1]),
                      "prompts": f32["rows"], "positions": f32["positions"]},
        "attention": {"eager_peak_mb": eager["peak_mb"], "sdpa_peak_mb": sdpa["peak_mb"],
                      "sdpa_over_eager": sdpa["peak_mb"] / eager["peak_mb"], "eager_seconds": eager["seconds"],
                      "sdpa_seconds": sdpa["seconds"], "sdpa_ran": sdpa["attention"],
                      "max_abs_difference": float(np.abs(np.array(eager["scores"]) - np.array(sdpa["scores"])).max()),
                      "prompts": eager["rows"], "positions": eager["positions"], "batch_size": args.batch_size},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    p, t = result["precision"], result["attention"]
    print(f"SmolLM2 exact head sweep, {p['prompts']} IOI prompts of {p['positions']} tokens, {result['device']}:")
    print(f"  float32 {p['float32_seconds']:.2f} s, bfloat16 {p['bfloat16_seconds']:.2f} s: {p['speedup']:.2f}x "
          f"(target >= 1.5x); top 20 same: {p['top20_same']} (overlap {p['top20_overlap']:.2f}); largest score "
          f"difference {p['max_abs_difference']:.4f}, correlation {p['correlation']:.4f}")
    batch = t["batch_size"] or "interp's default"
    print(f"SmolLM2 exact head sweep on 3 layers, {t['prompts']} prompts of {t['positions']} tokens, batch {batch}:")
    print(f"  peak memory eager {t['eager_peak_mb']:.0f} MiB, SDPA ({t['sdpa_ran']}) {t['sdpa_peak_mb']:.0f} MiB: "
          f"{t['sdpa_over_eager']:.2f} of eager (target <= 0.5); time {t['eager_seconds']:.2f} s vs {t['sdpa_seconds']:.2f} s; "
          f"largest score difference {t['max_abs_difference']:.2e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
