"""Device maps (``load_model(device_map=...)``, ``interp.placement``).

This machine has one device, so the two-device map here is CPU and ``meta``: every odd decoder
layer is offloaded to disk, its weights live on ``meta`` and Accelerate loads them for each
forward. Any code that takes a device from a parameter, reads a weight without loading it, or
combines an offloaded layer's tensors with another's without moving them fails or gives other
numbers, which the comparisons with the plain model catch. A source scan checks that nothing
names a device.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import interp
from interp import placement
from interp.architectures import decoder_layers
from interp.attribution.atp import attribution_patching
from interp.dla import direct_logit_attribution
from interp.loading import ModelLoadError
from interp.patching import activation_patching
from interp.tasks import ioi

ROOT = Path(__file__).resolve().parent.parent


def offloading_map(model) -> dict:
    """Odd decoder layers on disk, every other module on CPU (built from the model's own paths)."""
    layers = model.layout.layers
    mapping = {f"{layers}.{i}": "disk" if i % 2 else "cpu" for i in range(model.config.n_layers)}
    parts = layers.split(".")
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        module = model.hf_model.get_submodule(parent)
        for name, child in module.named_children():
            path = f"{parent}.{name}" if parent else name
            holds = any(True for _ in child.parameters()) or any(True for _ in child.buffers())
            if holds and path != ".".join(parts[:depth + 1]):  # (nnsight 0.5 adds empty modules of its own)
                mapping[path] = "cpu"
    return mapping


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request):
    plain = interp.load_model(f"random-{request.param}")
    return plain, interp.load_model(f"random-{request.param}", device_map=offloading_map(plain))


def test_offloaded_layers_are_on_meta_and_compute_on_cpu(pair):
    plain, mapped = pair
    assert mapped.device == "cpu"
    layers = decoder_layers(mapped.hf_model, mapped.layout)
    assert next(layers[1].parameters()).device.type == "meta"
    assert next(layers[0].parameters()).device.type == "cpu"
    assert placement.execution_device(layers[1]) == torch.device("cpu")
    assert placement.devices(mapped.hf_model) == [torch.device("cpu")]
    assert placement.offloaded(mapped.hf_model)
    name, parameter = next((n, p) for n, p in layers[1].named_parameters() if n.endswith("weight"))
    module = layers[1].get_submodule(name.rsplit(".", 1)[0])
    loaded = placement.weight(module)
    assert loaded.device.type == "cpu"
    assert torch.equal(loaded, decoder_layers(plain.hf_model, plain.layout)[1].get_parameter(name))


