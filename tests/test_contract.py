"""The analysis contract: configs validated on construction, CLI flags generated from them, the
registry, the package layering, and no state changed behind the caller's back."""

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import interp
from interp.analysis import ANALYSES, ConfigError, ModelOptions, RunSettings, analysis_of, payload_of
from interp.backends.base import RunSpec
from interp.components import Site
from interp.patching_analysis import PatchingConfig, run_patching
from interp.results import Result
from interp.ui import cli
from interp.ui.analyses import ANALYSES as REGISTERED
from interp.ui.flags import config_from_args

ROOT = Path(__file__).resolve().parent.parent
UPWARD = ("circuits", "probes", "interp.ui", "app")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _upward(path: Path) -> list[str]:
    return sorted(m for m in _imports(path) if any(m == u or m.startswith(u + ".") for u in UPWARD))


def test_the_core_imports_neither_the_interface_nor_the_analysis_packages():
    core = [p for p in (ROOT / "interp").rglob("*.py") if "ui" not in p.relative_to(ROOT / "interp").parts]
    assert len(core) > 30
    offenders = {str(p.relative_to(ROOT)): _upward(p) for p in core if _upward(p)}
    assert offenders == {}
    # the scan sees such imports where they are allowed (so it can fail)
    assert "circuits.edges_analysis" in _upward(ROOT / "interp" / "ui" / "cli_edges.py")


def test_configs_validate_on_construction_with_one_line_naming_the_flag():
    with pytest.raises(ConfigError, match=r"^--metric must be one of logit_diff, prob, kl; got 'x'$"):
        RunSettings(metric="x")
    with pytest.raises(ConfigError, match=r"^--batch-size must be at least 1, got 0$"):
        RunSettings(batch_size=0)
    with pytest.raises(ConfigError, match="--verify-top and --diagnose check an AtP/AtP. ranking"):
        PatchingConfig(verify_top=3)
    with pytest.raises(ConfigError, match="--diagnose-p must be at most 1"):
        PatchingConfig(method="atp", diagnose_p=2.0)
    assert RunSettings(layers=[1, 2]).layers == (1, 2) and RunSettings(memory_mb=5).memory_mb == 5.0
    assert PatchingConfig(method="atp-star").method == "atp*"
    with pytest.raises(ConfigError, match="--seed must be an integer"):
        RunSettings(seed="3")


def test_cli_flags_come_from_the_configs():
    parser = cli.build_parser()
    args = parser.parse_args(["patch", "--method", "atp-star", "--layers", "1,2", "--batch-size", "8", "--no-progress"])
    config = config_from_args(PatchingConfig, args)
    assert config == PatchingConfig(method="atp*", layers=(1, 2), batch_size=8, progress=False)
    assert config_from_args(ModelOptions, args) == ModelOptions()
    commands = {"patch": [], "redundancy": [], "drop": [], "bigram": [], "edges": [], "probe": [],
                "sae": ["train", "--site", "L0.MLP"], "transcoder": ["train", "--layer", "0"]}
    for command, extra in commands.items():
        parsed = parser.parse_args([command, *extra])
        assert (parsed.backend, parsed.device, parsed.dtype) == ("nnsight", "cpu", "float32"), command
    circuit = parser.parse_args(["transcoder", "circuit", "--transcoders", "x", "--prompt", "p", "--target", "a|b"])
    assert circuit.backend == "transformer_lens"  # attribution graphs need the bridge; its --help says so


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["patch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--granularity", "(default: heads)", "(default: nnsight)", "(default: 2048.0)", "--dtype", "atp-star"):
        assert shown in text


def test_every_registered_analysis_has_a_page_and_figures_that_exist():
    from app.shared import PAGE_FILES

    assert set(REGISTERED) >= {"patching", "redundancy", "drop", "bigram", "edges", "probe", "dictionary",
                               "dictionary-eval", "feature-graph", "lens", "dla"}
    assert REGISTERED is ANALYSES
    for analysis in ANALYSES.values():
        assert analysis.page in PAGE_FILES, analysis.name  # every analysis opens in a page
        if analysis.figures:
            module, _, function = analysis.figures.partition(":")
            assert callable(getattr(__import__(module, fromlist=[function]), function)), analysis.name


