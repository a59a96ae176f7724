"""SAELens' side of benchmarks/dictionaries.py. Runs in the SAELens virtual environment (SAELens pins
transformer-lens<4), reads the activations interp cached, trains SAELens' TopK SAE on them with
the same batches, and opens interp's saved dictionary with ``SAE.load_from_disk``. Writes JSON."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--cache", "--json"):
        parser.add_argument(name, required=True)
    parser.add_argument("--ours", help="interp's saved dictionary, opened with SAE.load_from_disk (default: not)")
    parser.add_argument("--device", default="cpu", help="where SAELens trains (the data moves there first)")
    for name in ("--tokens", "--eval-tokens", "--d-sae", "--k", "--batch", "--dead-tokens"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--save", help="save the trained SAE here (SAELens' save_model) with its held-out reconstruction")
    args = parser.parse_args()

    import sae_lens
    from sae_lens import SAE
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    data = load_file(Path(args.cache) / "data.safetensors")
    train, evaluation = data["train"].to(args.device), data["eval"].to(args.device)
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=train.shape[1], d_sae=args.d_sae, k=args.k, device=args.device))
    sae.to(args.device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr)
    since_fired = torch.zeros(args.d_sae, dtype=torch.long, device=args.device)
    steps = args.tokens // args.batch
    cuda = torch.device(args.device).type == "cuda"
    start = time.perf_counter()
    for step in range(steps):
        x = train[step * args.batch:(step + 1) * args.batch]
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since_fired >= args.dead_tokens,
                                                       n_training_steps=step, is_logging_step=False))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        with torch.no_grad():
            fired = (out.feature_acts > 0).any(0)
            since_fired += len(x)
            since_fired[fired] = 0
    if cuda:
        torch.cuda.synchronize()  # the clock reads finished work
    seconds = time.perf_counter() - start
    with torch.no_grad():
        f = sae.encode(evaluation)
        reconstruction = sae.decode(f)
    if args.save:
        sae.save_model(args.save)
        save_file({"reconstruction": reconstruction.cpu().contiguous()}, Path(args.save) / "saelens_reconstruction.safetensors")
    variance = (evaluation - evaluation.mean(0)).pow(2).sum(-1).mean()
    result = {"saelens_version": sae_lens.__version__, "seconds": seconds, "tokens": steps * args.batch,
              "tokens_per_second": steps * args.batch / seconds,
              "explained_variance": float(1 - (evaluation - reconstruction).pow(2).sum(-1).mean() / variance),
              "l0": float((f > 0).float().sum(-1).mean()), "dead_fraction": float((since_fired >= args.dead_tokens).float().mean())}
    if args.ours is None:
        Path(args.json).write_text(json.dumps(result, indent=1))
        return
    ours = SAE.load_from_disk(args.ours)
    expected = load_file(Path(args.cache) / "ours_reconstruction.safetensors")["reconstruction"]
    with torch.no_grad():
        theirs = ours.decode(ours.encode(evaluation.cpu()))
    result["load_ours"] = {"architecture": ours.cfg.architecture(), "max_abs_difference": float((theirs - expected).abs().max()),
                           "relative_difference": float((theirs - expected).norm() / expected.norm())}
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
