"""Linear probes: chance on noise, a planted feature found where it was planted, grouped splits."""

import json

import numpy as np
import pytest
import torch

from interp import tasks
from probes.activations import residual_activations
from probes.dataset import ProbeDataError, ProbeDataset
from probes.linear_probe import (control_labels, group_folds, probe_layers, remove_direction,
                                 wilson_interval)

N = 80


@pytest.fixture(scope="module")
def random_texts():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1000, 5000, (N, 12), generator=generator)
    labels = np.r_[np.ones(N // 2, int), np.zeros(N // 2, int)]
    return ProbeDataset("random", tokens, torch.full((N,), 11), labels, np.arange(N) // 2, tokens[:, -1].numpy(),
                        ["no", "yes"])


def test_probe_on_pure_noise_sits_at_chance(random_llama, random_texts):
    scores = probe_layers(residual_activations(random_llama, random_texts.tokens, random_texts.positions), random_texts.labels, random_texts.groups,
                          random_texts.word_types)
    assert scores.chance == 0.5
    assert np.all(scores.ci_low <= 0.5) and np.all(scores.ci_high >= 0.5)


def test_planted_feature_is_found_from_the_layer_it_was_planted(random_llama, random_texts):
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    direction = 3 * direction / direction.norm()
    half = N // 2
    activations = residual_activations(random_llama, random_texts.tokens, random_texts.positions)
    with random_llama.patch({"L1.RESID_PRE": lambda x: x + direction}):  # label 1 = the first half
        activations[:, :half] = residual_activations(random_llama, random_texts.tokens[:half], random_texts.positions[:half])
    scores = probe_layers(activations, random_texts.labels, random_texts.groups, random_texts.word_types)
    assert scores.accuracy[0] < 0.7  # layer 0's output is computed before the plant
    assert np.all(scores.accuracy[1:] > 0.95) and np.all(scores.selectivity[1:] > 0.3)
    cos = abs(float(np.dot(scores.directions[1], direction.numpy() / direction.norm().item())))
    assert cos > 0.25  # well above the ~0.1 of a random direction in 64 dimensions


def test_train_and_test_never_share_a_group(random_llama):
    task = tasks.ioi(random_llama, n_prompts=12, seed=0)
    dataset = ProbeDataset.from_task(task)
    assert len(dataset) == 24 and set(dataset.labels) == {0, 1}
    for train, test in group_folds(dataset.groups, dataset.labels, 5, seed=3):
        assert not set(dataset.groups[train]) & set(dataset.groups[test])
    assert len({tuple(t) for _, t in group_folds(dataset.groups, dataset.labels, 5, seed=3)}) == 5


def test_control_labels_are_fixed_per_word_type():
    types = np.array([3, 5, 3, 7, 5, 3, 9, 9])
    control = control_labels(types, np.array([0, 1, 0, 1, 0, 1, 0, 1]), seed=0)
    for t in np.unique(types):
        assert len(set(control[types == t])) == 1


def test_wilson_interval_known_value():
    low, high = wilson_interval(50, 100, 0.95)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)


def test_remove_direction_projects_it_out():
    direction = torch.tensor([3.0, 4.0, 0.0])
    out = remove_direction(direction)(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(out @ (direction / 5), torch.zeros(1), atol=1e-6)
    assert torch.allclose(out[0, 2], torch.tensor(3.0))


def test_jsonl_dataset_and_its_errors(random_llama, tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "The cat sat", "label": "animal", "group": "a"}, {"text": "The car drove", "label": "vehicle", "group": "b"},
            {"text": "A dog ran", "label": "animal", "group": "c", "position": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dataset = ProbeDataset.from_jsonl(random_llama, path)
    assert dataset.label_names == ["animal", "vehicle"] and list(dataset.labels) == [0, 1, 0]
    assert int(dataset.positions[2]) == 1
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ProbeDataError, match="needs fields 'text' and 'label'"):
        ProbeDataset.from_jsonl(random_llama, tmp_path / "bad.jsonl")
    with pytest.raises(ProbeDataError, match="single label"):
        ProbeDataset("one", torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), np.zeros(2, int),
                     np.arange(2), np.zeros(2, int), ["x"])


def test_cli_probe_writes_a_run_and_reports_bad_files(tmp_path, capsys):
    from interp.ui.cli import main

    out = tmp_path / "probe"
    assert main(["probe", "--model", "random-llama", "--task", "ioi", "--n-prompts", "12", "--folds", "3", "--out", str(out)]) == 0
    data = json.loads((out / "result.json").read_text())
    assert data["method"] == "probe" and data["components"] == ["L0.RESID_POST", "L1.RESID_POST", "L2.RESID_POST"]
    assert all(0 <= a <= 1 for a in data["scores"]) and (out / "probe.html").is_file()
    assert "best layer by selectivity" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n')
    assert main(["probe", "--model", "random-llama", "--task", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "needs fields 'text' and 'label'" in capsys.readouterr().err
