import json

import pytest
import torch

from interp.corpus import Corpus, CorpusError, load_corpus


@pytest.fixture(scope="module")
def python_docs():
    return load_corpus()


def test_offline_default_is_python_documentation_and_deterministic(python_docs):
    assert python_docs.name == "python-docs"
    assert python_docs.n_characters > 500_000
    assert any('The "if" statement' in doc for doc in python_docs.documents)
    assert load_corpus("python-docs").documents == python_docs.documents


def test_split_is_seeded_disjoint_and_complete(python_docs):
    rest, held = python_docs.split(held_out=0.2, seed=3)
    assert sorted(rest.documents + held.documents) == sorted(python_docs.documents)
    assert abs(len(held) - 0.2 * len(python_docs)) <= 1
    assert held.documents == python_docs.split(held_out=0.2, seed=3)[1].documents
    assert held.documents != python_docs.split(held_out=0.2, seed=4)[1].documents


def test_token_chunks_are_contiguous_windows_of_the_joined_stream(random_llama):
    tokenizer = random_llama.tokenizer
    corpus = Corpus("two", ("alpha beta gamma delta " * 20, "one two three four " * 20))
    chunks = corpus.token_chunks(tokenizer, length=16, seed=0)
    stream = []
    for doc in corpus.documents:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    expected = {tuple(stream[i * 16:(i + 1) * 16]) for i in range(len(stream) // 16)}
    assert chunks.shape == (len(stream) // 16, 16)
    assert {tuple(row.tolist()) for row in chunks} == expected
    assert torch.equal(corpus.token_chunks(tokenizer, 16, n_chunks=3, seed=0), chunks[:3])


def test_files_folders_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    assert load_corpus(tmp_path / "a.txt").documents == ("first document",)
    assert load_corpus(tmp_path).documents == ("first document", "second", "third")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.txt", "corpus not found"),
    (lambda p: (p / "e.txt").write_text("  \n") and p / "e.txt", "has no text"),
    (lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n') and p / "bad.jsonl", "bad.jsonl:2 is not valid JSON"),
    (lambda p: (p / "f.jsonl").write_text('{"body": "x"}\n') and p / "f.jsonl", "needs fields 'text'"),
])
def test_bad_corpus_is_one_line(tmp_path, make, message):
    with pytest.raises(CorpusError, match=message):
        load_corpus(make(tmp_path))


def test_too_few_tokens_for_the_request(random_llama):
    with pytest.raises(CorpusError, match=r"enough for \d+ chunks of 64, not 1000"):
        Corpus("small", ("a few words only " * 10,)).token_chunks(random_llama.tokenizer, 64, n_chunks=1000)
