"""Fuzzing (hypothesis): command lines, JSONL task files and result.json files an adversarial user
could write. Every one ends in success or in a one-line error with exit status 2: never another
exit status, never a traceback, never a non-finite score written silently. One model is loaded
for all of them; the whole file runs in well under two minutes."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import interp
import interp.loading
from interp.results import Result, ResultError
from interp.ui import cli

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

VALUES = {
    "--granularity": ["heads", "heads_pos", "resid", "mlp_out", "k_pos", "pattern", "neurons", "bogus", "features"],
    "--method": ["exact", "atp", "atp*", "atp-star", "eap"],
    "--metric": ["logit_diff", "prob", "kl", "accuracy"],
    "--direction": ["noising", "denoising", "sideways"],
    "--corruption": ["tokens", "gaussian", "zero", "mean", "resample", "blur"],
    "--reference": ["task", "corpus", "ioi", "nope"],
    "--n-prompts": ["1", "2", "3", "0", "-1", "x", "100000000000"],
    "--layers": ["0", "1,2", "9", "-1", "a", "0,0"],
    "--batch-size": ["1", "4", "0", "-3", "nan", "2.5"],
    "--memory-mb": ["1", "64", "0", "nan", "inf", "-5"],
    "--seed": ["0", "3", "-1", "x"],
    "--components": ["L0.H0", "L1.H2@-1", "L9.H0", "L0.H0@IO", "garbage", "L0.MLP,L1.ATTN", "L0.H0@-99"],
    "--positions": ["auto", "start", "end", "named", "x"],
    "--verify-top": ["0", "2", "-1", "1000"],
    "--padding": ["left", "right", "up"],
    "--task": ["ioi", "landmarks", "capitals", "greater_than", "induction", "nope", "missing.jsonl"],
    "--noise-std": ["3", "0", "-1", "nan"],
    "--diagnose-samples": ["8", "2", "0"],
    "--diagnose-p": ["0.3", "1.5", "nan"],
    "--confidence": ["0.9", "1.5", "-1"],
    "--device": ["cpu", "bogus", "cpu:0"],
    "--fields": ["clean=prompt", "x", "answer=a,b=c"],
}
SWITCHES = ["--diagnose", "--no-progress", "--chat-template"]


@pytest.fixture(scope="module")
def once(tmp_path_factory):
    """random-llama loaded once for every example (the CLI asks ``interp.loading.load_model``)."""
    model = interp.load_model("random-llama")
    real = interp.loading.load_model
    interp.loading.load_model = lambda spec="random-llama", backend="nnsight", **kwargs: (
        model if (spec, backend) == ("random-llama", "nnsight") else real(spec, backend=backend, **kwargs))
    yield tmp_path_factory.mktemp("fuzz")
    interp.loading.load_model = real


def _run(argv: list[str], capsys) -> int:
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse: a bad choice or a malformed number
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    if code == 2:
        assert err and (err[-1].startswith("interp: error: ") or "error:" in err[-1]), err[-3:]
    return code


def _finite_result(out: Path) -> None:
    result = Result.load(out)
    assert np.isfinite(result.scores).all(), f"non-finite scores written in {out}"
    for value in (result.clean_metric, result.corrupt_metric):
        assert value is None or math.isfinite(value)


@SETTINGS
@given(choices=st.dictionaries(st.sampled_from(sorted(VALUES)), st.integers(0, 100), max_size=6),
       switches=st.sets(st.sampled_from(SWITCHES), max_size=2))
def test_patch_command_lines(once, capsys, choices, switches):
    argv = ["patch", "--model", "random-llama", "--n-prompts", "2", "--granularity", "heads", "--memory-mb", "64"]
    for flag, pick in choices.items():
        options = VALUES[flag]
        argv += [flag, options[pick % len(options)]]
    argv += sorted(switches)
    out = once / "run"
    if out.exists():
        import shutil
        shutil.rmtree(out)
    code = _run(argv + ["--out", str(out)], capsys)
    assert code in (0, 2), argv
    if code == 0:
        _finite_result(out)
    else:
        assert not (out / "result.json").exists()


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) |
                     st.text(string.printable, max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=6)
_ROW = st.fixed_dictionaries({}, optional={key: st.one_of(st.text(max_size=40), _JSON) for key in
                                           ("clean", "corrupt", "answer", "wrong_answer", "positions", "label")})
_PLAIN = st.fixed_dictionaries({"clean": st.text(string.ascii_letters + " ", min_size=1, max_size=30),
                                "corrupt": st.text(string.ascii_letters + " ", min_size=1, max_size=30),
                                "answer": st.sampled_from([" Paris", " Rome", " a", " New York", "", "  "]),
                                "wrong_answer": st.sampled_from([" Rome", " London", " b"])})


@SETTINGS
@given(rows=st.lists(st.one_of(_ROW, _PLAIN, _JSON), min_size=1, max_size=4),
       garbage=st.one_of(st.none(), st.binary(max_size=20)),
       corruption=st.sampled_from(["tokens", "zero", "resample"]))
def test_jsonl_task_files(once, capsys, rows, garbage, corruption):
    path = once / "task.jsonl"
    lines = [json.dumps(row).encode() for row in rows] + ([garbage] if garbage is not None else [])
    path.write_bytes(b"\n".join(lines))
    out = once / "jsonl-run"
    if out.exists():
        import shutil
        shutil.rmtree(out)
    code = _run(["patch", "--model", "random-llama", "--task", str(path), "--granularity", "heads_pos", "--layers", "0",
                 "--corruption", corruption, "--no-progress", "--out", str(out)], capsys)
    assert code in (0, 2), rows
    if code == 0:
        _finite_result(out)


@pytest.fixture(scope="module")
def good_result(once):
    out = once / "good"
    assert cli.main(["patch", "--model", "random-llama", "--n-prompts", "2", "--no-progress", "--out", str(out)]) == 0
    return json.loads((out / "result.json").read_text()), (out / "arrays.npz").read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(drop=st.sets(st.sampled_from(["method", "scores", "components", "shape", "axes", "format", "format_version",
                                     "settings", "arrays", "clean_metric"]), max_size=3),
       replace=st.dictionaries(st.sampled_from(["method", "scores", "components", "shape", "axes", "format_version",
                                                "settings", "extra", "clean_metric", "n_forward_passes", "tokens", "timings",
                                                "position_labels", "arrays", "surprise"]), _JSON, max_size=3))
def test_result_files(good_result, tmp_path_factory, drop, replace):
    """A run folder someone sent you: it reads, or it is a one-line ResultError (which the app lists
    with its reason); nothing else escapes."""
    data, arrays = good_result
    folder = tmp_path_factory.mktemp("result")
    mutated = {key: value for key, value in data.items() if key not in drop}
    mutated.update(replace)
    (folder / "result.json").write_text(json.dumps(mutated))
    (folder / "arrays.npz").write_bytes(arrays)
    try:
        result = Result.load(folder)
    except ResultError as exc:
        assert "\n" not in str(exc)
        return
    assert len(result.scores) == len(result.components)
    result.grid()  # the pages fold scores into the grid
    [f"{name}: {seconds:.1f} s" for name, seconds in result.timings.items()]  # and print the timings
