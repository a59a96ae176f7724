"""The benchmark scripts run on any machine in their tiny configurations (what CI can check); the GPU
benchmark's head x position sweep equals TransformerLens' on the same cells."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["llama-tiny", "gemma2-tiny"]
    for row in rows:
        assert row["sweep_max_abs_difference"] < 1e-4 and not row["errors"]
        assert row["sae_tokens_per_second"] > 0 and 0 <= row["atp_star_top20_overlap"] <= 1
    # the ceilings, counted by hand for the tiny Llama (3 layers, d_model 64, 4 heads of 16, 2 KV
    # heads, MLP 128, SmolLM2's 49,152 tokens, tied embeddings): the last attention sublayer holds
    # q, o (64 x 64), k, v (64 x 32) and its norm (64); every parameter but the input embedding is
    # read once per token, the unembedding (the tied embedding) included; the KV cache holds 2 x 2
    # heads x 16 x (14 + 4/2) positions x 2 prompts per layer
    llama = rows[0]
    attention = 2 * 64 * 64 + 2 * 64 * 32 + 64
    weights = 49152 * 64 + 3 * (attention + 3 * 64 * 128 + 64) + 64
    removed, kv = attention, 2 * 2 * 16 * (14 + 4 / 2) * 2
    assert llama["parameters"] == weights
    assert (llama["generation_batch"], llama["generation_prompt_length"]) == (2, 14)
    assert abs(llama["generation_ideal_speedup"] - weights / (weights - removed)) < 1e-12
    assert abs(llama["generation_bytes_ideal_speedup"] - (weights + 3 * kv) / (weights + 3 * kv - removed - kv)) < 1e-12
    assert "wrote" in done.stdout


def test_the_scaling_benchmark_runs_tiny_and_counts_flops_right(tmp_path):
    """benchmarks/scaling.py --tiny: every axis and method measured, and the FLOP estimates follow
    the analytic counts (an exact sweep's work is linear in the prompts; an SAE step's does not
    depend on the model's depth; one forward's matrix work grows linearly with depth)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import scaling

    result = scaling.main(["--tiny", "--axes", "layers,prompts", "--out", str(tmp_path / "scaling.json")])
    assert json.loads((tmp_path / "scaling.json").read_text())["fits"] == result["fits"]
    fits = {(f["axis"], f["method"]): f for f in result["fits"]}
    assert set(fits) == {(axis, method) for axis in ("layers", "prompts") for method in scaling.METHODS}
    for row in result["rows"]:
        for method in scaling.METHODS:
            assert row["methods"][method]["seconds"] > 0 and row["methods"][method]["flops"] > 0
    for method in ("exact_heads", "atp_star", "eap_ig"):
        assert abs(fits[("prompts", method)]["flops_exponent"] - 1) < 0.02
    assert abs(fits[("layers", "sae_step")]["flops_exponent"]) < 1e-9
    point = dict(scaling.TINY_BASE, prompts=1, positions=1)
    layer_weights, _ = scaling.parameters(point, 100)
    assert scaling.forward_flops(point, 100) == 2 * layer_weights + 4 * point["layers"] * point["d_model"] + 200 * point["d_model"]


def test_the_gpu_benchmark_hands_saelens_the_same_training(tmp_path):
    """``--saelens-python``: SAELens' side gets our activations, batch size, width, k, learning rate
    and device (a stand-in interpreter records what it was given; the real side is
    ``benchmarks/saelens_side.py``, run by ``benchmarks/dictionaries.py``)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu
    from circuits.dictionary import DictionaryConfig
    from circuits.dictionary_training import TrainingConfig

    record = tmp_path / "args.json"
    stand_in = tmp_path / "python"
    stand_in.write_text(f"""#!{sys.executable}
import json, sys
from safetensors.torch import load_file
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
train = load_file(args["--cache"] + "/data.safetensors")["train"]
json.dump({{"args": args, "rows": len(train), "sum": float(train.sum())}}, open({str(record)!r}, "w"))
json.dump({{"tokens_per_second": 123.0, "saelens_version": "stand-in"}}, open(args["--json"], "w"))
""")
    stand_in.chmod(0o755)
    batches = [(x, x) for x in torch.randn(3, 8, 4)]
    config = DictionaryConfig(d_in=4, d_sae=16, k=2, kind="sae")
    found = gpu._saelens_speed(str(stand_in), batches, config, TrainingConfig(total_tokens=24, batch_tokens=8), "cpu")
    assert found == {"saelens_tokens_per_second": 123.0, "saelens_version": "stand-in"}
    seen = json.loads(record.read_text())
    assert seen["rows"] == 24 and abs(seen["sum"] - float(torch.cat([x for x, _ in batches]).sum())) < 1e-4
    args = seen["args"]
    assert (args["--tokens"], args["--batch"], args["--d-sae"], args["--k"], args["--device"]) == ("24", "8", "16", "2", "cpu")
    assert float(args["--lr"]) == TrainingConfig().lr and int(args["--dead-tokens"]) == config.dead_tokens


def test_the_gpu_benchmark_names_an_unknown_model_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--models", "llama-tiny,nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("unknown models ['nope']; these are ['gemma2-tiny', 'llama-tiny']")
