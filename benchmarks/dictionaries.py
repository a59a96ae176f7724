"""TopK SAE on SmolLM2's MLP output: interp vs SAELens on the same cached activations, same batches.

    python benchmarks/dictionaries.py [--layer 6] [--tokens 65536] [--eval-tokens 8192] [--d-sae 4608] [--k 32]

Caches the activations once (interp's activation store), trains interp's TopK SAE and SAELens'
TopK SAE on the same batches in the same order (SAELens in its own virtual environment, created
here on first use, because it pins transformer-lens<4), and reports training throughput (dictionary
steps only), explained variance and L0 on held-out tokens (both at a constant learning rate, each with
its own initialization and AuxK), and whether SAELens opens interp's saved
folder and reproduces its reconstructions. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-saelens"


def _venv_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} (torch 2.13.0 CPU + sae-lens) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "sae-lens"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=str(ROOT / "results" / "dictionaries.json"))
    args = parser.parse_args()

    import interp
    from circuits.activation_store import ActivationStore
    from circuits.dictionary import DictionaryConfig, SparseDictionary
    from circuits.dictionary_io import save_dictionary
    from circuits.dictionary_training import TrainingConfig, train_dictionary
    from interp.corpus import load_corpus

    site = f"L{args.layer}.MLP"
    cache = ROOT / ".cache" / f"{args.model}-{site}-{args.tokens}-{args.eval_tokens}"
    cache.mkdir(parents=True, exist_ok=True)
    data_file = cache / "data.safetensors"
    if not data_file.exists():
        model = interp.load_model(args.model, backend="nnsight")
        train_text, held_text = load_corpus("python-docs").split(held_out=0.1, seed=0)
        chunks = train_text.token_chunks(model.tokenizer, 128, seed=0)
        held = held_text.token_chunks(model.tokenizer, 128, seed=0)
        train_x = ActivationStore(model, site, "sae", chunks, batch_tokens=args.batch, buffer_tokens=16384).take(args.tokens)[0]
        eval_x = ActivationStore(model, site, "sae", held, batch_tokens=args.batch, buffer_tokens=16384).take(args.eval_tokens)[0]
        save_file({"train": train_x.contiguous(), "eval": eval_x.contiguous()}, data_file)
    from safetensors.torch import load_file

    data = load_file(data_file)
    train_x, eval_x = data["train"], data["eval"]
    dead_tokens = args.tokens // 4
    config = DictionaryConfig(d_in=train_x.shape[1], d_sae=args.d_sae, architecture="topk", k=args.k, site=site,
                              model_name=args.model, dead_tokens=dead_tokens)
    batches = ((train_x[i:i + args.batch], train_x[i:i + args.batch]) for i in range(0, args.tokens, args.batch))
    # a constant learning rate, as SAELens trains by default (interp's default decays over the last 20%)
    trained = train_dictionary(batches, config, TrainingConfig(total_tokens=args.tokens, batch_tokens=args.batch, lr=args.lr,
                                                               decay_fraction=0.0), progress=False)
    dictionary: SparseDictionary = trained.dictionary
    with torch.no_grad():
        reconstruction, f = dictionary(eval_x)
    variance = (eval_x - eval_x.mean(0)).pow(2).sum(-1).mean()
    ours = {"seconds": trained.seconds, "tokens": trained.tokens_seen, "tokens_per_second": trained.tokens_per_second,
            "explained_variance": float(1 - (eval_x - reconstruction).pow(2).sum(-1).mean() / variance),
            "l0": float((f > 0).float().sum(-1).mean()), "dead_fraction": dictionary.dead_fraction()}
    save_dictionary(dictionary, cache / "ours")
    save_file({"reconstruction": reconstruction.contiguous()}, cache / "ours_reconstruction.safetensors")

    side = cache / "saelens.json"
    subprocess.run([str(_venv_python()), str(ROOT / "saelens_side.py"), "--cache", str(cache), "--ours", str(cache / "ours"),
                    "--json", str(side), "--tokens", str(args.tokens), "--eval-tokens", str(args.eval_tokens),
                    "--d-sae", str(args.d_sae), "--k", str(args.k), "--batch", str(args.batch),
                    "--dead-tokens", str(dead_tokens), "--lr", str(args.lr)], check=True)
    theirs = json.loads(side.read_text())
    result = {"model": args.model, "site": site, "d_in": int(train_x.shape[1]), "d_sae": args.d_sae, "k": args.k,
              "batch": args.batch, "lr": args.lr, "threads": torch.get_num_threads(), "interp": ours, "saelens": theirs,
              "throughput_ratio": ours["tokens_per_second"] / theirs["tokens_per_second"], "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"TopK SAE at {site} of {args.model}: d_sae {args.d_sae}, k {args.k}, {args.tokens:,} training tokens, "
          f"{args.eval_tokens:,} held-out")
    print(f"  {'':<10}{'tokens/s':>12}{'expl. var.':>12}{'L0':>8}{'dead':>8}")
    for name, row in (("interp", ours), (f"SAELens {theirs['saelens_version']}", theirs)):
        print(f"  {name:<10}{row['tokens_per_second']:>12,.0f}{row['explained_variance']:>12.4f}{row['l0']:>8.1f}{row['dead_fraction']:>8.3f}")
    load = theirs["load_ours"]
    print(f"  SAELens opens interp's folder as {load['architecture']!r}: max |reconstruction difference| "
          f"{load['max_abs_difference']:.2e} (relative {load['relative_difference']:.2e})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
