"""Every failure a user can cause is one line naming the value (exit status 2), before the work
starts where it can be checked there; nothing is silently replaced, clamped or made up. The cases
are the ones an adversarial session found (issue "Hardening")."""

from __future__ import annotations

import json
import os

import pytest
import torch

from interp.ui import cli
from interp.results import Result

BASE = ["patch", "--model", "random-llama", "--task", "ioi", "--n-prompts", "2", "--no-progress"]


def _one_line(capsys, argv, message, code=2):
    assert cli.main(argv) == code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("loading ")]
    assert err and err[-1].startswith(message), err
    assert len(err[-1].splitlines()) == 1
    return err[-1]


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "-3"], "interp: error: --batch-size must be at least 1, got -3"),
    (["--batch-size", "0"], "interp: error: --batch-size must be at least 1, got 0"),
    (["--memory-mb", "0"], "interp: error: --memory-mb must be at least 1, got 0"),
    (["--memory-mb", "-5"], "interp: error: --memory-mb must be at least 1, got -5"),
    (["--memory-mb", "nan"], "interp: error: --memory-mb must be a finite number, got nan"),
    (["--memory-mb", "inf"], "interp: error: --memory-mb must be a finite number, got inf"),
    (["--components", "L0.H0", "--layers", "2"], "interp: error: --layers restricts a granularity's sweep"),
    (["--method", "atp-star", "--diagnose", "--confidence", "1.5"], "interp: error: --confidence must be at most 1, got 1.5"),
    (["--device", "bogus"], "interp: error: --device 'bogus' is not a torch device"),
    (["--device", "tpu"], "interp: error: --device 'tpu' is not a torch device"),
    (["--n-prompts", "100000000000"], "interp: error: --n-prompts 100000000000 would need about"),
])
def test_bad_numbers_and_devices_are_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, extra, message):
    import interp.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad value was caught")
    if "--n-prompts" not in extra:  # the prompt count is checked when the task is built, after loading
        monkeypatch.setattr(interp.loading, "load_model", no_loading)
    _one_line(capsys, BASE + ["--out", str(tmp_path / "r")] + extra, message)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, capsys):
    _one_line(capsys, BASE + ["--device", "cuda", "--out", str(tmp_path / "r")],
              "interp: error: --device cuda: this machine has no CUDA device")


def test_other_commands_refuse_bad_numbers(tmp_path, capsys):
    _one_line(capsys, ["sae", "train", "--model", "random-llama", "--d-sae", "0", "--out", str(tmp_path / "s")],
              "interp: error: --d-sae must be at least 1, got 0")
    _one_line(capsys, ["edges", "--model", "random-llama", "--batch-size", "-1", "--out", str(tmp_path / "e")],
              "interp: error: --batch-size must be at least 1, got -1")
    _one_line(capsys, ["probe", "--model", "random-llama", "--task", "ioi", "--n-prompts", "6", "--folds", "100",
                       "--out", str(tmp_path / "p")], "interp: error: --folds 100 needs at least 100 groups")


def test_probe_folds_default_to_what_the_data_allows_and_record_it(tmp_path, capsys):
    assert cli.main(["probe", "--model", "random-llama", "--task", "ioi", "--n-prompts", "4", "--out", str(tmp_path / "p")]) == 0
    settings = Result.load(tmp_path / "p").settings
    assert settings["folds"] == 4 and settings["config"]["n_splits"] is None


# ----------------------------------------------------------------------------- model files
def _folder_with(tmp_path, name, write) -> str:
    from interp.toy_models import random_model_dir

    source = random_model_dir("llama")
    folder = tmp_path / name
    folder.mkdir()
    for file in source.iterdir():
        if file.suffix in (".json", ".txt", ".model") or file.name.startswith("tokenizer"):
            (folder / file.name).write_bytes(file.read_bytes())
    write(folder, source)
    return str(folder)


