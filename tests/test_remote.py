"""``load_model(remote=True)``: what can be checked without NDIF. The model is built from a hub
id's config and tokenizer alone (a fake hub cache here), on the meta device; every refusal is one
line.

The requests themselves go through nnsight's local simulation of NDIF (``remote="local"``, where
this nnsight has one): each is serialized, deserialized with interp's packages unimportable (as on
NDIF, which does not install interp; nnsight's simulation alone would find interp here, installed)
and run on the local model. Nothing here reaches NDIF itself."""

from __future__ import annotations

import dataclasses
import importlib.abc
import shutil
import sys

import nnsight
import numpy as np
import pytest
import torch

import interp
from interp import tasks
from interp.loading import ModelLoadError, resolve_model_dir
from interp.attribution import attribution_patching
from interp.backends.base import RunSpec
from interp.components import Site
from interp.patching import activation_patching
from interp.toy_models import RANDOM_FAMILIES

REPO = "interp-test/tiny-llama"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A hub cache holding REPO's config and tokenizer, no weights."""
    folder, _ = resolve_model_dir("random-llama")
    snapshot = tmp_path / f"models--{REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, snapshot / path.name)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setattr(nnsight, "is_model_running", lambda repo, *args, **kwargs: repo == REPO, raising=False)
    return tmp_path


def test_a_hub_model_loads_on_the_meta_device(hub):
    model = interp.load_model(REPO, remote=True)
    local = interp.load_model("random-llama")
    assert {p.device.type for p in model.hf_model.parameters()} == {"meta"}
    assert model.backend.remote and model.config.n_layers == local.config.n_layers
    assert model.layout == local.layout
    assert model.to_tokens("The cat").tolist() == local.to_tokens("The cat").tolist()
    assert not model.padding_checked and model.padding_problem is None  # checked at the first padded batch


