"""Tasks: clean/corrupt prompt pairs with answer and wrong-answer tokens.

Every generator returns prompts that all tokenize to the same length (so positions align
across prompts) and whose answers are single tokens; the metric reads the last position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from interp.jsonl import read_jsonl
from interp.model import TokenizationError
from interp.toy_models import ordinary_token_range

if TYPE_CHECKING:
    from interp.model import Model


class TaskError(ValueError):
    """A task whose prompts or answers cannot be used."""


@dataclass
class Task:
    """Prompt pairs. Tensors: ``clean_tokens``/``corrupt_tokens`` [n, pos]; ``answers``,
    ``wrong_answers`` [n] token ids; the metric reads the logits at the last position."""

    name: str
    clean_prompts: list[str]
    corrupt_prompts: list[str]
    clean_tokens: torch.Tensor
    corrupt_tokens: torch.Tensor
    answers: torch.Tensor
    wrong_answers: torch.Tensor
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    @property
    def n_positions(self) -> int:
        return self.clean_tokens.shape[1]

    @property
    def subject_positions(self) -> torch.Tensor:
        """[n, pos] bool: where clean and corrupt tokens differ (noised by Gaussian corruption)."""
        return self.clean_tokens != self.corrupt_tokens

    @classmethod
    def from_pairs(cls, model: "Model", name: str, pairs: Sequence[dict], settings: dict | None = None) -> "Task":
        """Build from dicts with keys clean, corrupt, answer, wrong_answer (answers are text)."""
        if not pairs:
            raise TaskError(f"task {name!r} has no prompt pairs")
        clean_ids, corrupt_ids, answers, wrong = [], [], [], []
        for i, pair in enumerate(pairs):
            missing = [k for k in ("clean", "corrupt", "answer", "wrong_answer") if k not in pair]
            if missing:
                raise TaskError(f"pair {i} of task {name!r} lacks field(s) {', '.join(missing)}")
            clean = model.to_tokens(pair["clean"])[0]
            corrupt = model.to_tokens(pair["corrupt"])[0]
            if clean.shape != corrupt.shape:
                raise TaskError(
                    f"pair {i}: clean {pair['clean']!r} has {clean.shape[0]} tokens but corrupt {pair['corrupt']!r} has {corrupt.shape[0]}"
                )
            if clean_ids and clean.shape != clean_ids[0].shape:
                raise TaskError(
                    f"pair {i}: {pair['clean']!r} has {clean.shape[0]} tokens but pair 0 has {clean_ids[0].shape[0]}; "
                    "every prompt of a task must have the same length so positions align"
                )
            try:
                answers.append(model.to_single_token(pair["answer"]))
                wrong.append(model.to_single_token(pair["wrong_answer"]))
            except TokenizationError as exc:
                raise TaskError(f"pair {i}: {exc}") from None
            clean_ids.append(clean)
            corrupt_ids.append(corrupt)
        return cls(
            name=name,
            clean_prompts=[p["clean"] for p in pairs],
            corrupt_prompts=[p["corrupt"] for p in pairs],
            clean_tokens=torch.stack(clean_ids),
            corrupt_tokens=torch.stack(corrupt_ids),
            answers=torch.tensor(answers, device=clean_ids[0].device),
            wrong_answers=torch.tensor(wrong, device=clean_ids[0].device),
            settings=settings or {},
        )

    @classmethod
    def from_jsonl(cls, model: "Model", path: str | Path) -> "Task":
        """One JSON object per line with fields clean, corrupt, answer, wrong_answer."""
        path = Path(path)
        if not path.is_file():
            raise TaskError(f"task file not found: {path}")
        pairs = read_jsonl(path, TaskError)
        return cls.from_pairs(model, path.stem, pairs, {"source": str(path)})

    def subset(self, n: int) -> "Task":
        return Task(self.name, self.clean_prompts[:n], self.corrupt_prompts[:n], self.clean_tokens[:n],
                    self.corrupt_tokens[:n], self.answers[:n], self.wrong_answers[:n], dict(self.settings))


def _single_tokens(model: "Model", words: Sequence[str]) -> list[str]:
    keep = []
    for word in words:
        try:
            model.to_single_token(word)
            keep.append(word)
        except TokenizationError:
            pass
    return keep


_NAMES = [" Mary", " John", " Tom", " James", " Anna", " Paul", " Sarah", " David", " Mark", " Lisa",
          " Peter", " Emma", " Kate", " Mike", " Alice", " Bob", " Jack", " Laura", " Daniel", " Grace"]
_PLACES = [" store", " park", " school", " office", " beach", " market", " station", " garden", " library"]
_OBJECTS = [" drink", " book", " ball", " gift", " key", " letter", " bag", " ring", " hat"]


def ioi(model: "Model", n_prompts: int = 16, seed: int = 0) -> Task:
    """Indirect object identification: "When Mary and John went to the store, John gave a drink to" -> " Mary".

    Corrupt: the second mention is the other name (-> " John"); metric logit(IO) - logit(S).
    """
    rng = random.Random(seed)
    names, places, objects = (_single_tokens(model, ws) for ws in (_NAMES, _PLACES, _OBJECTS))
    if len(names) < 2 or not places or not objects:
        raise TaskError(f"the tokenizer of {model.config.name} has too few single-token names/places/objects for IOI")
    pairs = []
    for _ in range(n_prompts):
        io, s = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        first = (io, s) if rng.random() < 0.5 else (s, io)
        template = "When{} and{} went to the{},{} gave a{} to"
        pairs.append({"clean": template.format(*first, place, s, obj), "corrupt": template.format(*first, place, io, obj),
                      "answer": io, "wrong_answer": s})
    return Task.from_pairs(model, "ioi", pairs, {"n_prompts": n_prompts, "seed": seed})


_CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
             ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("England", "London"),
             ("Greece", "Athens"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
             ("Portugal", "Lisbon"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Norway", "Oslo"),
             ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Sweden", "Stockholm")]


def capitals(model: "Model", n_prompts: int = 16, seed: int = 0) -> Task:
    """Factual recall: "The capital of France is" -> " Paris"; corrupt: another country."""
    rng = random.Random(seed)
    usable = [(c, k) for c, k in _CAPITALS
              if _single_tokens(model, [" " + c]) and _single_tokens(model, [" " + k])]
    if len(usable) < 2:
        raise TaskError(f"the tokenizer of {model.config.name} has too few single-token countries/capitals")
    pairs = []
    for _ in range(n_prompts):
        (country, capital), (other, other_capital) = rng.sample(usable, 2)
        pairs.append({"clean": f"The capital of {country} is", "corrupt": f"The capital of {other} is",
                      "answer": " " + capital, "wrong_answer": " " + other_capital})
    return Task.from_pairs(model, "capitals", pairs, {"n_prompts": n_prompts, "seed": seed})


def greater_than(model: "Model", n_prompts: int = 16, seed: int = 0) -> Task:
    """"The war lasted from the year 1732 to the year 17" -> a larger year.

    Tokenizers that split digits (SmolLM2) are asked for the next digit: answer = first digit + 1,
    wrong answer = first digit - 1. Otherwise two-digit tokens YY+1 vs YY-1. Corrupt start year: 1701.
    """
    rng = random.Random(seed)
    digit_level = len(model.tokenizer("1732", add_special_tokens=False)["input_ids"]) == 4
    pairs = []
    for _ in range(n_prompts):
        yy = rng.randint(22, 78) if digit_level else rng.randint(12, 88)
        clean = f"The war lasted from the year 17{yy:02d} to the year 17"
        corrupt = "The war lasted from the year 1701 to the year 17"
        if digit_level:
            answer, wrong = str(yy // 10 + 1), str(yy // 10 - 1)
        else:
            answer, wrong = f"{yy + 1:02d}", f"{yy - 1:02d}"
        pairs.append({"clean": clean, "corrupt": corrupt, "answer": answer, "wrong_answer": wrong})
    return Task.from_pairs(model, "greater_than", pairs, {"n_prompts": n_prompts, "seed": seed, "digit_level": digit_level})


def induction(model: "Model", n_prompts: int = 16, seed: int = 0, half_length: int = 10, break_match: bool = False) -> Task:
    """Repeated random tokens: [BOS] r1..rn r1..r(n-1) -> rn. Corrupt: rn in the first half
    replaced by another token w (-> w); metric logit(rn) - logit(w). With ``break_match``, r(n-1)
    in the first half is replaced by w instead, so the induction head finds no earlier match for
    the last token (the previous-token -> induction-head K-composition carries the difference)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = ordinary_token_range(model.config.d_vocab)
    special = set(model.tokenizer.all_special_ids)
    bos = model.to_tokens("")[0].tolist() if model.tokenizer.bos_token is not None else []
    bos = [t for t in bos if t in special][:1]
    clean_rows, corrupt_rows, answers, wrong = [], [], [], []
    for _ in range(n_prompts):
        while True:
            half = torch.randperm(high - low, generator=generator)[: half_length + 1] + low
            if not special.intersection(half.tolist()):
                break
        body, w = half[:half_length].tolist(), half[half_length].item()
        clean = bos + body + body[:-1]
        first_half = body[:-2] + [w, body[-1]] if break_match else body[:-1] + [w]
        corrupt = bos + first_half + body[:-1]
        clean_rows.append(clean)
        corrupt_rows.append(corrupt)
        answers.append(body[-1])
        wrong.append(w)
    device = model.device
    decode = model.tokenizer.decode
    return Task(
        name="induction",
        clean_prompts=[decode(r) for r in clean_rows],
        corrupt_prompts=[decode(r) for r in corrupt_rows],
        clean_tokens=torch.tensor(clean_rows, device=device),
        corrupt_tokens=torch.tensor(corrupt_rows, device=device),
        answers=torch.tensor(answers, device=device),
        wrong_answers=torch.tensor(wrong, device=device),
        settings={"n_prompts": n_prompts, "seed": seed, "half_length": half_length, "break_match": break_match},
    )


