"""The GPU benchmark script runs on any machine in its tiny configuration (what CI can check), and
its head x position sweep equals TransformerLens' on the same cells."""

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
        assert row["sweep_max_abs_difference"] < 1e-4
        assert row["generation_ideal_speedup"] > 1 and row["sae_tokens_per_second"] > 0
        assert 0 <= row["atp_star_top20_overlap"] <= 1
    assert "wrote" in done.stdout
