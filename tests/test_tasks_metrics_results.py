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


@pytest.mark.parametrize("padding", ["left", "right"])
def test_several_token_answers_are_their_teacher_forced_log_probability(random_llama, padding):
    """A continuation of several tokens scores log P(continuation | prompt), summed over its tokens
    with the answer teacher-forced; logit_diff is the difference of the two continuations'. The
    oracle is plain transformers on each prompt alone."""
    from transformers import AutoModelForCausalLM

    from interp.corruption import task_run

    pairs = [{"clean": "The capital of France is", "corrupt": "The capital of Spain is", "answer": " Parisianistically",
              "wrong_answer": " Madrid"},
             {"clean": "Big Ben stands in", "corrupt": "Big Ben stood in", "answer": " London, England",
              "wrong_answer": " the middle of Rome"}]
    task = Task.from_pairs(random_llama, "x", pairs, padding_side=padding)
    assert task.multi_token and task.n_rows == 4 and len(task) == 2
    plain = AutoModelForCausalLM.from_pretrained(random_llama.source, attn_implementation="eager").eval()

    def log_probability(prompt: str, continuation: str) -> float:
        prompt_ids = random_llama.tokenizer(prompt)["input_ids"]
        answer_ids = random_llama.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = plain(torch.tensor([prompt_ids + answer_ids])).logits[0].double().log_softmax(-1)
        return sum(logits[len(prompt_ids) - 1 + k, token].item() for k, token in enumerate(answer_ids))

    with torch.no_grad():
        logits = random_llama.forward(task_run(task).spec()).logits
    for name, expected in [("logit_diff", [log_probability(p["clean"], p["answer"]) - log_probability(p["clean"], p["wrong_answer"])
                                           for p in pairs]),
                           ("prob", [np.exp(log_probability(p["clean"], p["answer"])) for p in pairs])]:
        metric_of, _ = metrics.task_metric(name, random_llama, task)
        np.testing.assert_allclose(task.fold(metric_of(logits)).numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_single_token_answers_keep_the_plain_logit_difference(random_llama):
    """One token each: one row per prompt, scored by logit(answer) - logit(wrong) at its last token."""
    from interp.corruption import task_run

    pairs = [{"clean": "The capital of France is", "corrupt": "The capital of Spain is", "answer": " Paris", "wrong_answer": " Madrid"},
             {"clean": "Big Ben is in", "corrupt": "Big Ben was in", "answer": " London", "wrong_answer": " Paris"}]
    task = Task.from_pairs(random_llama, "x", pairs)
    assert not task.multi_token and task.n_rows == 2
    metric_of, _ = metrics.task_metric("logit_diff", random_llama, task)
    with torch.no_grad():
        values = task.fold(metric_of(random_llama.forward(task_run(task).spec()).logits))
    for value, pair in zip(values, pairs):
        logits = random_llama.run(random_llama.to_tokens(pair["clean"]))[0, -1]
        answer, wrong = random_llama.to_single_token(pair["answer"]), random_llama.to_single_token(pair["wrong_answer"])
        assert value.item() == pytest.approx((logits[answer] - logits[wrong]).item(), abs=1e-5)


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