def test_offloaded_model_gives_the_plain_numbers(pair):
    plain, mapped = pair
    outputs = []
    for model in pair:
        task = ioi(model, n_prompts=4)
        exact = activation_patching(model, task, "heads", progress=False).scores
        star = attribution_patching(model, task, "heads", progress=False).scores
        dla = direct_logit_attribution(model, task.clean_tokens[0].tolist(), 5, 7, neurons=True)
        tokens = model.generate(task.clean_tokens[:2], 4)
        outputs.append((exact, star, dla, tokens))
    (exact, star, dla, tokens), (exact_m, star_m, dla_m, tokens_m) = outputs
    assert abs(exact).max() > 0.1  # the sweep measured something
    torch.testing.assert_close(torch.as_tensor(exact_m), torch.as_tensor(exact), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.as_tensor(star_m), torch.as_tensor(star), rtol=1e-5, atol=1e-5)
    assert dla_m.parts.keys() == dla.parts.keys()
    torch.testing.assert_close(torch.tensor(list(dla_m.parts.values())), torch.tensor(list(dla.parts.values())),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(tokens_m, tokens)


@pytest.mark.parametrize("value, message", [
    ("nope.json", "neither auto, balanced, balanced_low_0, sequential nor a JSON file"),
    ({"model": "cuda:99"}, "'model' -> cuda:99"),
    ({"model": 99}, "'model' -> cuda:99"),
    ({"model": 1.5}, "maps to 1.5, which is not a device"),
    ({"model": "tpu"}, "'model' -> 'tpu' is not a torch device"),
])
def test_bad_device_maps_are_one_line(value, message):
    with pytest.raises(ModelLoadError) as info:
        interp.load_model("random-llama", device_map=value)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_device_map_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{model: cpu")
    listed = tmp_path / "list.json"
    listed.write_text('["cpu"]')
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": "cpu", "lm_head": "disk"}))
    assert placement.parse_device_map(str(good)) == {"model": "cpu", "lm_head": "disk"}
    assert placement.parse_device_map("auto") == "auto"
    assert placement.parse_device_map("") is None
    with pytest.raises(placement.PlacementError, match="not JSON"):
        placement.parse_device_map(str(bad))
    with pytest.raises(placement.PlacementError, match="not a list"):
        placement.parse_device_map(str(listed))


def test_explicit_map_must_name_the_models_modules():
    with pytest.raises(ModelLoadError, match=r"names 'model\.decoder', which LlamaForCausalLM does not have") as info:
        interp.load_model("random-llama", device_map={"model.decoder": "cpu", "lm_head": "cpu"})
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="places no module holding lm_head.weight"):
        interp.load_model("random-llama", device_map={"model": "cpu"})


def test_device_map_refusals():
    with pytest.raises(ModelLoadError, match="needs backend='nnsight'"):
        interp.load_model("random-llama", backend="transformer_lens", device_map="auto")
    with pytest.raises(ModelLoadError, match="not both"):
        interp.load_model("random-llama", device="cpu:0", device_map="auto")


def test_auto_map_on_one_device_equals_the_plain_model():
    plain = interp.load_model("random-neox")
    mapped = interp.load_model("random-neox", device_map="auto")
    tokens = plain.to_tokens("The cat sat on the mat because it was")
    torch.testing.assert_close(mapped.run(tokens), plain.run(tokens), rtol=0, atol=0)


def _hard_coded_devices(source: str) -> list[str]:
    """Calls that name a device in the code: ``.cuda()``, ``torch.device("cuda...")``,
    ``device="cuda..."`` and ``.to("cuda...")`` (CPU and meta are allowed: results leave the
    device on purpose)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "cuda" and not node.args:
            found.append(f"line {node.lineno}: .cuda()")
        named = [k.value for k in node.keywords if k.arg == "device"]
        if isinstance(func, ast.Attribute) and func.attr in ("device", "to") and node.args:
            named.append(node.args[0])
        for value in named:
            if isinstance(value, ast.Constant) and isinstance(value.value, (str, int)) and not isinstance(value.value, bool):
                if str(value.value).split(":")[0] not in ("cpu", "meta"):
                    found.append(f"line {node.lineno}: device {value.value!r}")
    return found


def test_the_scan_finds_hard_coded_devices():
    assert len(_hard_coded_devices('x.cuda(); torch.zeros(3, device="cuda"); y.to("cuda:0"); torch.device(0)\n'
                                   'x.to("cpu"); torch.ones(2, device=other.device)')) == 4


def test_nothing_names_a_device():
    offenders = {}
    for package in ("interp", "circuits", "probes", "app"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found = _hard_coded_devices(path.read_text())
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert not offenders


def test_a_model_too_big_for_memory_is_refused_before_loading(monkeypatch):
    from interp import loading

    loaded = sum(p.numel() for p in interp.load_model("random-llama").hf_model.parameters())
    empty = loading._empty_model(loading.resolve_model_dir("random-llama")[0])
    assert sum(p.numel() for p in empty.parameters()) == loaded  # the estimate counts what loads
    with monkeypatch.context() as patched:  # with memory to spare the meta model is not even built
        patched.setattr(loading, "_empty_model", lambda folder: pytest.fail("built the meta model"))
        interp.load_model("random-llama")
    monkeypatch.setattr(loading, "available_memory", lambda: 1_000_000)
    with pytest.raises(ModelLoadError) as info:
        interp.load_model("random-llama")
    message = str(info.value)
    assert "needs about" in message and "float32" in message and "976.6 KB free" in message and "\n" not in message
    with pytest.raises(ModelLoadError, match="bfloat16 halves it"):
        interp.load_model("random-llama")
    with pytest.raises(ModelLoadError) as info:
        interp.load_model("random-llama", dtype=torch.bfloat16)
    assert "bfloat16 halves" not in str(info.value)


def test_cli_device_map_and_offloaded_activations_give_the_plain_sweep(tmp_path, capsys):
    from interp.results import Result
    from interp.ui import cli

    plain = interp.load_model("random-llama")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(offloading_map(plain)))
    base = ["patch", "--model", "random-llama", "--task", "ioi", "--n-prompts", "4", "--granularity", "heads"]
    assert cli.main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert cli.main(base + ["--device-map", str(mapping), "--offload-activations", "--out", str(tmp_path / "mapped")]) == 0
    plain_scores, mapped_scores = Result.load(tmp_path / "plain").scores, Result.load(tmp_path / "mapped").scores
    assert abs(plain_scores).max() > 0.1
    torch.testing.assert_close(torch.as_tensor(mapped_scores), torch.as_tensor(plain_scores), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert cli.main(base + ["--method", "atp*", "--offload-activations", "--out", str(tmp_path / "r")]) == 2
    assert "--method atp* keeps none" in capsys.readouterr().err
    assert cli.main(base + ["--device-map", "cuda_everything", "--out", str(tmp_path / "r")]) == 2
    assert "interp: error: --device-map 'cuda_everything' is neither" in capsys.readouterr().err
