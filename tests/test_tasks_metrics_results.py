import json

import numpy as np
import pytest
import torch

from interp import metrics, tasks
from interp.results import Result, ResultError
from interp.tasks import Task, TaskError


def test_ioi_pairs_align_and_answers_are_single_tokens(random_llama):
    task = tasks.ioi(random_llama, n_prompts=6, seed=0)
    assert task.clean_tokens.shape == task.corrupt_tokens.shape
    assert (task.subject_positions.sum(1) == 1).all()  # only the second name differs
    assert tasks.ioi(random_llama, n_prompts=6, seed=0).clean_prompts == task.clean_prompts  # seeded


@pytest.mark.parametrize("name", ["capitals", "greater_than", "induction"])
def test_generators_build_equal_length_tasks(random_llama, name):
    task = tasks.GENERATORS[name](random_llama, n_prompts=5, seed=2)
    assert len(task) == 5 and task.clean_tokens.shape == task.corrupt_tokens.shape
    assert (task.answers != task.wrong_answers).all()


def test_jsonl_task(tmp_path, random_llama):
    path = tmp_path / "pairs.jsonl"
    rows = [{"clean": "The capital of France is", "corrupt": "The capital of Spain is", "answer": " Paris", "wrong_answer": " Madrid"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = Task.from_jsonl(random_llama, path)
    assert task.answers.tolist() == [random_llama.to_single_token(" Paris")]


def test_unequal_pair_names_the_pair(random_llama):
    pairs = [{"clean": "The capital of France is", "corrupt": "The capital of Spain is", "answer": " Paris", "wrong_answer": " Madrid"},
             {"clean": "The capital of France is", "corrupt": "The capital of the United Kingdom is", "answer": " Paris", "wrong_answer": " London"}]
    with pytest.raises(TaskError, match="pair 1: clean 'The capital of France is' has 5 tokens but corrupt"):
        Task.from_pairs(random_llama, "x", pairs)


def test_multi_token_answer_is_named(random_llama):
    pairs = [{"clean": "The capital of France is", "corrupt": "The capital of Spain is", "answer": " Parisianistically", "wrong_answer": " Madrid"}]
    with pytest.raises(TaskError, match="' Parisianistically' is not a single token"):
        Task.from_pairs(random_llama, "x", pairs)


def test_bad_jsonl_line(tmp_path, random_llama):
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json}\n")
    with pytest.raises(TaskError, match="bad.jsonl:1 is not valid JSON"):
        Task.from_jsonl(random_llama, path)


def test_unknown_task(random_llama):
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        tasks.get_task(random_llama, "nope")


def test_metrics_on_known_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    answers, wrong = torch.tensor([0]), torch.tensor([2])
    assert metrics.logit_diff(logits, answers, wrong, None).item() == pytest.approx(3.0)
    assert metrics.prob(logits, answers, wrong, None).item() == pytest.approx(np.exp(2) / (np.exp(2) + 1 + np.exp(-1)))
    clean = logits.log_softmax(-1)
    assert metrics.kl(logits, answers, wrong, clean).item() == pytest.approx(0.0, abs=1e-7)
    assert metrics.kl(torch.zeros(1, 3), answers, wrong, clean).item() > 0
    assert metrics.normalized(torch.tensor(1.0), target=3.0, source=-1.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="nothing to normalize"):
        metrics.normalized(torch.tensor(1.0), target=2.0, source=2.0)


def _result() -> Result:
    return Result(method="exact", model="m", task="t", metric="logit_diff", granularity="heads",
                  components=["L0.H0", "L0.H1"], scores=np.array([0.5, -0.25]), shape=[1, 2], axes=["layer", "head"],
                  clean_metric=1.0, corrupt_metric=-1.0, wall_seconds=0.1, n_forward_passes=3,
                  arrays={"per_prompt": np.ones((4, 2))})


def test_result_round_trip(tmp_path):
    saved = _result().save(tmp_path / "run")
    loaded = Result.load(saved)
    assert loaded.components == ["L0.H0", "L0.H1"]
    np.testing.assert_array_equal(loaded.scores, [0.5, -0.25])
    np.testing.assert_array_equal(loaded.arrays["per_prompt"], np.ones((4, 2)))
    assert loaded.top(1) == [("L0.H0", 0.5)]
    data = json.loads((saved / "result.json").read_text())
    for field in ("method", "model", "task", "metric", "granularity", "components", "scores", "clean_metric",
                  "corrupt_metric", "wall_seconds", "n_forward_passes"):
        assert field in data


def test_bad_results_folders(tmp_path):
    with pytest.raises(ResultError, match="no result.json"):
        Result.load(tmp_path)
    (tmp_path / "result.json").write_text("{broken")
    with pytest.raises(ResultError, match="is not valid JSON"):
        Result.load(tmp_path)
    (tmp_path / "result.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ResultError, match="was not written by interp"):
        Result.load(tmp_path)
