"""TopK SAE on SmolLM2's MLP output: interp vs SAELens on the same cached activations, same batches.

    python benchmarks/dictionaries.py [--layer 6] [--tokens 65536] [--eval-tokens 8192] [--d-sae 4608] [--k 32] [--lrs 1e-3,2e-3,4e-3]

Caches the activations once (interp's activation store), then for each learning rate trains
interp's TopK SAE and SAELens' TopK SAE on the same batches in the same order (SAELens in its own
virtual environment, created here on first use, because it pins transformer-lens<4; constant
learning rate, each library with its own initialization and AuxK). Reports training throughput
(dictionary steps only), explained variance, L0 and dead fraction on held-out tokens per learning
rate, and CE recovered of every SAE (interp splices each into the model) on the same held-out text; whether
SAELens opens interp's saved folder with the same reconstructions, and whether interp opens
SAELens' saved folder with SAELens' reconstructions. Prints a table and writes JSON.
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


def _saelens_side(cache: Path, args, lr: float, dead_tokens: int) -> dict:
    """Train SAELens' TopK SAE at one learning rate in its own environment; its folder is saved."""
    side, folder = cache / f"saelens-{lr:g}.json", cache / f"saelens-{lr:g}"
    subprocess.run([str(_venv_python()), str(ROOT / "saelens_side.py"), "--cache", str(cache), "--ours", str(cache / "ours"),
                    "--json", str(side), "--tokens", str(args.tokens), "--eval-tokens", str(args.eval_tokens),
                    "--d-sae", str(args.d_sae), "--k", str(args.k), "--batch", str(args.batch),
                    "--dead-tokens", str(dead_tokens), "--lr", str(lr), "--save", str(folder)], check=True)
    return json.loads(side.read_text()) | {"folder": str(folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lrs", default="1e-3,2e-3,4e-3", help="learning rates tried on both sides (constant, Adam)")
    parser.add_argument("--ce-chunks", type=int, default=64, help="held-out 128-token chunks for CE recovered")
    parser.add_argument("--out", default=str(ROOT / "results" / "dictionaries.json"))
    args = parser.parse_args()

    import interp
    from circuits.activation_store import ActivationStore
    from circuits.dictionary import DictionaryConfig
    from circuits.dictionary_evaluation import evaluate_dictionary
    from circuits.dictionary_io import load_dictionary, save_dictionary
    from circuits.dictionary_training import TrainingConfig, train_dictionary
    from interp.corpus import load_corpus
    from safetensors.torch import load_file

    site = f"L{args.layer}.MLP"
    cache = ROOT / ".cache" / f"{args.model}-{site}-{args.tokens}-{args.eval_tokens}"
    cache.mkdir(parents=True, exist_ok=True)
    data_file = cache / "data.safetensors"
    model = interp.load_model(args.model, backend="nnsight")
    train_text, held_text = load_corpus("python-docs").split(held_out=0.1, seed=0)
    held = held_text.token_chunks(model.tokenizer, 128, seed=0)
    if not data_file.exists():
        chunks = train_text.token_chunks(model.tokenizer, 128, seed=0)
        train_x = ActivationStore(model, site, "sae", chunks, batch_tokens=args.batch, buffer_tokens=16384).take(args.tokens)[0]
        eval_x = ActivationStore(model, site, "sae", held, batch_tokens=args.batch, buffer_tokens=16384).take(args.eval_tokens)[0]
        save_file({"train": train_x.contiguous(), "eval": eval_x.contiguous()}, data_file)
    data = load_file(data_file)
    train_x, eval_x = data["train"], data["eval"]
    variance = (eval_x - eval_x.mean(0)).pow(2).sum(-1).mean()
    dead_tokens = args.tokens // 4
    lrs = [float(lr) for lr in args.lrs.split(",")]
    rows = []
    for i, lr in enumerate(lrs):
        config = DictionaryConfig(d_in=train_x.shape[1], d_sae=args.d_sae, architecture="topk", k=args.k, site=site,
                                  model_name=args.model, dead_tokens=dead_tokens)
        batches = ((train_x[j:j + args.batch], train_x[j:j + args.batch]) for j in range(0, args.tokens, args.batch))
        # a constant learning rate, as SAELens trains by default (interp's default decays over the last 20%)
        trained = train_dictionary(batches, config, TrainingConfig(total_tokens=args.tokens, batch_tokens=args.batch, lr=lr,
                                                                   decay_fraction=0.0), progress=False)
        with torch.no_grad():
            reconstruction, f = trained.dictionary(eval_x)
        ours = {"seconds": trained.seconds, "tokens": trained.tokens_seen, "tokens_per_second": trained.tokens_per_second,
                "explained_variance": float(1 - (eval_x - reconstruction).pow(2).sum(-1).mean() / variance),
                "l0": float((f > 0).float().sum(-1).mean()), "dead_fraction": trained.dictionary.dead_fraction(),
                "folder": str(save_dictionary(trained.dictionary, cache / f"ours-{lr:g}"))}
        if i == 0:  # the folder SAELens is asked to open
            save_dictionary(trained.dictionary, cache / "ours")
            save_file({"reconstruction": reconstruction.contiguous()}, cache / "ours_reconstruction.safetensors")
        rows.append({"lr": lr, "interp": ours, "saelens": _saelens_side(cache, args, lr, dead_tokens)})

    # SAELens' trained folder opened by interp: the same reconstructions?
    theirs_folder = Path(rows[0]["saelens"]["folder"])
    with torch.no_grad():
        ours_of_theirs = load_dictionary(theirs_folder)(eval_x)[0]
    expected = load_file(theirs_folder / "saelens_reconstruction.safetensors")["reconstruction"]
    per_token = (ours_of_theirs - expected).norm(dim=-1) / expected.norm(dim=-1).clamp_min(1e-12)
    interp_opens_saelens = {"tokens": len(per_token), "tokens_within_1e-4": int((per_token <= 1e-4).sum()),
                            "relative_difference": float((ours_of_theirs - expected).norm() / expected.norm())}

    # CE recovered of every trained SAE (both spliced into the model by interp, on the same held-out text);
    # "best" is each side's best learning rate by explained variance
    ce_tokens = held[:args.ce_chunks].to(model.device)
    keys = ("ce_clean", "ce_spliced", "ce_zero_ablation", "ce_recovered", "kl_to_clean")
    for row in rows:
        for side in ("interp", "saelens"):
            metrics = evaluate_dictionary(model, load_dictionary(row[side]["folder"]), ce_tokens, site=site)
            row[side].update({key: metrics[key] for key in keys})
    best = {}
    for side in ("interp", "saelens"):
        row = max(rows, key=lambda r: r[side]["explained_variance"])
        best[side] = {"lr": row["lr"], "explained_variance": row[side]["explained_variance"], "l0": row[side]["l0"],
                      **{key: row[side][key] for key in keys}}

    saelens_version = rows[0]["saelens"]["saelens_version"]
    throughput = {side: sum(r[side]["tokens"] for r in rows) / sum(r[side]["seconds"] for r in rows) for side in ("interp", "saelens")}
    result = {"model": args.model, "site": site, "d_in": int(train_x.shape[1]), "d_sae": args.d_sae, "k": args.k,
              "batch": args.batch, "tokens": args.tokens, "threads": torch.get_num_threads(), "saelens_version": saelens_version,
              "by_lr": rows, "best": best, "tokens_per_second": throughput,
              "throughput_ratio": throughput["interp"] / throughput["saelens"],
              "saelens_opens_interp": rows[0]["saelens"]["load_ours"], "interp_opens_saelens": interp_opens_saelens,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"TopK SAE at {site} of {args.model}: d_sae {args.d_sae}, k {args.k}, {args.tokens:,} training tokens, "
          f"{args.eval_tokens:,} held-out; interp vs SAELens {saelens_version}")
    print(f"  {'lr':<8}{'EV interp':>11}{'EV SAELens':>12}{'CE rec. interp':>16}{'CE rec. SAELens':>17}{'L0':>6}"
          f"{'dead interp':>13}{'dead SAELens':>14}")
    for r in rows:
        print(f"  {r['lr']:<8g}{r['interp']['explained_variance']:>11.4f}{r['saelens']['explained_variance']:>12.4f}"
              f"{r['interp']['ce_recovered']:>16.4f}{r['saelens']['ce_recovered']:>17.4f}"
              f"{r['interp']['l0']:>6.0f}{r['interp']['dead_fraction']:>13.3f}{r['saelens']['dead_fraction']:>14.3f}")
    for side in ("interp", "saelens"):
        b = best[side]
        print(f"  best {side:<8} lr {b['lr']:g}: EV {b['explained_variance']:.4f}, CE clean {b['ce_clean']:.3f} / spliced "
              f"{b['ce_spliced']:.3f} / zero-ablated {b['ce_zero_ablation']:.3f} -> CE recovered {b['ce_recovered']:.3f}")
    print(f"  training throughput: interp {throughput['interp']:,.0f} tokens/s, SAELens {throughput['saelens']:,.0f} "
          f"({result['throughput_ratio']:.2f}x)")
    load = result["saelens_opens_interp"]
    print(f"  SAELens opens interp's folder as {load['architecture']!r}: max |reconstruction difference| "
          f"{load['max_abs_difference']:.2e}; interp opens SAELens' folder: {interp_opens_saelens['tokens_within_1e-4']} of "
          f"{interp_opens_saelens['tokens']} tokens within 1e-4 (relative {interp_opens_saelens['relative_difference']:.1e})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
