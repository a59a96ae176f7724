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
    # the ceilings, counted by hand for the tiny Llama (d_model 64, 4 heads of 16, 2 KV heads, tied
    # embeddings): the last attention sublayer holds q, o (64 x 64), k, v (64 x 32) and its norm
    # (64); every parameter but the input embedding is read once per token, the unembedding
    # (the tied embedding) included; the KV cache holds 2 x 2 heads x 16 x (14 + 4/2) positions x
    # 2 prompts per layer
    llama = rows[0]
    weights, removed, kv = llama["parameters"], 2 * 64 * 64 + 2 * 64 * 32 + 64, 2 * 2 * 16 * (14 + 4 / 2) * 2
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
