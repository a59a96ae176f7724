"""Generation and forward speed with k attention layers dropped, against the full model, in one run.

    python benchmarks/layer_dropping_speed.py --model smollm2-135m --ks 0,4,8,12 --new-tokens 64

For each k the k most redundant attention layers (one-shot similarity on calibration text) are
dropped; greedy generation with the KV cache is timed alternately with the intact model
(median of --repeats after a warm-up), and the prefill forward, the KV-cache size after
generation and the held-out perplexity are recorded. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import interp
from interp import hf_compat
from interp.corpus import load_corpus
from interp.layer_dropping import dropped
from interp.pruning import EvaluationSet, drop_order, evaluate, speed_comparison
from interp.results import versions


def cache_bytes(model, prompts: torch.Tensor, new_tokens: int) -> int:
    """Bytes held by the KV cache after generating ``new_tokens`` tokens."""
    out = model.hf_model.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  use_cache=True, return_dict_in_generate=True, attention_mask=torch.ones_like(prompts),
                                  pad_token_id=model.tokenizer.eos_token_id)
    return sum(t.numel() * t.element_size() for pair in hf_compat.layer_states(hf_compat.output_cache(out)) for t in pair)


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="nnsight", help="nnsight runs the plain Hugging Face modules")
    parser.add_argument("--ks", default="0,4,8,12")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/layer_dropping_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]

    model = interp.load_model(args.model, backend=args.backend, device=args.device)
    calibration, held_out = load_corpus().split(held_out=0.2, seed=0)
    tokens = calibration.token_chunks(model.tokenizer, 128, 4).to(model.device)
    held = held_out.token_chunks(model.tokenizer, 128, 8).to(model.device)
    prompts = held[: args.batch, : args.prompt_length]
    order = drop_order(model, "attn", max(ks), tokens)

    rows = []
    for k in ks:
        units = order.units[:k]
        speed = speed_comparison(model, units, prompts, args.new_tokens, args.repeats)
        with dropped(model, units), torch.no_grad():
            prefill = median_seconds(lambda: model.run(held), args.repeats)
            cache = cache_bytes(model, prompts, args.new_tokens)
        perplexity = evaluate(model, units, EvaluationSet(held, batch_size=4), measure_speed=False)["perplexity"]
        rows.append({"k": k, "dropped": [str(u) for u in units], **speed,
                     "prefill_tokens_per_s": held.numel() / prefill, "kv_cache_bytes": cache,
                     "held_out_perplexity": perplexity})
    full_prefill = rows[0]["prefill_tokens_per_s"] if ks[0] == 0 else None
    report = {"model": model.config.name, "backend": args.backend, "device": args.device,
              "threads": torch.get_num_threads(), "batch": args.batch, "prompt_length": args.prompt_length,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "rows": rows,
              "versions": versions()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    print(f"{model.config.name} ({args.backend}, {args.device}, {torch.get_num_threads()} threads): batch {args.batch}, "
          f"prompt {args.prompt_length}, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'k attn':>6} {'full tok/s':>11} {'dropped tok/s':>14} {'gen speed-up':>13} {'prefill tok/s':>14} "
          f"{'KV cache MiB':>13} {'perplexity':>11}")
    for row in rows:
        prefill_ratio = f" ({row['prefill_tokens_per_s'] / full_prefill:.2f}x)" if full_prefill else ""
        print(f"{row['k']:>6} {row['full_generation_tokens_per_s']:>11.1f} {row['dropped_generation_tokens_per_s']:>14.1f} "
              f"{row['generation_speedup']:>12.2f}x {row['prefill_tokens_per_s']:>8.0f}{prefill_ratio:<8} "
              f"{row['kv_cache_bytes'] / 2**20:>11.2f} {row['held_out_perplexity']:>11.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
