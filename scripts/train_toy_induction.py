"""Train the toy induction model (2-layer, attention-only Llama) and save it to
interp/data/toy-induction. Takes one to two minutes on a 2-core CPU.

    python scripts/train_toy_induction.py [--steps 1500] [--out DIR]
"""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM

from interp.toy_models import (TOY_INDUCTION_DIR, induction_scores, previous_token_scores,
                               repeated_random_tokens, toy_induction_config, toy_tokenizer)

HALF = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default=str(TOY_INDUCTION_DIR))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = LlamaForCausalLM(toy_induction_config())
    for layer in model.model.layers:  # attention-only: the MLP contributes exactly zero
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
        layer.mlp.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)
    bar = tqdm(range(args.steps), desc="training toy induction model")
    for step in bar:
        # a varying repeat distance, so that only content-based induction (not a fixed positional
        # offset) predicts the second half
        half = int(torch.randint(4, 31, (1,)))
        tokens = repeated_random_tokens(64, half, seed=step + 1)
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")

    model.eval()
    tokens = repeated_random_tokens(32, HALF, seed=10**6)
    with torch.no_grad():
        out = model(tokens, output_attentions=True)
    print(f"final loss {loss.item():.3f}")
    print("layer 0 previous-token scores:", previous_token_scores(out.attentions[0]).tolist())
    print("layer 1 induction scores:", induction_scores(out.attentions[1], HALF).tolist())
    model.save_pretrained(args.out)
    toy_tokenizer().save_pretrained(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
