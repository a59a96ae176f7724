import json

import pytest

from interp import patching
from interp.ui import cli
from interp.results import Result

BASE = ["patch", "--model", "random-llama", "--task", "ioi", "--n-prompts", "3"]


def test_patch_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(BASE + ["--granularity", "heads", "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    assert data["method"] == "exact" and data["granularity"] == "heads" and data["task"] == "ioi"
    assert len(data["components"]) == len(data["scores"]) == 3 * 4
    assert (out / "heatmap.html").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "top components" in printed and str(out / "result.json") in printed
    assert Result.load(out).n_forward_passes == data["n_forward_passes"]


@pytest.mark.parametrize("extra, message", [
    (["--task", "nope"], "interp: error: unknown task 'nope'"),
    (["--model", "no-such-model"], "interp: error: unknown model 'no-such-model'"),
    (["--layers", "1,x"], "interp: error: --layers must be comma-separated integers"),
    (["--layers", "9"], "interp: error: layer 9 is out of range"),
])
def test_bad_input_is_one_line(tmp_path, capsys, extra, message):
    assert cli.main(BASE + ["--out", str(tmp_path / "r")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message)
    assert not (tmp_path / "r" / "result.json").exists()


def test_unknown_granularity_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.main(BASE + ["--granularity", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_interrupted_sweep_writes_nothing(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(patching, "_patched_values", interrupt)
    assert cli.main(BASE + ["--out", str(tmp_path / "r")]) == 130
    assert not (tmp_path / "r" / "result.json").exists()
    assert "no result was written" in capsys.readouterr().err


def test_patch_atp_star_with_verification(tmp_path, capsys):
    out = tmp_path / "atp"
    assert cli.main(BASE + ["--granularity", "heads", "--method", "atp*", "--verify-top", "3", "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    assert data["method"] == "atp*" and data["n_backward_passes"] == 1 + 3
    assert len(data["extra"]["verification"]["exact"]) == 3
    assert "exact" in capsys.readouterr().out
    assert {"exact", "importance", "per_prompt"} <= set(Result.load(out).arrays)


def test_patch_atp_star_with_the_diagnostic(tmp_path, capsys):
    out = tmp_path / "diag"
    assert cli.main(BASE + ["--granularity", "heads_pos", "--method", "atp*", "--verify-top", "4", "--diagnose",
                            "--out", str(out)]) == 0
    diagnostic = json.loads((out / "result.json").read_text())["extra"]["diagnostic"]
    assert diagnostic["samples"] == 256 and 0 <= diagnostic["bound"] < 10
    first = diagnostic["first_differing_position"]
    assert first > 0 and int(diagnostic["component"].split("@")[1]) >= first
    assert "confidence" in capsys.readouterr().out


def test_verification_needs_an_attribution_method(tmp_path, capsys):
    assert cli.main(BASE + ["--verify-top", "3", "--out", str(tmp_path / "r")]) == 2
    assert "interp: error: --verify-top and --diagnose check an AtP/AtP* ranking" in capsys.readouterr().err


SMALL = ["--model", "random-llama", "--chunk-length", "24", "--calibration-chunks", "2", "--held-out-chunks", "2",
         "--task-prompts", "4", "--gen-tokens", "2"]


def test_redundancy_writes_scores_curves_and_findings(tmp_path, capsys):
    out = tmp_path / "red"
    assert cli.main(["redundancy", *SMALL, "--max-drop", "2", "--random-seeds", "2", "--out", str(out)]) == 0
    result = Result.load(out)
    assert result.method == "redundancy" and result.shape == [3, 3] and result.axes == ["unit", "layer"]
    assert result.components[:3] == ["L0.ATTN", "L1.ATTN", "L2.ATTN"] and result.components[-1] == "L2.BLOCK"
    assert set(result.arrays) >= {"cos", "angular", "loss_change", "divergence"}
    assert abs(result.scores - (1 - result.arrays["cos"])).max() < 1e-12
    curves = result.extra["curves"]
    assert [c["name"] for c in curves["curves"]][-2:] == ["random/seed0", "random/seed1"]
    assert all(len(c["points"]) == 3 for c in curves["curves"])
    assert set(result.extra["findings"]) == {"attention_more_redundant_than_mlp", "redundant_attention_in_deeper_layers",
                                             "dropping_similar_attention_hurts_less"}
    assert (out / "redundancy.html").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "importance (1 - cos) per layer" in printed and "perplexity after dropping k units" in printed


def test_drop_compares_with_the_intact_model(tmp_path, capsys):
    out = tmp_path / "drop"
    assert cli.main(["drop", *SMALL, "--attn", "1", "--units", "L2.MLP", "--repeats", "1", "--out", str(out)]) == 0
    result = Result.load(out)
    assert result.method == "drop" and len(result.components) == 2 and result.components[0] == "L2.MLP"
    assert result.extra["dropped"]["n_attn_dropped"] == 1 and result.extra["dropped"]["n_mlp_dropped"] == 1
    assert result.extra["dropped"]["perplexity"] != result.extra["full"]["perplexity"]
    assert result.extra["speed"]["generation_speedup"] > 0
    assert "generation tokens/s" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["drop", *SMALL], "interp: error: nothing to drop"),
    (["drop", *SMALL, "--attn", "4"], "interp: error: cannot drop 4 units with method 'attn': random-llama has 3 candidates"),
    (["drop", *SMALL, "--units", "L7.MLP"], "interp: error: unit L7.MLP is out of range"),
    (["drop", *SMALL, "--units", "L1.HEAD"], "interp: error: cannot parse unit 'L1.HEAD'"),
    (["redundancy", *SMALL, "--max-drop", "5"], "interp: error: --max-drop 5 is out of range"),
    (["redundancy", *SMALL, "--methods", "attn,best"], "interp: error: unknown drop method 'best'"),
    (["redundancy", *SMALL, "--chunk-length", "0"], "interp: error: --chunk-length must be at least 1"),
    (["redundancy", *SMALL, "--calibration-chunks", "100000"], "interp: error: corpus 'python-docs[rest]' has"),
])
def test_redundancy_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert cli.main(argv + ["--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "r" / "result.json").exists()


def test_redundancy_empty_calibration_text(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert cli.main(["redundancy", *SMALL, "--corpus", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interp: error: corpus '{empty}' has no text"