@pytest.mark.parametrize("name, write, message", [
    ("bad-config", lambda f, s: (f / "config.json").write_text("{bad"),
     "cannot load {path} ({path}): OSError: It looks like the config file"),
    ("truncated", lambda f, s: (f / "model.safetensors").write_bytes((s / "model.safetensors").read_bytes()[:5000]),
     "cannot load {path} ({path}): SafetensorError"),
    ("no-weights", lambda f, s: torch.save({}, f / "pytorch_model.bin"),
     "{path} ({path}): the checkpoint lacks 30 of the model's weights"),
])
def test_unreadable_model_files_are_one_line(tmp_path, capsys, name, write, message):
    path = _folder_with(tmp_path, name, write)
    _one_line(capsys, ["patch", "--model", path, "--out", str(tmp_path / "r")], "interp: error: " + message.format(path=path))
    assert not (tmp_path / "r").exists()


def test_a_hub_failure_says_why(monkeypatch):
    import huggingface_hub

    from interp.loading import ModelLoadError, resolve_model_dir

    def fails(name, **kwargs):
        if kwargs.get("local_files_only"):
            raise OSError("not in the cache")
        raise ConnectionError("Max retries exceeded with url: /api/models/someone/model (Caused by NameResolutionError)")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fails)
    with pytest.raises(ModelLoadError, match=r"^cannot load model 'someone/model' from the Hugging Face hub: ConnectionError: "
                                             r"Max retries exceeded"):
        resolve_model_dir("someone/model")


# ----------------------------------------------------------------------------- where results go
def test_out_is_checked_before_the_work(tmp_path, capsys, monkeypatch):
    import interp.loading

    monkeypatch.setattr(interp.loading, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    existing = tmp_path / "file"
    existing.write_text("x")
    _one_line(capsys, BASE + ["--out", str(existing)], f"interp: error: --out {existing} is a file")
    _one_line(capsys, BASE + ["--out", str(existing / "run")], f"interp: error: --out {existing / 'run'}: {existing} is a file")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anyway: make the place unwritable another way
            _one_line(capsys, BASE + ["--out", "/proc/interp-run"], "interp: error: --out /proc/interp-run: cannot write in /proc")
        else:
            _one_line(capsys, BASE + ["--out", str(locked / "run")], f"interp: error: --out {locked / 'run'}: cannot write in")
    finally:
        os.chmod(locked, 0o700)


def test_a_prompt_longer_than_the_model_reads_is_one_line(tmp_path, capsys):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"clean": " word" * 300, "corrupt": " term" * 300, "answer": " a", "wrong_answer": " b"}))
    _one_line(capsys, ["patch", "--model", "random-llama", "--task", str(path), "--out", str(tmp_path / "r")],
              f"interp: error: {path}:1: the prompt has 300 tokens; random-llama reads at most 256")


def test_app_port_out_of_range_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["app", "--port", "99999"])
    assert stopped.value.code == 2 and "a port is a number from 1 to 65535, got 99999" in capsys.readouterr().err


