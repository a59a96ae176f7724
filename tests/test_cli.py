import json

import pytest

from interp import cli, patching
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

    monkeypatch.setattr(patching, "_patched_forward", interrupt)
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


def test_verification_needs_an_attribution_method(tmp_path, capsys):
    assert cli.main(BASE + ["--verify-top", "3", "--out", str(tmp_path / "r")]) == 2
    assert "interp: error: --verify-top and --diagnose check an AtP/AtP* ranking" in capsys.readouterr().err
