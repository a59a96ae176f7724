"""The GPU benchmark: one script, ready before a GPU is lent, about eight minutes on one.

    python benchmarks/gpu.py                 # CUDA present: a 1B-class Llama and a Gemma-2-2B-shaped model, bf16
    python benchmarks/gpu.py --tiny          # any machine: tiny random models in float32 (CI runs this)

Random weights (no download): a Llama-style model of about 1.2B parameters (16 layers, d_model
2048, 32 heads, 8 KV heads, MLP 8192) and one shaped like Gemma-2-2B (26 layers, d_model 2304, 8
heads of 256, 4 KV heads, MLP 9216), both with SmolLM2's tokenizer (vocabulary 49,152, not
Gemma's 256,000). Per model, side by side in one run:

1. exact head x position patching on ``--layers`` (default: first, middle, last): interp's sweep
   against TransformerLens' generic sweep with ``get_act_patch_attn_head_out_by_pos``'s setter
   over the same cells (wall time, and the largest difference of the two grids);
2. AtP* over every head against interp's exhaustive head sweep (wall time, top-20 overlap);
3. TopK SAE training on the middle layer's residual stream: tokens per second (SAELens runs in its
   own environment: ``benchmarks/dictionaries.py``);
4. greedy generation with k attention layers dropped (the last k): measured speed-up against the
   FLOP-ideal one, the ratio of the per-token matrix FLOPs of the intact and the pruned model.

Writes ``benchmarks/results/gpu.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import interp  # noqa: E402
from interp.attribution import attribution_patching  # noqa: E402
from interp.layer_dropping import parameter_count  # noqa: E402
from interp.patching import activation_patching  # noqa: E402
from interp.pruning import speed_comparison  # noqa: E402

SHAPES = {  # name -> (config class, keyword arguments)
    "llama-1b": ("LlamaConfig", {"num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32,
                                 "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192}),
    "gemma2-2b-shaped": ("Gemma2Config", {"num_hidden_layers": 26, "hidden_size": 2304, "num_attention_heads": 8,
                                          "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216}),
}
TINY = {
    "llama-tiny": ("LlamaConfig", {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128}),
    "gemma2-tiny": ("Gemma2Config", {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
                                     "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128}),
}


def build(folder: Path, class_name: str, shape: dict, dtype: torch.dtype) -> Path:
    """A random-weight model of ``shape`` with SmolLM2's tokenizer, saved in ``folder``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.loading import bundled_gguf_path, convert_gguf

    tokenizer = AutoTokenizer.from_pretrained(convert_gguf(bundled_gguf_path()))
    config = getattr(transformers, class_name)(vocab_size=len(tokenizer), max_position_embeddings=2048,
                                               tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def transformer_lens_sweep(model, task, layers: list[int] | None):
    """TransformerLens' exact head x position sweep, clean activations into the corrupt run:
    ``get_act_patch_attn_head_out_by_pos`` over every layer (``layers`` None; returned as [layer,
    head, pos], interp's order), else its generic sweep with that function's setter over the cells
    of ``layers`` (flat, layer-major, then head, then position)."""
    import pandas as pd
    from transformer_lens import patching as tl_patching

    bridge = model.backend.bridge
    positions = task.clean_tokens.shape[1]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return interp.metrics.logit_diff(logits[:, -1], task.answers, task.wrong_answers, None).mean()

    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(task.clean_tokens)
        if layers is None:
            grid = tl_patching.get_act_patch_attn_head_out_by_pos(bridge, task.corrupt_tokens, clean_cache, metric)
            return grid.permute(0, 2, 1).float().cpu()
        index = pd.DataFrame([(l, p, h) for l in layers for h in range(model.config.n_heads) for p in range(positions)],
                             columns=["layer", "pos", "head"])
        grid = tl_patching.generic_activation_patch(bridge, task.corrupt_tokens, clean_cache, metric,
                                                    tl_patching.layer_pos_head_vector_patch_setter, "z", index_df=index)
    return grid.float().cpu()


def ideal_speedup(model, units: list[str]) -> float:
    """Per-token matrix FLOPs of the intact model over the pruned one (parameters outside the
    embeddings, each used once per token; attention's own O(positions) work left out)."""
    total = sum(p.numel() for p in model.hf_model.parameters()) - model.hf_model.get_input_embeddings().weight.numel()
    return total / (total - parameter_count(model, units))


def benchmark(name: str, folder: Path, dtype: str, device: str, args) -> dict:
    row: dict = {"model": name, "dtype": dtype, "device": device}
    tl = interp.load_model(str(folder), backend="transformer_lens", device=device, dtype=getattr(torch, dtype))
    c = tl.config
    row["parameters"] = sum(p.numel() for p in tl.hf_model.parameters())
    task = interp.tasks.ioi(tl, n_prompts=args.n_prompts, seed=0)
    layers = sorted({0, c.n_layers // 2, c.n_layers - 1})
    ours, seconds = timed(lambda: activation_patching(tl, task, "heads_pos", direction="denoising", layers=layers,
                                                      progress=False))
    row["sweep_seconds"] = seconds
    grid = torch.tensor(ours.arrays["patched_metric"]).mean(0).reshape(ours.shape)
    if not args.skip_transformer_lens:
        reference, tl_seconds = timed(lambda: transformer_lens_sweep(tl, task, layers))
        row["transformer_lens_sweep_seconds"] = tl_seconds
        row["sweep_speedup"] = tl_seconds / seconds
        row["sweep_max_abs_difference"] = (grid - reference.reshape(grid.shape)).abs().max().item()
    model = interp.load_model(str(folder), device=device, dtype=getattr(torch, dtype), attention="auto")
    row["attention"] = model.attention
    exhaustive, row["exhaustive_heads_seconds"] = timed(lambda: activation_patching(model, task, "heads", progress=False))
    star, row["atp_star_seconds"] = timed(lambda: attribution_patching(model, task, "heads", method="atp*", progress=False))
    k = min(20, len(exhaustive.components))
    row["atp_star_top20_overlap"] = len(set(exhaustive.ranking()[:k].tolist()) & set(star.ranking()[:k].tolist())) / k
    row["sae_tokens_per_second"] = sae_speed(model, c.n_layers // 2, args)
    dropped = [f"L{layer}.ATTN" for layer in range(c.n_layers - args.drop, c.n_layers)]
    prompts = task.clean_tokens[: args.gen_batch]
    speed = speed_comparison(model, dropped, prompts, args.new_tokens, repeats=args.repeats)
    row["generation_speedup"] = speed["full_generation_tokens_per_s"] and (
        speed["dropped_generation_tokens_per_s"] / speed["full_generation_tokens_per_s"])
    row["generation_ideal_speedup"] = ideal_speedup(model, dropped)
    row["generation_fraction_of_ideal"] = (row["generation_speedup"] - 1) / max(row["generation_ideal_speedup"] - 1, 1e-9)
    row["attention_layers_dropped"] = args.drop
    return row


def sae_speed(model, layer: int, args) -> float:
    """TopK SAE training throughput on ``L<layer>.RESID_POST``, tokens per second (after the
    activations are cached: the training step itself)."""
    from circuits.activation_store import ActivationStore
    from circuits.dictionary import DictionaryConfig
    from circuits.dictionary_training import TrainingConfig, train_dictionary
    from interp.corpus import load_corpus

    tokens = load_corpus("python-docs").token_chunks(model.tokenizer, args.chunk_length, args.sae_chunks, seed=0)
    site = f"L{layer}.RESID_POST"
    store = ActivationStore(model, site, "sae", tokens, batch_tokens=args.sae_batch, buffer_tokens=tokens.numel(),
                            forward_batch=8)
    batches = list(itertools.islice(iter(store), tokens.numel() // 2 // args.sae_batch))  # half a buffer: no refill
    config = DictionaryConfig(d_in=model.config.d_model, d_sae=8 * model.config.d_model, k=32, kind="sae", site=site)
    total = sum(len(x) for x, _ in batches)
    _, seconds = timed(lambda: train_dictionary(iter(batches), config, TrainingConfig(total_tokens=total,
                                                                                       batch_tokens=args.sae_batch),
                                                progress=False))
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models in float32 (any machine; what CI runs)")
    parser.add_argument("--n-prompts", type=int, default=None)
    parser.add_argument("--drop", type=int, default=None, help="attention layers dropped for the generation speed-up")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-transformer-lens", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    shapes, dtype, device = (SHAPES, "bfloat16", "cuda") if cuda else (TINY, "float32", "cpu")
    defaults = {"n_prompts": 8 if cuda else 2, "drop": 4 if cuda else 1, "new_tokens": 64 if cuda else 4}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.gen_batch, args.chunk_length = (8, 128) if cuda else (2, 16)
    args.sae_chunks, args.sae_batch = (256, 4096) if cuda else (8, 32)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, (class_name, shape) in shapes.items():
            folder = build(Path(scratch) / name, class_name, shape, getattr(torch, dtype))
            rows.append(benchmark(name, folder, dtype, device, args))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "versions": interp.results.versions(),
                               "gpu": torch.cuda.get_device_name() if cuda else None}, indent=1))
    print(f"\n{'model':18}{'sweep s':>9}{'TL s':>9}{'x TL':>7}{'exh. s':>8}{'AtP* s':>8}{'top-20':>8}"
          f"{'SAE tok/s':>11}{'gen x':>7}{'ideal':>7}")
    for r in rows:
        print(f"{r['model']:18}{r['sweep_seconds']:9.2f}{r.get('transformer_lens_sweep_seconds', float('nan')):9.2f}"
              f"{r.get('sweep_speedup', float('nan')):7.1f}{r['exhaustive_heads_seconds']:8.2f}{r['atp_star_seconds']:8.2f}"
              f"{r['atp_star_top20_overlap']:8.2f}{r['sae_tokens_per_second']:11.0f}{r['generation_speedup']:7.2f}"
              f"{r['generation_ideal_speedup']:7.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