@pytest.mark.parametrize("spec, message", [
    ("random-llama", "is one of interp's own models"),
    ("smollm2-135m", "is one of interp's own models"),
    ("model.gguf", "is a local file or folder"),
    (".", "is a local file or folder"),
    ("interp-test/not-hosted", "NDIF is not running interp-test/not-hosted"),
])
def test_remote_refusals_are_one_line(hub, spec, message):
    with pytest.raises(ModelLoadError) as info:
        interp.load_model(spec, remote=True)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_remote_needs_a_key(hub, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY")
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(ModelLoadError, match="needs an NDIF API key: set NDIF_API_KEY"):
        interp.load_model(REPO, remote=True)


def test_remote_refuses_local_placement_options(hub):
    with pytest.raises(ModelLoadError, match="drop --device, --device-map, --dtype and --attention"):
        interp.load_model(REPO, remote=True, device_map="auto")


def test_a_hub_model_the_cache_lacks_is_one_line(hub, monkeypatch):
    monkeypatch.setattr(nnsight, "is_model_running", lambda *args, **kwargs: True, raising=False)
    with pytest.raises(ModelLoadError) as info:
        interp.load_model("interp-test/absent", remote=True)
    assert "cannot read interp-test/absent's config and tokenizer from the hub" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_the_layout_found_without_weights_is_the_real_one(family):
    """Discovery on the meta device runs its probe on a one-layer stand-in of the family."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from interp.architectures import Shapes, discover_layout, weightless
    from interp.config import config_from_hf

    real = interp.load_model(f"random-{family}")
    folder, _ = resolve_model_dir(f"random-{family}")
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), attn_implementation="eager")
    assert weightless(empty) and not weightless(real.hf_model)
    c = config_from_hf(empty.config, family)
    found = discover_layout(empty, Shapes(c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_model), family)
    assert found == dataclasses.replace(real.layout, writes_add=found.writes_add)


def test_analyses_that_read_weights_refuse_a_remote_model_in_one_line(hub):
    from interp.architectures import UnsupportedArchitectureError
    from interp.dla import direct_logit_attribution

    model = interp.load_model(REPO, remote=True)
    assert model.full_forwards  # exact patching and generation then replay nothing recorded
    with pytest.raises(UnsupportedArchitectureError) as info:
        direct_logit_attribution(model, [1, 2, 3], 5, 7)
    assert "a remote model's weights stay on NDIF" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(NotImplementedError, match="keeps its gradients only through RunSpec.after"):
        model.forward(RunSpec(torch.tensor([[1, 2, 3]]), reads={Site("resid_pre", 0)}, keep_grad=True))


def test_the_cli_loads_a_remote_model_and_refuses_local_options(hub, tmp_path, capsys):
    from interp.ui import cli

    base = ["patch", "--model", REPO, "--remote", "--task", "ioi", "--n-prompts", "2", "--out", str(tmp_path / "r")]
    assert cli.main(base + ["--dtype", "bfloat16"]) == 2
    assert "drop --device, --device-map, --dtype and --attention" in capsys.readouterr().err
    assert cli.main(base) == 2  # the load works; the first request cannot reach NDIF from here
    assert "interp: error: the request to NDIF failed: " in capsys.readouterr().err


# ----------------------------------------------------------------------------- requests (local simulation)
class _NotOnNDIF(importlib.abc.MetaPathFinder):
    """Makes interp's packages unimportable, as they are on NDIF's machines."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("interp", "circuits", "probes", "tests"):
            raise ModuleNotFoundError(f"No module named {name!r} (on NDIF)")
        return None


@pytest.fixture
def ndif_here(monkeypatch):
    """nnsight's local simulation of NDIF with interp unimportable while a request is
    deserialized; returns the list that counts the requests sent."""
    local = pytest.importorskip("nnsight.intervention.backends.local", reason="this nnsight cannot simulate NDIF")
    from nnsight.schema.request import RequestModel

    deserialize = RequestModel.deserialize

    def without_interp(*args, **kwargs):
        finder = _NotOnNDIF()
        sys.meta_path.insert(0, finder)
        try:
            return deserialize(*args, **kwargs)
        finally:
            sys.meta_path.remove(finder)

    monkeypatch.setattr(RequestModel, "deserialize", staticmethod(without_interp))
    requests = []
    send = local.LocalSimulationBackend.__call__
    monkeypatch.setattr(local.LocalSimulationBackend, "__call__", lambda self, tracer: (requests.append(1), send(self, tracer))[1])
    return requests


def test_a_sweep_sent_to_simulated_ndif_gives_the_local_numbers_in_a_few_requests(ndif_here):
    local = interp.load_model("random-llama")
    remote = interp.load_model("random-llama", remote="local")
    assert remote.remote and remote.full_forwards and not ndif_here  # loading sends nothing
    task = tasks.ioi(local, n_prompts=4, seed=1)
    expected = activation_patching(local, task, "heads_pos", progress=False)
    sent = activation_patching(remote, task, "heads_pos", batch_size=8, progress=False)  # two variants a forward
    np.testing.assert_allclose(sent.scores, expected.scores, atol=1e-5)
    assert abs(sent.scores).max() > 0.05
    assert sent.n_forward_passes >= 30 and len(ndif_here) <= 5  # the sweep's forwards: one session


def test_gradients_are_taken_inside_the_request(ndif_here):
    """The backward runs where the forward ran (``RunSpec.after``): Model.gradients and AtP* on a
    model sent to simulated NDIF give the local numbers, one request per forward + backward."""
    local = interp.load_model("random-llama")
    remote = interp.load_model("random-llama", remote="local")
    tokens = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    sites = ["L0.RESID_PRE", "L1.ATTN", "L2.H1"]
    expected = local.gradients(tokens, lambda logits: logits[:, -1, 7].sum(), sites)
    found = remote.gradients(tokens, lambda logits: logits[:, -1, 7].sum(), sites)
    assert len(ndif_here) == 1 and abs(found[0] - expected[0]) < 1e-5
    for site, gradient in expected[2].items():
        assert gradient.abs().max() > 1e-3
        torch.testing.assert_close(found[2][site], gradient, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(found[1][site], expected[1][site], atol=1e-5, rtol=1e-4)
    task = tasks.ioi(local, n_prompts=4, seed=1)
    star = attribution_patching(local, task, "heads", method="atp*", progress=False)
    ndif_here.clear()
    sent = attribution_patching(remote, task, "heads", method="atp*", progress=False)
    np.testing.assert_allclose(sent.scores, star.scores, atol=1e-5)
    np.testing.assert_allclose(sent.arrays["importance"], star.arrays["importance"], atol=1e-5)
    assert abs(star.scores).max() > 0.01 and 0 < len(ndif_here) <= sent.n_forward_passes
    from interp.architectures import UnsupportedArchitectureError

    with pytest.raises(UnsupportedArchitectureError, match="AtP without the QK fix") as info:  # q nodes: the QK fix
        attribution_patching(remote, task, "q", method="atp*", progress=False)  # recomputes attention from weights
    assert "\n" not in str(info.value)


def test_requests_are_as_large_as_their_logits_allow(ndif_here, monkeypatch):
    from interp import model as model_module

    remote = interp.load_model("random-llama", remote="local")
    task = tasks.ioi(remote, n_prompts=4, seed=1)
    whole = activation_patching(remote, task, "heads", batch_size=8, progress=False)
    few = len(ndif_here)
    ndif_here.clear()
    one_forward = 8 * remote.config.d_vocab * 4  # 8 rows, one read position, float32
    monkeypatch.setattr(model_module, "REMOTE_REQUEST_LOGITS_BYTES", 3 * one_forward)
    split = activation_patching(remote, task, "heads", batch_size=8, progress=False)
    np.testing.assert_array_equal(split.scores, whole.scores)
    sweep = split.n_forward_passes - 3  # less the two reference runs and the skip check
    assert len(ndif_here) - few >= sweep // 3 - 1 > 0


def test_generation_caches_and_patches_through_simulated_ndif(ndif_here):
    local = interp.load_model("random-llama")
    remote = interp.load_model("random-llama", remote="local")
    ids = local.to_tokens("The cat sat on the mat and")
    assert torch.equal(remote.generate(ids, 4), local.generate(ids, 4))
    assert len(ndif_here) == 1  # the whole loop, each token chosen where the model ran
    steer = {"L1.RESID_PRE": lambda x: x + 0.5 * x.norm(dim=-1, keepdim=True).flip(1), "L0.H1@-2": lambda z: -z}
    options = {"do_sample": True, "temperature": 2.0, "top_k": 40, "seed": 3}
    sampled = remote.generate(ids, 5, steer, **options)
    assert torch.equal(sampled, local.generate(ids, 5, steer, use_cache=False, **options))
    assert not torch.equal(sampled, remote.generate(ids, 5, **options))  # the edits reached the request
    ndif_here.clear()
    names = ["L1.H2", "L0.MLP", "L1.RESID_PRE"]
    _, theirs = remote.run_with_cache(ids, names)
    _, mine = local.run_with_cache(ids, names)
    for name in names:
        torch.testing.assert_close(theirs[name], mine[name], rtol=0, atol=1e-6)
    with remote.patch({"L0.H1": lambda z: 3 * z}), local.patch({"L0.H1": lambda z: 3 * z}):
        torch.testing.assert_close(remote.run(ids), local.run(ids), rtol=0, atol=1e-6)
    assert len(ndif_here) == 1 + 1  # the cached run, the run


def test_padded_prompts_are_checked_on_ndif_at_their_first_batch(ndif_here, monkeypatch):
    """Padding depends on the transformers release that runs the model, NDIF's here: its check
    (left and right padding against the rows alone) is one request, sent at the first padded batch;
    then a sweep over prompts of different lengths gives the local numbers."""
    from interp import hf_compat
    from interp.batch import PaddingError, Tokens
    from interp.tasks import Task
    from tests.test_padding import PAIRS

    local = interp.load_model("random-llama")
    remote = interp.load_model("random-llama", remote="local")
    mixed = Task.from_pairs(local, "mixed", PAIRS)
    padded = Tokens(mixed.clean_tokens, mixed.attention_mask)
    assert not bool(padded.mask.all()) and not ndif_here
    edit = {"L0.RESID_POST@3": lambda x: 5 * x}  # the check runs without it (it would edit other tokens there)
    with remote.patch(edit), local.patch(edit):
        torch.testing.assert_close(remote.run(padded)[padded.mask], local.run(padded)[padded.mask], rtol=0, atol=1e-5)
    assert len(ndif_here) == 2  # the check's four forwards in one request, then the run
    expected = activation_patching(local, mixed, "heads", progress=False)
    found = activation_patching(remote, mixed, "heads", progress=False)
    np.testing.assert_allclose(found.scores, expected.scores, atol=1e-5)
    assert abs(expected.scores).max() > 0.05 and remote.padding_checked and remote.padding_problem is None
    checks = []
    monkeypatch.setattr(hf_compat, "check_padding", lambda model: checks.append(1))
    activation_patching(remote, mixed, "heads", progress=False)
    assert not checks  # once per model
    other = interp.load_model("random-llama", remote="local")
    monkeypatch.setattr(hf_compat, "check_padding", lambda model: "NDIF pads differently")
    with pytest.raises(PaddingError, match="^NDIF pads differently$"):
        other.run(padded)
    other.run(padded.ids[:1, -3:])  # unpadded runs still go


def test_without_shipping_interp_the_request_fails_on_ndif(ndif_here, monkeypatch):
    """What the simulation guards against: NDIF cannot import interp, so a request that names it
    instead of carrying its code fails there (it would pass in a simulation that can import it)."""
    import cloudpickle

    from interp.backends import nnsight_backend
    from interp.backends.nnsight_backend import RemoteRunError

    remote = interp.load_model("random-llama", remote="local")
    monkeypatch.setattr(nnsight_backend, "SHIPPED_BY_VALUE", ())
    shipped = [name for name in ("interp", "circuits", "probes") if name in cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES]
    for name in shipped:
        cloudpickle.unregister_pickle_by_value(sys.modules[name])
    try:
        with pytest.raises(RemoteRunError, match="No module named 'interp"):
            remote.run(remote.to_tokens("The cat"))
    finally:
        for name in shipped:
            cloudpickle.register_pickle_by_value(sys.modules[name])


def test_what_runs_only_on_local_modules_is_refused_remotely(ndif_here):
    from interp.model import RemoteUnsupportedError

    remote = interp.load_model("random-mixtral", remote="local")
    ids = remote.to_tokens("The cat sat")
    with pytest.raises(RemoteUnsupportedError, match="^expert sites and spliced dictionaries run as hooks"):
        remote.run_with_cache(ids, ["L0.E1"])
    handle = remote.hf_model.get_output_embeddings().register_forward_hook(lambda *args: None)
    try:  # a hook interp forgot: a bug, so a traceback, never a silently different number
        with pytest.raises(RuntimeError, match="would not run on NDIF"):
            remote.run(ids)
    finally:
        handle.remove()
    from interp.layer_dropping import dropped

    with pytest.raises(RemoteUnsupportedError, match="^dropping layers swaps modules of the local copy"):
        with dropped(remote, ["L0.ATTN"]):
            pass
    attention = remote.decoder_layers()[0].self_attn
    remote.decoder_layers()[0].self_attn = torch.nn.Identity()
    try:  # any module swapped here (a bug) is refused the same way
        with pytest.raises(RuntimeError, match=r"a local module was replaced \(model.layers.0.self_attn\)"):
            remote.run(ids)
    finally:
        remote.decoder_layers()[0].self_attn = attention
    remote.run(ids)
    with pytest.raises(ModelLoadError, match="remote must be False, True or 'local'"):
        interp.load_model("random-llama", remote="yes")


def test_the_cli_dry_run_sends_the_requests_through_the_simulation(ndif_here, tmp_path, capsys):
    from interp.results import Result
    from interp.ui import cli

    base = ["patch", "--model", "random-llama", "--task", "ioi", "--n-prompts", "2", "--granularity", "heads", "--no-progress"]
    assert cli.main(base + ["--out", str(tmp_path / "local")]) == 0 and not ndif_here
    assert cli.main(base + ["--remote-dry-run", "--out", str(tmp_path / "sent")]) == 0
    assert ndif_here  # the forwards went as requests
    np.testing.assert_allclose(Result.load(tmp_path / "sent").scores, Result.load(tmp_path / "local").scores, atol=1e-5)
    star = base + ["--method", "atp-star"]  # its backwards inside the requests
    assert cli.main(star + ["--out", str(tmp_path / "star-local")]) == 0
    ndif_here.clear()
    assert cli.main(star + ["--remote-dry-run", "--out", str(tmp_path / "star-sent")]) == 0 and ndif_here
    expected = Result.load(tmp_path / "star-local").scores
    np.testing.assert_allclose(Result.load(tmp_path / "star-sent").scores, expected, atol=1e-5 * abs(expected).max())
    capsys.readouterr()
    assert cli.main(base + ["--remote", "--remote-dry-run", "--out", str(tmp_path / "both")]) == 2
    assert "give --remote or --remote-dry-run, not both" in capsys.readouterr().err


def test_steering_runs_on_simulated_ndif_with_prompts_of_different_lengths(ndif_here, tmp_path):
    """``interp steer --remote-dry-run`` on the bundled sentiment sets (prompts of different
    lengths): the vector, the logit differences, the KL and the generated texts are the local
    ones, each generation one request."""
    from interp.results import Result
    from interp.ui import cli

    base = ["steer", "--model", "random-llama", "--site", "L1.RESID_PRE", "--coefficients", "0,8", "--new-tokens", "3",
            "--neutral-chunks", "2", "--neutral-length", "16", "--no-progress"]
    assert cli.main(base + ["--out", str(tmp_path / "local")]) == 0 and not ndif_here
    assert cli.main(base + ["--remote-dry-run", "--out", str(tmp_path / "sent")]) == 0
    local, sent = Result.load(tmp_path / "local"), Result.load(tmp_path / "sent")
    for name in ("logit_diff", "kl_neutral"):
        np.testing.assert_allclose(sent.arrays[name], local.arrays[name], atol=1e-5)
    assert local.arrays["kl_neutral"][1] > 1e-4  # the vector did something
    assert sent.extra["steered"] == local.extra["steered"] and sent.extra["unsteered"] == local.extra["unsteered"]
    assert sent.extra["vector_norm"] == pytest.approx(local.extra["vector_norm"], rel=1e-5)
    assert len(ndif_here) == 1 + 2 + 4 + 2 * 3  # the padding check, the 2 vector reads, 4 plain runs, 3 a coefficient