def test_results_find_their_analysis_and_typed_payload():
    old = Result(method="redundancy", model="m", task="t", metric="1 - cos", granularity="units", components=["L0.ATTN"],
                 scores=np.zeros(1), shape=[1], axes=["unit"], extra={"curves": None, "findings": {}, "n_similarity_tokens": 7})
    assert analysis_of(old).name == "redundancy"  # a run folder from before Result.analysis: by its method
    payload = payload_of(old)
    assert type(payload).__name__ == "RedundancyPayload" and payload.n_similarity_tokens == 7


def test_atp_star_spelling_gives_the_same_numbers(random_llama, llama_ioi, tmp_path):
    star = run_patching(random_llama, llama_ioi, PatchingConfig(method="atp*", seed=1, progress=False))
    assert cli.main(["patch", "--model", "random-llama", "--backend", "transformer_lens", "--task", "ioi", "--n-prompts", "4",
                     "--seed", "1", "--method", "atp-star", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    loaded = Result.load(tmp_path / "r")
    assert loaded.method == "atp*" and loaded.analysis == "patching"
    np.testing.assert_allclose(loaded.scores, star.scores, rtol=1e-5, atol=1e-6)


def test_forward_leaves_the_callers_runspec_alone(random_llama, llama_ioi):
    spec = RunSpec(llama_ioi.clean_tokens, reads={Site("resid_pre", 1)})
    plain = random_llama.forward(spec).logits
    with random_llama.patch({"L0.ATTN": lambda x: 0 * x}):
        patched = random_llama.forward(spec).logits
    assert spec.edits == {}
    assert not torch.allclose(plain, patched)
    torch.testing.assert_close(random_llama.forward(spec).logits, plain)


def test_loading_restores_the_transformers_logger():
    logger = logging.getLogger("transformers")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        interp.load_model("random-llama", backend="transformer_lens")
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)


def _readme_analysis_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding an analysis"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_the_readme_walkthrough_adds_an_analysis_with_one_module(random_llama, llama_ioi, tmp_path, capsys):
    import importlib.util

    from app.shared import PAGE_FILES

    path = tmp_path / "ablation_analysis.py"
    path.write_text(_readme_analysis_code())
    spec = importlib.util.spec_from_file_location("ablation_analysis", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # registers it
        out = tmp_path / "run"
        assert cli.main(["ablation", "--model", "random-llama", "--backend", "transformer_lens", "--task", "ioi",
                         "--n-prompts", "4", "--seed", "1", "--layers", "0,2", "--out", str(out)]) == 0
        assert "top components" in capsys.readouterr().out and (out / "ablation.html").is_file()
        result = Result.load(out)
        assert result.analysis == "ablation" and analysis_of(result).page in PAGE_FILES
        assert result.components[:2] == ["L0.H0", "L0.H1"] and result.shape == [2, random_llama.config.n_heads]
    finally:
        ANALYSES.pop("ablation", None)
    # the oracle: plain PyTorch hooks zeroing one head's slice of the output projection's input
    hf, d_head = random_llama.hf_model, random_llama.config.d_head
    rows = torch.arange(len(llama_ioi.answers))

    def logit_diff(hook=None, layer=None):
        handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(hook) if hook else None
        try:
            logits = hf(llama_ioi.clean_tokens).logits[:, -1]
        finally:
            if handle:
                handle.remove()
        return (logits[rows, llama_ioi.answers] - logits[rows, llama_ioi.wrong_answers]).mean().item()

    clean = logit_diff()
    expected = []
    for layer in (0, 2):
        for head in range(random_llama.config.n_heads):
            def zero(module, args, head=head):
                x = args[0].clone()
                x[..., head * d_head:(head + 1) * d_head] = 0
                return (x,)
            expected.append(logit_diff(zero, layer) - clean)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(expected).max() > 1e-3  # the ablations do move the metric


def test_units_edges_and_graph_nodes_are_components(random_llama):
    from circuits.edge_graph import EMBED, LOGITS, EdgeGraph, parse_edge
    from interp.components import Component, ComponentError
    from interp.layer_dropping import DropError, Unit

    assert [str(Unit.parse(t)) for t in ("l5.attn", "L5.MLP", "L5.BLOCK")] == ["L5.ATTN", "L5.MLP", "L5.BLOCK"]
    assert Unit.parse("L5.ATTN").component == Component("attn_out", 5) and str(Component.parse("l5.block")) == "L5.BLOCK"
    with pytest.raises(DropError, match="cannot parse unit 'L5.H3'"):
        Unit.parse("L5.H3")
    with pytest.raises(ComponentError, match="names a whole layer"):
        random_llama.validate("L1.BLOCK")
    graph = EdgeGraph(random_llama.config)
    for node in graph.upstream + graph.downstream:
        assert node.name in (EMBED, LOGITS) or str(node.component) == node.name
    names = graph.edge_names()
    assert all(parse_edge(n) == tuple(n.split("->")) for n in names)
    assert graph.edge_index(names[5].lower()) == graph.edge_index(names[5])
    assert str(Component.parse("L3.ERR@5")) == "L3.TC_ERR@5"  # transcoder graphs' old error-node spelling


def test_no_file_cites_a_document_the_repository_lacks():
    import re
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    cited = {}
    for name in tracked:
        if name.endswith((".py", ".md", ".ipynb", ".toml")):
            for doc in re.findall(r"[\w./-]*[A-Za-z_]\.md\b", (ROOT / name).read_text(errors="ignore")):
                here = (ROOT / name).parent / doc
                if not any(p.is_file() for p in (here, ROOT / doc, ROOT / "docs" / doc)):
                    cited.setdefault(doc, []).append(name)
    assert cited == {}
    assert (ROOT / "docs" / "methods.md").is_file() and "docs/methods.md" in (ROOT / "tests" / "test_attribution.py").read_text()


def test_every_payload_reads_its_analysis_results(random_llama, llama_ioi):
    from circuits.edges_analysis import EdgesConfig, run_edges

    exact = run_patching(random_llama, llama_ioi, PatchingConfig(progress=False))
    atp = run_patching(random_llama, llama_ioi, PatchingConfig(method="atp*", verify_top=2, progress=False))
    edges = run_edges(random_llama, llama_ioi, EdgesConfig(ig_steps=2, top_n=5, sizes=(1, 5), progress=False))
    for result in (exact, atp, edges):
        payload = payload_of(result)
        fields = set(vars(payload))
        assert set(result.extra) <= fields, (result.analysis, set(result.extra) - fields)  # nothing left untyped
    assert payload_of(atp).verification["k"] == 2 and payload_of(exact).identical_components is not None


@pytest.mark.parametrize("argv, message", [
    (["probe", "--folds", "1"], "interp: error: --n-splits must be at least 2, got 1"),
    (["edges", "--method", "eap", "acdc"], "interp: error: unknown edge attribution method 'acdc'; known: eap, eap-ig"),
    (["sae", "train", "--site", "L0.MLP", "--tokens", "64", "--batch-tokens", "128"],
     "interp: error: need total_tokens >= batch_tokens >= 1, got 64 and 128"),
    (["transcoder", "circuit", "--transcoders", "x", "--prompt", "p", "--target", "Mary"],
     "interp: error: --target 'Mary': give 'ANSWER|WRONG' (two single tokens) or a feature like L6.TC.123@5"),
    (["transcoder", "circuit", "--transcoders", "x", "--prompt", "p"], "interp: error: give --target"),
    (["bigram", "--lambda", "-1"], "interp: error: lambda must be a finite number >= 0, got -1.0"),
    (["patch", "--layers", "0", "--diagnose-p", "1.5", "--method", "atp"], "interp: error: --diagnose-p must be at most 1, got 1.5"),
])
def test_config_errors_are_one_line_before_any_model_loads(tmp_path, capsys, argv, message):
    assert cli.main(argv + ["--model", "no-such-model", "--out", str(tmp_path / "r")]) == 2  # the model is never loaded
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not (tmp_path / "r").exists()


def test_the_compat_list_names_tests_that_exist():
    """A renamed file or test must not drop out of the minimum-version run unnoticed."""
    from tests.conftest import COMPAT

    for module, names in COMPAT.items():
        path = ROOT / "tests" / f"{module}.py"
        assert path.is_file(), path
        for name in names or ():
            assert f"def {name}(" in path.read_text(), f"{module}.{name}"
