"""The GPU benchmark: one script, ready before a GPU is lent, about eight minutes on one.

    python benchmarks/gpu.py                 # CUDA present: a 1B-class Llama and a Gemma-2-2B-shaped model, bf16
    python benchmarks/gpu.py --tiny          # any machine: tiny random models in float32 (CI runs this)
    python benchmarks/gpu.py --tiny --device cuda --dtype bfloat16   # a smoke test of the CUDA paths

Random weights (no download): a Llama-style model of about 1.2B parameters (16 layers, d_model
2048, 32 heads, 8 KV heads, MLP 8192) and one shaped like Gemma-2-2B (26 layers, d_model 2304, 8
heads of 256, 4 KV heads, MLP 9216), both with SmolLM2's tokenizer (vocabulary 49,152, not
Gemma's 256,000). Per model, side by side in one run:

1. exact head x position patching on ``--layers`` (default: first, middle, last): interp's sweep
   against TransformerLens' generic sweep with ``get_act_patch_attn_head_out_by_pos``'s setter
   over the same cells (wall time, and the largest difference of the two grids);
2. AtP* over every head against interp's exhaustive head sweep (wall time, top-20 overlap);
3. TopK SAE training on the middle layer's residual stream: tokens per second, and with
   ``--saelens-python`` SAELens' on the same activations in its own environment
   (``benchmarks/saelens_side.py``; ``benchmarks/dictionaries.py`` compares their quality);
4. greedy generation with k attention layers dropped (the last k): measured speed-up against two
   ceilings, the ratio of the per-token matrix FLOPs and of the bytes one decoding step reads
   (weights and KV cache) of the intact and the pruned model (``ideal_speedups``).

``--parts``, ``--models``, ``--dtype`` and ``--gen-batch``/``--gen-prompt-length`` run a part of it;
``--tokenizer`` takes SmolLM2's tokenizer as a folder where the bundled GGUF is not installed.
Figures from an H200: ``docs/benchmarks.md``, "On a GPU".

Writes ``benchmarks/results/gpu.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import interp  # noqa: E402
from interp import placement  # noqa: E402
from interp.attribution import attribution_patching  # noqa: E402
from interp.components import Component  # noqa: E402
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


def build(folder: Path, class_name: str, shape: dict, dtype: torch.dtype, tokenizer_folder: str | None = None) -> Path:
    """A random-weight model of ``shape`` with SmolLM2's tokenizer (from ``tokenizer_folder``, else
    from the bundled GGUF), saved in ``folder``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.loading import bundled_gguf_path, convert_gguf

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder or convert_gguf(bundled_gguf_path()))
    config = getattr(transformers, class_name)(vocab_size=len(tokenizer), max_position_embeddings=2048,
                                               tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # fast random initialisation
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed(fn):
    placement.synchronize()
    start = time.perf_counter()
    value = fn()
    placement.synchronize()
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


def ideal_speedups(model, units: list[str], batch: int, context: float) -> tuple[float, float]:
    """Two ceilings for the generation speed-up of dropping the attention ``units``.

    FLOPs: per-token matrix FLOPs of the intact model over the pruned one (every parameter outside
    the input embedding used once per token, the unembedding included; attention's own
    O(positions) work left out). Bytes: what one decoding step of ``batch`` sequences reads, the
    weights once plus the KV cache at ``context`` positions, intact over pruned: the ceiling for a
    step bound by memory traffic, as small-batch decoding is. Neither counts the per-kernel launch
    cost that dominates a small model's step; removing launches can beat both."""
    hf = model.hf_model
    weights = sum(p.numel() for p in hf.parameters()) - hf.get_input_embeddings().weight.numel()
    weights += hf.get_output_embeddings().weight.numel() if hf.config.tie_word_embeddings else 0
    removed = parameter_count(model, units)
    c = model.config
    kv_per_layer = 2 * c.n_kv_heads * c.d_head * context * batch  # elements
    attention_layers = len({Component.parse(u).layer for u in units if Component.parse(u).kind == "attn_out"})
    flops = weights / (weights - removed)
    elements = weights + c.n_layers * kv_per_layer
    return flops, elements / (elements - removed - attention_layers * kv_per_layer)


def benchmark(name: str, folder: Path, dtype: str, device: str, args) -> dict:
    """One model's row. A part that raises is recorded under ``errors`` (its traceback printed) and
    the next part runs: one broken part must not cost the others' figures on a lent GPU."""
    row: dict = {"model": name, "dtype": dtype, "device": device, "errors": {}, "part_seconds": {}}
    state: dict = {}

    def part(label: str, fn) -> None:
        start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded and printed, the run goes on
            traceback.print_exc()
            row["errors"][label] = f"{type(exc).__name__}: {exc}"[:500]
        row["part_seconds"][label] = time.perf_counter() - start
        if torch.cuda.is_available():
            row.setdefault("peak_gib", {})[label] = torch.cuda.max_memory_allocated() / 2**30

    def load_bridge() -> None:
        state["tl"] = tl = interp.load_model(str(folder), backend="transformer_lens", device=device,
                                             dtype=getattr(torch, dtype))
        state["task"] = task = interp.tasks.ioi(tl, n_prompts=args.n_prompts, seed=0)
        row["positions"], row["prompts"] = int(task.clean_tokens.shape[1]), int(task.clean_tokens.shape[0])
        timed(lambda: tl.run(task.clean_tokens))  # warm-up: CUDA context, kernels, allocator

    def sweeps() -> None:
        tl, task = state["tl"], state["task"]
        c = tl.config
        layers = sorted({0, c.n_layers // 2, c.n_layers - 1})
        row["sweep_layers"] = layers
        ours, row["sweep_seconds"] = timed(lambda: activation_patching(
            tl, task, "heads_pos", direction="denoising", layers=layers, progress=False))
        grid = torch.tensor(ours.arrays["patched_metric"]).mean(0).reshape(ours.shape)
        if not args.skip_transformer_lens:
            reference, tl_seconds = timed(lambda: transformer_lens_sweep(tl, task, layers))
            row["transformer_lens_sweep_seconds"] = tl_seconds
            row["sweep_speedup"] = tl_seconds / row["sweep_seconds"]
            row["sweep_max_abs_difference"] = (grid - reference.reshape(grid.shape)).abs().max().item()
            row["sweep_max_abs_value"] = grid.abs().max().item()

    def load_nnsight() -> None:
        state.pop("tl", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        state["model"] = model = interp.load_model(str(folder), device=device, dtype=getattr(torch, dtype),
                                                   attention="auto")
        row["attention"] = model.attention
        row["parameters"] = sum(p.numel() for p in model.hf_model.parameters())  # the bridge may add its own
        timed(lambda: model.run(state["task"].clean_tokens))  # warm-up

    def atp_star() -> None:
        model, task = state["model"], state["task"]
        exhaustive, row["exhaustive_heads_seconds"] = timed(lambda: activation_patching(model, task, "heads",
                                                                                        progress=False))
        star, row["atp_star_seconds"] = timed(lambda: attribution_patching(model, task, "heads", method="atp*",
                                                                           progress=False))
        k = min(20, len(exhaustive.components))
        row["atp_star_top20_overlap"] = len(set(exhaustive.ranking()[:k].tolist())
                                            & set(star.ranking()[:k].tolist())) / k

    def sae() -> None:
        row.update(sae_speed(state["model"], state["model"].config.n_layers // 2, args))

    def generation() -> None:
        model, task = state["model"], state["task"]
        n_layers = model.config.n_layers
        dropped = [f"L{layer}.ATTN" for layer in range(n_layers - args.drop, n_layers)]
        prompts = task.clean_tokens.repeat(-(-args.gen_batch // len(task.clean_tokens)), 1)[: args.gen_batch]
        if args.gen_prompt_length:  # the prompts repeated along the sequence to this many tokens
            prompts = prompts.repeat(1, -(-args.gen_prompt_length // prompts.shape[1]))[:, : args.gen_prompt_length]
        row["generation_batch"], row["generation_prompt_length"] = list(prompts.shape)
        speed = speed_comparison(model, dropped, prompts, args.new_tokens,
                                 repeats=args.repeats)
        row["generation_tokens_per_s"] = speed["full_generation_tokens_per_s"]
        row["generation_speedup"] = speed["generation_speedup"]
        context = prompts.shape[1] + args.new_tokens / 2  # the mean KV length while decoding
        row["generation_ideal_speedup"], row["generation_bytes_ideal_speedup"] = ideal_speedups(
            model, dropped, prompts.shape[0], context)
        for key, ideal in (("generation_fraction_of_ideal", "generation_ideal_speedup"),
                           ("generation_fraction_of_bytes_ideal", "generation_bytes_ideal_speedup")):
            row[key] = (row["generation_speedup"] - 1) / max(row[ideal] - 1, 1e-9)
        row["attention_layers_dropped"] = args.drop

    for label, fn in (("load_bridge", load_bridge), ("sweeps", sweeps), ("load_nnsight", load_nnsight),
                      ("atp_star", atp_star), ("sae", sae), ("generation", generation)):
        if label != "load_bridge" and "task" not in state:
            break
        if label.startswith("load") or label in args.parts:
            part(label, fn)
    return row


def sae_speed(model, layer: int, args) -> dict:
    """TopK SAE training throughput on ``L<layer>.RESID_POST``, tokens per second (after the
    activations are cached and moved to the model's device: the training steps themselves); with
    ``--saelens-python``, SAELens' TopK SAE on the same activations, batches, width, k and
    learning rate, in that interpreter (its own environment) on the same device."""
    from circuits.activation_store import ActivationStore
    from circuits.dictionary import DictionaryConfig
    from circuits.dictionary_training import TrainingConfig, train_dictionary
    from interp.corpus import load_corpus

    tokens = load_corpus("python-docs").token_chunks(model.tokenizer, args.chunk_length, args.sae_chunks, seed=0)
    site = f"L{layer}.RESID_POST"
    store = ActivationStore(model, site, "sae", tokens, batch_tokens=args.sae_batch, buffer_tokens=tokens.numel(),
                            forward_batch=8)
    on_device = (x.to(model.device) for x, _ in itertools.islice(iter(store), tokens.numel() // 2 // args.sae_batch))
    batches = [(x, x) for x in on_device]  # half a buffer (no refill); an SAE's target is its input
    config = DictionaryConfig(d_in=model.config.d_model, d_sae=8 * model.config.d_model, k=32, kind="sae", site=site)
    total = sum(len(x) for x, _ in batches)
    training = TrainingConfig(total_tokens=total, batch_tokens=args.sae_batch, device=str(model.device))
    trained = train_dictionary(iter(batches), config, training, progress=False)
    found = {"sae_tokens_per_second": trained.tokens_per_second}
    if args.saelens_python:
        found.update(_saelens_speed(args.saelens_python, batches, config, training, str(model.device)))
    return found


def _saelens_speed(python: str, batches: list, config, training, device: str) -> dict:
    """SAELens' TopK SAE trained by ``benchmarks/saelens_side.py`` in ``python`` on ``batches``."""
    import subprocess

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as scratch:
        train = torch.cat([x for x, _ in batches]).float().cpu()
        save_file({"train": train, "eval": train[-training.batch_tokens:].clone()}, Path(scratch) / "data.safetensors")
        out = Path(scratch) / "saelens.json"
        subprocess.run([python, str(ROOT / "benchmarks" / "saelens_side.py"), "--cache", scratch, "--json", str(out),
                        "--tokens", str(len(train)), "--eval-tokens", str(training.batch_tokens), "--d-sae",
                        str(config.d_sae), "--k", str(config.k), "--batch", str(training.batch_tokens), "--dead-tokens",
                        str(config.dead_tokens), "--lr", str(training.lr), "--device", device], check=True)
        side = json.loads(out.read_text())
    return {"saelens_tokens_per_second": side["tokens_per_second"], "saelens_version": side["saelens_version"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models in float32 (any machine; what CI runs)")
    parser.add_argument("--n-prompts", type=int, default=None)
    parser.add_argument("--drop", type=int, default=None, help="attention layers dropped for the generation speed-up")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-transformer-lens", action="store_true")
    parser.add_argument("--device", default=None, help="default: cuda when present (cpu with --tiny)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--models", default=None, help="a comma-separated subset of the models (default: all)")
    parser.add_argument("--parts", default="sweeps,atp_star,sae,generation",
                        help="a comma-separated subset of sweeps, atp_star, sae, generation")
    parser.add_argument("--gen-batch", type=int, default=None, help="prompts generated from at once (default 8)")
    parser.add_argument("--gen-prompt-length", type=int, default=None,
                        help="prompt tokens for the generation timing (default: the task's prompts as they are)")
    parser.add_argument("--saelens-python", default=None,
                        help="a Python with sae-lens installed (its own environment: it pins transformer-lens<4); "
                             "SAELens' TopK SAE then trains on the same activations (default: not run)")
    parser.add_argument("--tokenizer", default=None,
                        help="a folder holding SmolLM2's tokenizer (default: converted from the bundled GGUF)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cuda = device.startswith("cuda") and not args.tiny  # the full-size settings
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    shapes = SHAPES if cuda else TINY
    defaults = {"n_prompts": 8 if cuda else 2, "drop": 4 if cuda else 1, "new_tokens": 64 if cuda else 4}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.chunk_length = 128 if cuda else 16
    args.gen_batch = args.gen_batch or (8 if cuda else 2)
    args.parts = set(args.parts.split(","))
    if args.models:
        unknown = set(args.models.split(",")) - set(shapes)
        if unknown:
            parser.error(f"unknown models {sorted(unknown)}; these are {sorted(shapes)}")
        shapes = {name: shapes[name] for name in args.models.split(",")}
    args.sae_chunks, args.sae_batch = (1024, 4096) if cuda else (8, 32)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, (class_name, shape) in shapes.items():
            folder = build(Path(scratch) / name, class_name, shape, getattr(torch, dtype), args.tokenizer)
            rows.append(benchmark(name, folder, dtype, device, args))
            print(json.dumps(rows[-1]), flush=True)
            out.write_text(json.dumps({"rows": rows, "versions": interp.results.versions(),
                                       "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None},
                                      indent=1))
    print(f"\n{'model':18}{'sweep s':>9}{'TL s':>9}{'x TL':>7}{'exh. s':>8}{'AtP* s':>8}{'top-20':>8}"
          f"{'SAE tok/s':>11}{'SAELens':>9}{'gen x':>7}{'FLOPs':>7}{'bytes':>7}")
    nan = float("nan")
    for r in rows:
        g = r.get
        print(f"{r['model']:18}{g('sweep_seconds', nan):9.2f}{g('transformer_lens_sweep_seconds', nan):9.2f}"
              f"{g('sweep_speedup', nan):7.1f}{g('exhaustive_heads_seconds', nan):8.2f}{g('atp_star_seconds', nan):8.2f}"
              f"{g('atp_star_top20_overlap', nan):8.2f}{g('sae_tokens_per_second', nan):11.0f}"
              f"{g('saelens_tokens_per_second', nan):9.0f}"
              f"{g('generation_speedup', nan):7.2f}{g('generation_ideal_speedup', nan):7.2f}"
              f"{g('generation_bytes_ideal_speedup', nan):7.2f}")
    print(f"wrote {out}")
    failed = {r["model"]: r["errors"] for r in rows if r["errors"]}
    if failed:
        sys.exit(f"gpu.py: parts failed (tracebacks above): {json.dumps(failed)}")


if __name__ == "__main__":
    main()
