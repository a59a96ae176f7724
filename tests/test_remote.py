"""``load_model(remote=True)``: what can be checked without NDIF. The model is built from a hub
id's config and tokenizer alone (a fake hub cache here), on the meta device; every refusal is one
line. Requests themselves need NDIF and are not tested here."""

from __future__ import annotations

import dataclasses
import shutil

import nnsight
import pytest
import torch

import interp
from interp.loading import ModelLoadError, resolve_model_dir
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
    assert "padded batches are not checked" in model.padding_problem


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
    with pytest.raises(NotImplementedError, match="gradients .* are not taken through NDIF here"):
        model.gradients(torch.tensor([[1, 2, 3]]), lambda logits: logits[:, -1, 0].sum(), ["L0.RESID_PRE"])


def test_the_cli_loads_a_remote_model_and_refuses_local_options(hub, tmp_path, capsys):
    from interp.ui import cli

    base = ["patch", "--model", REPO, "--remote", "--task", "ioi", "--n-prompts", "2", "--out", str(tmp_path / "r")]
    assert cli.main(base + ["--dtype", "bfloat16"]) == 2
    assert "drop --device, --device-map, --dtype and --attention" in capsys.readouterr().err
    assert cli.main(base) == 2  # the load works; the first request cannot reach NDIF from here
    assert "interp: error: the request to NDIF failed: " in capsys.readouterr().err