def tracr(model: "Model", n_prompts: int = 16, seed: int = 0) -> Task:
    """The program of a tracr port (``tracr-reverse``, ``tracr-frac-prevs``) on random inputs of its
    longest length; the metric reads the program's output at the last position.

    reverse: clean and corrupt are independent random sequences with different first tokens (the
    last output is the first token): answer = clean first token, wrong = corrupt first token.
    frac-prevs: the corrupt prompt is the clean one with every "x" replaced by "y" or "z"; answer =
    the output token, wrong = BOS (an all-zero unembedding row), so the metric is the fraction of
    x's itself (clean > 0, corrupt 0).
    """
    from interp.tracr_models import BOS, PROGRAMS, read_metadata

    metadata = read_metadata(model.source)
    if metadata is None:
        raise TaskError(f"task 'tracr' needs a tracr-compiled model (tracr-reverse, tracr-frac-prevs), not {model.config.name!r}")
    program = PROGRAMS[metadata["program"]]
    rng = random.Random(seed)
    length, vocab = metadata["max_seq_len"], metadata["vocab"]
    pairs = []
    while len(pairs) < n_prompts:
        clean = [rng.choice(vocab) for _ in range(length)]
        if program.name == "reverse":
            corrupt = [rng.choice(vocab) for _ in range(length)]
            if corrupt[0] == clean[0]:
                continue
            answer, wrong = program.expected(clean)[-1], program.expected(corrupt)[-1]
        else:
            if "x" not in clean:
                continue
            corrupt = [rng.choice(["y", "z"]) if t == "x" else t for t in clean]
            answer, wrong = metadata["output_tokens"][0], BOS
        pairs.append({"clean": " ".join(clean), "corrupt": " ".join(corrupt), "answer": answer, "wrong_answer": wrong})
    return Task.from_pairs(model, f"tracr-{program.name}", pairs, {"n_prompts": n_prompts, "seed": seed})


GENERATORS = {"ioi": ioi, "capitals": capitals, "greater_than": greater_than, "induction": induction, "tracr": tracr}


def get_task(model: "Model", name_or_path: str, n_prompts: int = 16, seed: int = 0) -> Task:
    """A built-in task by name, or a JSONL file of pairs."""
    if name_or_path in GENERATORS:
        return GENERATORS[name_or_path](model, n_prompts=n_prompts, seed=seed)
    if name_or_path.endswith(".jsonl") or Path(name_or_path).exists():
        return Task.from_jsonl(model, name_or_path).subset(n_prompts)
    raise TaskError(f"unknown task {name_or_path!r}; built-in: {', '.join(GENERATORS)}, or a path to a .jsonl file")
