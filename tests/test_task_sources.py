"""Where tasks come from (JSONL, CSV, folders, templates, hf:, the chat template, --fields) and the
command line of prompts of different lengths, several-token answers and ablations: the numbers of a
run, and a one-line error naming the row and the field for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import interp
from interp.tasks import Task, TaskError, get_task
from interp.ui import cli
from interp.results import Result

ROWS = [
    {"clean": "The Eiffel Tower is in the city of", "corrupt": "The Colosseum is in the city of", "answer": " Paris",
     "wrong_answer": " Rome"},
    {"clean": "Big Ben is in", "corrupt": "Big Ben was in", "answer": " London", "wrong_answer": " Paris"},
]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def _csv(path, header, lines):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(f'"{cell}"' for cell in line) for line in lines) + "\n")
    return path


def test_jsonl_csv_and_a_folder_give_the_same_task(tmp_path, random_llama):
    from_jsonl = get_task(random_llama, str(_jsonl(tmp_path / "pairs.jsonl", ROWS)))
    header = ["prompt", "foil_prompt", "target", "foil"]
    csv_path = _csv(tmp_path / "pairs.csv", header, [[r["clean"], r["corrupt"], r["answer"], r["wrong_answer"]] for r in ROWS])
    from_csv = get_task(random_llama, str(csv_path), fields={"clean": "prompt", "corrupt": "foil_prompt", "answer": "target",
                                                              "wrong_answer": "foil"})
    folder = tmp_path / "folder"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", ROWS[:1])
    _jsonl(folder / "b.jsonl", ROWS[1:])
    from_folder = get_task(random_llama, str(folder))
    for task in (from_csv, from_folder):
        assert task.clean_prompts == from_jsonl.clean_prompts
        assert np.array_equal(task.clean_tokens, from_jsonl.clean_tokens)
        assert np.array_equal(task.answers, from_jsonl.answers)
    assert get_task(random_llama, str(tmp_path / "pairs.jsonl"), n_prompts=1).clean_prompts == [ROWS[0]["clean"]]


def test_a_template_file_draws_seeded_prompts_with_named_positions(tmp_path, random_llama):
    template = {"name": "colours", "clean": "The colour of {T[thing]:THING} is", "corrupt": "The colour of {U[thing]:THING} is",
                "answer": " {T[colour]}", "wrong_answer": " {U[colour]}",
                "fillers": {"T": [{"thing": "grass", "colour": "green"}, {"thing": "snow", "colour": "white"},
                                  {"thing": "coal", "colour": "black"}], "U": "T"},
                "distinct": [["T", "U"]]}
    path = tmp_path / "colours.json"
    path.write_text(json.dumps(template))
    task = get_task(random_llama, str(path), n_prompts=5, seed=3)
    assert task.name == "colours" and len(task) == 5
    assert task.clean_prompts == get_task(random_llama, str(path), n_prompts=5, seed=3).clean_prompts
    frame = task.frame("named")
    assert frame.slots == ("THING", "END")
    for i, prompt in enumerate(task.clean_prompts):
        thing = random_llama.tokenizer.decode(task.clean_tokens[i, frame.rows("THING")[i]])
        assert thing.strip() in prompt and thing.strip() in ("grass", "snow", "coal")
        assert task.clean_prompts[i] != task.corrupt_prompts[i]


def test_the_chat_template_wraps_every_prompt_and_keeps_named_positions(random_llama):
    plain = interp.tasks.landmarks(random_llama, n_prompts=3)
    wrapped = interp.tasks.landmarks(random_llama, n_prompts=3, chat_template=True)
    assert all(p in w and w.startswith("<|im_start|>") for p, w in zip(plain.clean_prompts, wrapped.clean_prompts))
    assert wrapped.settings.get("chat_template") is True
    for task in (plain, wrapped):
        frame = task.frame("named")
        landmark = [random_llama.tokenizer.decode(task.clean_tokens[i, frame.rows("SUBJ")[i]]) for i in range(3)]
        assert landmark == [random_llama.tokenizer.decode(plain.clean_tokens[i, plain.frame("named").rows("SUBJ")[i]])
                            for i in range(3)]


def test_a_hub_dataset_is_read_through_the_field_mapping(random_llama, monkeypatch):
    """``hf:<dataset>:<split>`` streams rows from ``datasets.load_dataset`` (here a stand-in, as the
    hub is unreachable from the tests) and renames its columns with ``fields``."""
    import datasets

    asked = {}

    def load_dataset(name, split, streaming):
        asked.update(name=name, split=split, streaming=streaming)
        return iter([{"prompt": row["clean"], "foil_prompt": row["corrupt"], "target": row["answer"], "foil": row["wrong_answer"]}
                     for row in ROWS])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    task = get_task(random_llama, "hf:someone/landmarks:test", fields={"clean": "prompt", "corrupt": "foil_prompt",
                                                                       "answer": "target", "wrong_answer": "foil"})
    assert asked == {"name": "someone/landmarks", "split": "test", "streaming": True}
    assert task.name == "landmarks" and task.clean_prompts == [row["clean"] for row in ROWS]
    assert task.settings["source"] == "hf:someone/landmarks:test"
    with pytest.raises(TaskError, match=r"^hf:someone/landmarks:test row 0 lacks field\(s\) clean, answer"):
        get_task(random_llama, "hf:someone/landmarks:test")


def test_an_unreachable_dataset_is_one_line(random_llama, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskError, match="cannot read Hugging Face dataset 'someone/nothing'"):
        get_task(random_llama, "hf:someone/nothing")


# ----------------------------------------------------------------------------- the command line
BASE = ["patch", "--model", "random-llama"]


def test_a_mixed_length_file_runs_end_to_end_with_positions_from_the_end(tmp_path, capsys):
    path = _jsonl(tmp_path / "pairs.jsonl", ROWS)
    out = tmp_path / "run"
    assert cli.main(BASE + ["--task", str(path), "--granularity", "heads_pos", "--out", str(out), "--no-progress"]) == 0
    result = Result.load(out)
    assert result.settings["positions"] == "end" and result.settings["padding_side"] == "left"
    assert result.position_labels[-1] == "-1: ' of'" and result.components[-1].endswith("@-1")
    assert np.isnan(result.arrays["per_prompt"][1, 0])  # Big Ben's prompt has no 10th token from its end
    right = tmp_path / "right"
    assert cli.main(BASE + ["--task", str(path), "--granularity", "heads_pos", "--padding", "right", "--out", str(right),
                            "--no-progress"]) == 0
    np.testing.assert_allclose(Result.load(right).scores, result.scores, atol=1e-6)


def test_ablations_need_no_corrupt_prompt(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "corrupt"} for row in ROWS]
    path = _jsonl(tmp_path / "plain.jsonl", rows)
    for kind, extra in (("zero", []), ("mean", ["--reference", "task"]), ("resample", [])):
        out = tmp_path / kind
        assert cli.main(BASE + ["--task", str(path), "--corruption", kind, *extra, "--out", str(out), "--no-progress"]) == 0
        result = Result.load(out)
        assert result.settings["corruption"] == kind and len(result.settings["ablated_sites"]) == 3
        assert result.corrupt_metric != pytest.approx(result.clean_metric)
    assert Result.load(tmp_path / "mean").settings["reference"] == "task"


def test_named_positions_and_several_token_answers_on_the_command_line(tmp_path):
    rows = [dict(ROWS[0], answer=" Paris, France", positions={"CITY": -2}), dict(ROWS[1], positions={"CITY": -1})]
    path = _jsonl(tmp_path / "named.jsonl", rows)
    out = tmp_path / "named"
    assert cli.main(BASE + ["--task", str(path), "--granularity", "heads_pos", "--positions", "named", "--out", str(out),
                            "--no-progress"]) == 0
    result = Result.load(out)
    assert result.position_labels == ["CITY", "END"] and result.settings["multi_token_answers"] is True


@pytest.mark.parametrize("rows, extra, message", [
    ([dict(ROWS[0], corrupt="The Eiffel Tower was in the old city of")], [],
     "interp: error: {path}:1: clean 'The Eiffel Tower is in the city of' has 9 tokens but corrupt"),
    ([dict(ROWS[0], answer="")], [], "interp: error: {path}:1: field 'answer' ('') is empty after tokenization"),
    ([dict(ROWS[0], answer=None)], [], "interp: error: {path}:1 lacks field(s) answer"),
    ([dict(ROWS[0], clean=123)], [], "interp: error: {path}:1: field 'clean' must be text, got 123"),
    ([dict(ROWS[0], clean=" ")], [], "interp: error: {path}:1: field 'clean' is empty"),
    ([dict(ROWS[0], positions={"IO": 3}), ROWS[1]], [],
     "interp: error: {path}:2: field 'positions' lacks 'IO', which other rows name"),
    ([dict(ROWS[0], positions={"IO": 30})], [], "interp: error: {path}:1: positions['IO'] = 30 is outside the prompt's 9 tokens"),
    ([dict(ROWS[0], positions={"IO": "x"})], [], "interp: error: {path}:1: positions['IO'] must be a token index, got 'x'"),
    ([ROWS[0], {"clean": "x", "answer": " y"}], [], "interp: error: {path}:2: lacks field 'corrupt', which the first pair has"),
    (ROWS, ["--positions", "named", "--granularity", "heads_pos"],
     "interp: error: --positions named needs a task that names positions"),
    (ROWS, ["--components", "L0.H0@-40"], "interp: error: component L0.H0@-40 is out of range: the longest prompt has 9 tokens"),
    (ROWS, ["--components", "L0.H0@IO"], "interp: error: position @IO is a named position, and this task names none"),
    ([{k: v for k, v in ROWS[0].items() if k != "corrupt"}], [], "interp: error: task 'bad' has no corrupt prompts"),
    ([{k: v for k, v in ROWS[0].items() if k != "wrong_answer"}], ["--corruption", "gaussian"],
     "interp: error: metric logit_diff needs wrong answers, and task 'bad' gives none"),
    ([ROWS[0]], ["--corruption", "resample"], "interp: error: --corruption resample takes each prompt's activations from another"),
    (ROWS, ["--corruption", "mean"], "interp: error: --corruption mean needs --reference"),
    (ROWS, ["--reference", "task"], "interp: error: --reference sets the mean of --corruption mean"),
    (ROWS, ["--corruption", "mean", "--reference", "nope"], "interp: error: unknown task 'nope'"),
    (ROWS, ["--corruption", "zero", "--granularity", "pattern"], "interp: error: zero ablation replaces [batch, pos, ...]"),
    (ROWS, ["--fields", "clean"], "interp: error: --fields takes name=column pairs"),
    (ROWS, ["--fields", "prompt=clean"], "interp: error: --fields names an unknown field 'prompt'"),
])
def test_bad_task_input_is_one_line_naming_the_row_and_field(tmp_path, capsys, rows, extra, message):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    assert cli.main(BASE + ["--task", str(path), "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith(message.format(path=path)), err[-1]
    assert not (tmp_path / "r" / "result.json").exists()


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_text("prompt,target\nhello, world\n"), "{path}:2 lacks field(s) clean, answer (it has 'prompt', 'target'"),
    (lambda p: p.write_text(""), "{path} has no header row naming its columns"),
    (lambda p: p.write_text('clean,answer,positions\nhello, world,{bad\n'), "{path}:2: field 'positions' is not a JSON object"),
    (lambda p: p.write_text("clean,answer\na,b,c\n"), "{path}:2 has more cells than the header has columns"),
    (lambda p: p.write_bytes(b"clean,answer\n\xff\xfe,x\n"), "{path} is not UTF-8 text"),
])
def test_bad_csv_is_one_line(tmp_path, random_llama, write, message):
    path = tmp_path / "bad.csv"
    write(path)
    with pytest.raises(TaskError) as caught:
        get_task(random_llama, str(path))
    assert str(caught.value).startswith(message.format(path=path)) and "\n" not in str(caught.value)


@pytest.mark.parametrize("content, message", [
    (b'["a list"]\n', "{path}:1 is a JSON list, not an object with named fields"),
    (b'{"clean": "x"}\n\xff\n', "{path}:2 is not UTF-8 text"),
])
def test_bad_jsonl_is_one_line(tmp_path, random_llama, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(TaskError, match="^" + message.format(path=path).replace("[", r"\[")):
        get_task(random_llama, str(path))


@pytest.mark.parametrize("template, message", [
    ({"clean": "a {X}", "answer": "b"}, "template t lacks field 'fillers'"),
    ({"clean": "a {X}", "answer": "b", "fillers": {}}, "template 't' uses slot 'X', which 'fillers' does not give"),
    ({"clean": "a {X}", "answer": "b", "fillers": {"X": ["1"]}, "distinct": [["X", "Y"]]},
     "template 't': distinct group names unknown slot 'Y'"),
    ({"clean": "a {X} {Y}", "answer": "b", "fillers": {"X": ["1"], "Y": "X"}, "distinct": [["X", "Y"]]},
     "template 't': 2 distinct fillers are drawn for X, Y from a list of 1"),
    ({"clean": ["a {X}", "b {X}"], "corrupt": "c {X}", "answer": "b", "fillers": {"X": ["1"]}},
     "template 't' has 2 clean and 1 corrupt prompts"),
    ({"clean": "a", "answer": "b", "fillers": {}, "extra": 1}, "template t has unknown field 'extra'"),
])
def test_bad_template_is_one_line(tmp_path, random_llama, template, message):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(template))
    with pytest.raises(TaskError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        get_task(random_llama, str(path))


def test_padding_keeps_the_answers_of_one_pair_apart(random_llama):
    """A task built from a pair list pads on the side asked, and a pair's prompts stay aligned."""
    left, right = (Task.from_pairs(random_llama, "x", ROWS, padding_side=side) for side in ("left", "right"))
    assert left.attention_mask is not None and not left.attention_mask[1, 0] and right.attention_mask[1, 0]
    assert (left.clean_tokens != left.corrupt_tokens).sum() == (right.clean_tokens != right.corrupt_tokens).sum()
    assert left.reads.tolist() == [[8], [8]] and right.reads.tolist() == [[8], [3]]
