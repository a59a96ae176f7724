"""Builds the fixture run folders the app tests open (small runs on toy and random models)."""

from __future__ import annotations

from pathlib import Path

from circuits.dictionary import DictionaryConfig, SparseDictionary
from circuits.dictionary_io import save_dictionary
from interp.ui import cli

RUNS = {
    "heads-exact": ["patch", "--model", "toy-induction", "--task", "induction", "--n-prompts", "4", "--granularity",
                    "heads", "--method", "exact"],
    "heads-atp-star": ["patch", "--model", "toy-induction", "--task", "induction", "--n-prompts", "4", "--granularity",
                       "heads", "--method", "atp*", "--verify-top", "4"],
    "landmarks-heads-pos": ["patch", "--model", "random-llama", "--task", "landmarks", "--n-prompts", "4", "--granularity",
                            "heads_pos", "--layers", "0,2"],
    "redundancy": ["redundancy", "--model", "random-llama", "--chunk-length", "32", "--calibration-chunks", "2",
                   "--held-out-chunks", "2", "--task-prompts", "4", "--gen-tokens", "2", "--max-drop", "2",
                   "--methods", "attn,mlp,random", "--random-seeds", "1"],
    "edges": ["edges", "--model", "toy-induction", "--task", "induction", "--n-prompts", "4", "--method", "eap-ig", "eap",
              "--ig-steps", "2", "--top-n", "10", "--sizes", "1,5,20"],
    "edges-tracr": ["edges", "--model", "tracr-reverse", "--task", "tracr", "--n-prompts", "8", "--method", "eap-ig",
                    "eap", "--top-n", "5", "--sizes", "1,2,5"],
    "bigram": ["bigram", "--model", "toy-bigram", "--corpus", "toy-markov", "--steps", "10", "--batch-size", "4",
               "--seq-len", "64", "--lr", "0.01", "--held-out-chunks", "8"],
    "drop": ["drop", "--model", "random-llama", "--chunk-length", "24", "--calibration-chunks", "2", "--held-out-chunks", "2",
             "--task-prompts", "4", "--gen-tokens", "2", "--attn", "1", "--units", "L2.MLP", "--repeats", "2"],
    "dla": ["dla", "--model", "random-llama", "--task", "ioi", "--n-prompts", "3", "--by-source"],
    "lens": ["lens", "--model", "random-llama", "--task", "ioi", "--n-prompts", "3"],
    "steer": ["steer", "--model", "random-llama", "--task", "ioi", "--n-prompts", "3", "--new-tokens", "3",
              "--neutral-chunks", "2", "--neutral-length", "16", "--coefficients=-2,0,2",
              "--site", "L0.RESID_PRE,L1.RESID_PRE"],
    "tuned-lens": ["tuned-lens", "--model", "random-llama", "--train-chunks", "6", "--held-out-chunks", "2",
                   "--chunk-length", "16"],
    "probe": ["probe", "--model", "random-llama", "--task", "ioi", "--n-prompts", "12", "--folds", "3"],
    "sae": ["sae", "train", "--model", "random-llama", "--site", "L1.RESID_POST", "--k", "4", "--expansion", "2",
            "--tokens", "2048", "--batch-tokens", "128", "--buffer-tokens", "512", "--chunk-length", "32", "--eval-chunks", "2"],
}


def build_runs(root: Path) -> Path:
    """Write every fixture run under ``root``, plus one corrupt and one foreign folder."""
    for name, args in RUNS.items():
        assert cli.main(args + ["--out", str(root / name)]) == 0, name
    assert cli.main(["sae", "eval", "--dictionary", str(root / "sae" / "dictionary"), "--model", "random-llama", "--chunk-length",
                     "32", "--eval-chunks", "2", "--out", str(root / "sae" / "dictionary-eval")]) == 0  # nested, as by default
    transcoder = root.parent / f"{root.name}-transcoder"  # a random transcoder of random-llama's MLP 1, outside the runs
    save_dictionary(SparseDictionary(DictionaryConfig(d_in=64, d_sae=96, k=8, kind="transcoder", site="L1.MLP")), transcoder)
    assert cli.main(["patch", "--model", "random-llama", "--n-prompts", "4", "--dictionary", str(transcoder),
                     "--granularity", "features_pos", "--method", "atp*", "--verify-top", "5",
                     "--out", str(root / "features-atp-star")]) == 0
    assert cli.main(["transcoder", "circuit", "--transcoders", str(transcoder), "--model", "random-llama", "--prompt",
                     "When Mary and John went to the store, John gave a drink to", "--target", " Mary| John",
                     "--max-heads", "8", "--node-threshold", "0.95", "--out", str(root / "feature-graph")]) == 0
    (root / "corrupt").mkdir()
    (root / "corrupt" / "result.json").write_text("{ not json")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    return root
