"""The commands the README and the docs show run. Every ``interp ...`` line of a code block (with
its ``\\`` continuations) runs in document order in one scratch folder, at the reduced size
``INTERP_QUICK=1`` sets (the full-size values are validated first), each model loaded once; the
README's quickstart code runs too. A command that fails leaves no run folder."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

import interp
import interp.loading
from interp.ui import cli

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = ("interp app",)  # a server: tests/test_app_browser.py starts it


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every ``interp`` command inside a fenced code block."""
    found = []
    for document in DOCUMENTS:
        inside, pending = False, ""
        for line in document.read_text().splitlines():
            if line.strip().startswith("```"):
                inside, pending = not inside, ""
                continue
            if not inside:
                continue
            text = line.split("  #")[0].rstrip()
            if pending:
                pending += " " + text.strip().rstrip("\\").strip()
                if not text.endswith("\\"):
                    found.append((document.name, pending))
                    pending = ""
            elif text.startswith("interp ") and not text.startswith(SKIP):
                if text.endswith("\\"):
                    pending = text.rstrip("\\").strip()
                else:
                    found.append((document.name, text))
    return found


def readme_quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart (Python)"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


@pytest.fixture
def quick(tmp_path, monkeypatch, smollm2_nnsight):
    """A scratch folder with the files the docs' commands read, quick sizes, and one model per
    (name, backend): SmolLM2 on nnsight is the session's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INTERP_QUICK", "1")
    rows = [json.loads(line) for line in interp.tasks.LANDMARKS.read_text().splitlines()[:4]]
    for name in ("pairs.jsonl", "my_pairs.jsonl"):
        Path(name).write_text("\n".join(json.dumps(row) for row in rows))
    loaded = {("smollm2-135m", "nnsight", "cpu", "float32", "auto", None): smollm2_nnsight}
    real = interp.loading.load_model

    def load_once(spec="smollm2-135m", backend="nnsight", device="cpu", dtype=None, remote=False, attention="auto",
                  device_map=None):
        key = (spec, backend, device, str(dtype).removeprefix("torch."), attention, device_map)
        if key not in loaded:
            loaded[key] = real(spec, backend=backend, device=device, attention=attention, device_map=device_map,
                               **({"dtype": dtype} if dtype is not None else {}))
        return loaded[key]
    monkeypatch.setattr(interp.loading, "load_model", load_once)
    monkeypatch.setattr(interp, "load_model", load_once)
    return tmp_path


def test_the_docs_show_commands_to_run():
    commands = documented_commands()
    assert len(commands) >= 15
    assert any(c.startswith("interp bigram --model toy-bigram") for _, c in commands)


def test_every_documented_command_runs(quick, capsys):
    failures = []
    for document, command in documented_commands():
        argv = shlex.split(command)[1:]
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        code = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if code != 0:
            failures.append(f"{document}: {command}\n    -> exit {code}: {err[-1] if err else ''}")
            assert out is None or not Path(out).exists(), f"{command} failed and left {out}"
    assert not failures, "\n".join(failures)


def test_the_readme_quickstart_runs(quick):
    namespace: dict = {}
    exec(compile(readme_quickstart(), "README.md quickstart", "exec"), namespace)
    assert namespace["result"].top(5) and Path("runs/ioi-heads-pos/result.json").is_file()


def test_the_documented_toy_bigram_command_fits_its_corpus_at_full_size(tmp_path, monkeypatch):
    """Quick mode caps the steps, so the data the full command needs is checked here: the toy
    corpus must give the documented steps x batch chunks within the allowed epochs."""
    from circuits.bigram_analysis import BigramConfig
    from interp.corpus import load_corpus
    from interp.ui import flags

    from circuits.bigram_subnetwork import _step_order

    command = next(c for _, c in documented_commands() if c.startswith("interp bigram --model toy-bigram"))
    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    config = flags.config_from_args(BigramConfig, args)  # full size: INTERP_QUICK is not set here
    model = interp.loading.load_model("toy-bigram")
    train, _ = load_corpus(args.corpus).split(held_out=config.held_out, seed=config.seed)
    chunks = train.token_chunks(model.tokenizer, config.seq_len, seed=config.seed)
    for lam in config.lambdas:  # the check training runs first: it raises if the corpus is too small
        order = _step_order(len(chunks), config.subnetwork(lam, config.target), config.seed)
        assert order.shape == (config.steps, config.batch_size), re.sub(r"\s+", " ", command)