def test_app_warns_when_it_would_listen_beyond_this_machine(monkeypatch, capsys):
    commands = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: commands.append(argv))
    assert cli.main(["app", "--host", "0.0.0.0", "--port", "8599"]) == 0
    assert "interp: warning: --host 0.0.0.0 is not this machine's loopback address" in capsys.readouterr().err
    assert cli.main(["app", "--port", "8599"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err
    argv = commands[-1]
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false" and argv[argv.index("--server.headless") + 1] == "true"


# ----------------------------------------------------------------------------- transcoder graphs, dictionaries
@pytest.fixture
def transcoder(tmp_path):
    from circuits.dictionary import DictionaryConfig, SparseDictionary
    from circuits.dictionary_io import save_dictionary

    folder = tmp_path / "tc"
    save_dictionary(SparseDictionary(DictionaryConfig(d_in=64, d_sae=96, k=8, kind="transcoder", site="L1.MLP")), folder)
    return folder


@pytest.mark.parametrize("prompt, target, message", [
    ("When Mary and John went", "L1.TC.99999@2", "--target L1.TC.99999@2: the transcoder at layer 1 has 96 latents"),
    ("When Mary and John went", "L1.TC.3@99", "--target L1.TC.3@99: the prompt has 5 tokens"),
    ("When Mary and John went", "L0.TC.3@2", "--target L0.TC.3@2: no transcoder is given at layer 0"),
    ("", " Mary| John", "--prompt is empty"),
    (" word" * 300, " Mary| John", "--prompt has 300 tokens; random-llama reads at most 256"),
])
def test_transcoder_circuit_targets_are_checked(tmp_path, capsys, transcoder, prompt, target, message):
    _one_line(capsys, ["transcoder", "circuit", "--transcoders", str(transcoder), "--model", "random-llama", "--prompt",
                       prompt, "--target", target, "--out", str(tmp_path / "g")], "interp: error: " + message)


def test_dictionary_evaluation_with_no_readable_token_is_one_line(tmp_path, capsys, monkeypatch):
    """A held-out text of special tokens only leaves nothing to evaluate on."""
    import circuits.dictionary_evaluation as evaluation
    from circuits.dictionary import DictionaryConfig, DictionaryError, SparseDictionary

    import interp

    model = interp.load_model("random-llama")
    dictionary = SparseDictionary(DictionaryConfig(d_in=64, d_sae=32, k=4, kind="sae", site="L1.RESID_POST"))
    eos = model.tokenizer.eos_token_id
    with pytest.raises(DictionaryError, match="^the held-out text has no token a dictionary reads: every one of its 8 tokens"):
        evaluation.evaluate_dictionary(model, dictionary, torch.full((2, 4), eos))


def test_a_failed_command_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(BASE + ["--components", "L9.H0", "--out", str(out)]) == 2
    assert not out.exists()


def test_a_bug_keeps_its_traceback_and_says_it_is_one(tmp_path, capsys, monkeypatch):
    import interp.patching_analysis
    from interp.shortcuts import ShortcutError

    def broken(*args, **kwargs):
        raise ShortcutError("a shortcut disagrees")
    monkeypatch.setattr(interp.patching_analysis, "run_patching", broken)
    out = tmp_path / "r"
    with pytest.raises(ShortcutError, match="a shortcut disagrees"):
        cli.main(BASE + ["--out", str(out)])
    err = capsys.readouterr().err
    assert "interp: internal error (ShortcutError): a bug in interp, not in your input" in err and "transformers " in err
    assert not out.exists()


# ----------------------------------------------------------------------------- shortcuts check themselves
@pytest.fixture(scope="module")
def llama():
    import interp

    return interp.load_model("random-llama")


@pytest.fixture(scope="module")
def mixed(llama):
    from interp.tasks import Task

    pairs = [{"clean": "The Eiffel Tower is in the city of", "corrupt": "The Colosseum is in the city of", "answer": " Paris",
              "wrong_answer": " Rome"},
             {"clean": "Big Ben is in", "corrupt": "Big Ben was in", "answer": " London", "wrong_answer": " Paris"}]
    return Task.from_pairs(llama, "mixed", pairs, padding_side="right")


def test_unembedding_only_the_read_positions_is_checked(llama, mixed, monkeypatch):
    """Reading the last column of a right-padded batch instead of each row's own last token."""
    from interp import corruption
    from interp.patching import activation_patching
    from interp.shortcuts import ShortcutError

    monkeypatch.setattr(corruption, "logit_reads", lambda reads, width, start=0: {"logits_to_keep": 1})
    with pytest.raises(ShortcutError, match="^unembedding only the positions the metric reads gives the metric"):
        activation_patching(llama, mixed, "heads", progress=False)


def test_the_first_difference_skip_is_checked(llama, mixed, monkeypatch):
    """Claiming every row's inputs differ two positions later than they do."""
    from interp import patching
    from interp.shortcuts import ShortcutError

    real = patching.first_differences
    monkeypatch.setattr(patching, "first_differences", lambda target, source: real(target, source) + 2)
    with pytest.raises(ShortcutError, match=r"^skipping L\d\.H\d@-\d, which comes before every row's first differing"):
        patching.activation_patching(llama, mixed, "heads_pos", progress=False)


def test_the_shared_prefix_of_atp_is_checked(llama, mixed, monkeypatch):
    """A KV prefix built from the wrong rows."""
    from interp.attribution import attribution_patching
    from interp.corruption import RunInput
    from interp.shortcuts import ShortcutError

    real = RunInput.prefix_cache
    monkeypatch.setattr(RunInput, "prefix_cache", lambda self, model, stop: real(
        self.select(torch.arange(len(self.tokens) - 1, -1, -1)), model, stop))
    with pytest.raises(ShortcutError, match=r"^starting both runs at position \d+ on a shared KV prefix and unembedding"):
        attribution_patching(llama, mixed, "heads", method="atp", progress=False)


def test_the_batched_graddrop_backward_is_checked(llama, mixed, monkeypatch):
    from interp.attribution import attribution_patching, backward
    from interp.shortcuts import ShortcutError

    real = backward._grad
    monkeypatch.setattr(backward, "_grad", lambda outputs, inputs, cotangents: [
        g * (1.01 if len(cotangents) > 1 else 1.0) for g in real(outputs, inputs, cotangents)])
    with pytest.raises(ShortcutError, match=r"^GradDrop's batched backward through layer \d gives the cotangent"):
        attribution_patching(llama, mixed, "heads", method="atp*", progress=False)


def test_the_diagnostics_shared_prefix_is_checked(llama, mixed, monkeypatch):
    from interp.attribution import attribution_patching, diagnose, verification
    from interp.shortcuts import ShortcutError

    result = attribution_patching(llama, mixed, "heads", method="atp", progress=False)
    from interp import hf_compat

    real = verification.kv_prefix

    def rows_swapped(cache, position, rows=None, devices=None, repeats=1):  # each row gets another row's prefix
        n_rows = hf_compat.layer_states(cache)[0][0].shape[0]
        return real(cache, position, torch.arange(n_rows).flip(0), devices, repeats)
    monkeypatch.setattr(verification, "kv_prefix", rows_swapped)
    with pytest.raises(ShortcutError, match=r"^the target run started at position \d+ on a shared KV prefix gives"):
        diagnose(llama, mixed, result, samples=8, p=0.3, progress=False)


def test_a_splice_without_its_error_term_is_caught(llama, monkeypatch):
    from circuits.dictionary import DictionaryConfig, SparseDictionary
    from circuits.dictionary_evaluation import spliced
    from interp.shortcuts import ShortcutError
    from interp.splicing import Splice

    dictionary = SparseDictionary(DictionaryConfig(d_in=64, d_sae=32, k=4, kind="sae", site="L1.RESID_POST"))
    with spliced(llama, dictionary, error_term=True):  # the real splice passes its check
        pass

    def without_error(self, spec, reads):  # the host rebuilt from the reconstruction alone
        return lambda original, inputs: self.decode(self.encode(inputs.float()), inputs.float()).to(original.dtype)
    monkeypatch.setattr(Splice, "finish", without_error)
    with pytest.raises(ShortcutError, match=r"^splicing a dictionary at L1.RESID_POST with its error term"):
        with spliced(llama, dictionary, error_term=True):
            pass


def test_verification_uses_the_analysis_seed_not_the_tasks(llama):
    """A result records the analysis' seed (its Gaussian noise), not the task's: verifying with the
    recorded settings patches exactly what the estimate was made of."""
    from interp import tasks
    from interp.attribution import attribution_patching, verify_top
    from interp.patching import activation_patching

    task = tasks.ioi(llama, n_prompts=3, seed=1)
    result = attribution_patching(llama, task, "heads", method="atp", corruption="gaussian", seed=0, progress=False)
    assert result.settings["seed"] == 0 and result.settings["task_seed"] == 1
    verify_top(llama, task, result, 3, progress=False)
    names = result.extra["verification"]["components"]
    direct = activation_patching(llama, task, "heads", components=names, corruption="gaussian", seed=0, progress=False)
    assert result.extra["verification"]["exact"] == pytest.approx(direct.scores.tolist(), abs=1e-6)
