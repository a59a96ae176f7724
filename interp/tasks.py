"""Tasks: prompts with answer (and wrong-answer) continuations, usually in clean/corrupt pairs.

Prompts may have any length: they are padded into one batch (``padding_side``, left by default),
and only the two prompts of one pair must align token for token (patching swaps activations
position by position). The metric reads each prompt's own last token.

Answers may be several tokens. Then each prompt becomes two rows, the prompt followed by the
answer and by the wrong answer (all but their last token, teacher-forced), and the metric scores
each continuation by its summed log-probability; a single-token task keeps one row per prompt and
the plain logits. Rows are what a forward runs; :meth:`Task.fold` sums a per-row array into one
value per prompt.

A task may omit its corrupt prompts (for zero, mean and resample ablations) and its wrong answers
(for the ``prob`` and ``kl`` metrics), and may name positions in each prompt (IOI: S1, IO, S2,
END), which ``--positions named`` sweeps over.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from interp.batch import PADDING_SIDES, Tokens, pad_id
from interp.model import TokenizationError
from interp.positions import PositionFrame, build_frame
from interp.templates import PromptTemplate, TemplateError, capitals_template, greater_than_template, ioi_template
from interp.toy_models import ordinary_token_range

if TYPE_CHECKING:
    from interp.model import Model


class TaskError(ValueError):
    """A task whose prompts or answers cannot be used."""


@dataclass
class Task:
    """Prompts and their answers as token ids, padded into rows.

    Built from token-id lists (``prompt_ids`` per prompt, ``corrupt_ids`` aligned with them or
    None, ``answer_ids`` / ``wrong_ids`` continuations, ``names``: per prompt, named position ->
    token offset in the prompt); everything else is derived:

    * ``clean_tokens`` / ``corrupt_tokens`` [rows, pos] and ``attention_mask`` [rows, pos] (True =
      real token; None when nothing is padded). A single-token task has one row per prompt; a
      task with longer answers has a row per prompt and continuation (answers first, then wrong
      answers), each the prompt plus the continuation minus its last token.
    * ``reads`` [rows, k]: the positions whose next-token logits the metric reads, with
      ``read_targets`` [rows, k] (the tokens scored) and ``read_mask`` [rows, k] (k is the longest
      continuation: 1 for single tokens); ``row_prompt`` and ``row_sign`` (+1 answer, -1 wrong) [rows].
    * ``answers`` / ``wrong_answers`` [prompts]: each continuation's first token.
    * ``starts`` / ``ends`` [rows]: where each row's prompt begins and ends (exclusive).
    """

    name: str
    clean_prompts: list[str]
    corrupt_prompts: list[str]
    prompt_ids: list[list[int]]
    corrupt_ids: list[list[int]] | None
    answer_ids: list[list[int]]
    wrong_ids: list[list[int]] | None
    settings: dict = field(default_factory=dict)
    names: list[dict] = field(default_factory=list)
    padding_side: str = "left"
    pad_token: int = 0
    device: str | torch.device = "cpu"
    first_tokens: list[str] = field(default_factory=list)  # the first prompt's tokens as text (figure labels)

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        if n == 0:
            raise TaskError(f"task {self.name!r} has no prompts")
        if self.padding_side not in PADDING_SIDES:
            raise TaskError(f"unknown padding side {self.padding_side!r}; known: {', '.join(PADDING_SIDES)}")
        if not self.names:
            self.names = [{} for _ in range(n)]
        if self.corrupt_ids is not None:
            if len(self.corrupt_ids) != n:
                raise TaskError(f"task {self.name!r} has {n} prompts but {len(self.corrupt_ids)} corrupt prompts")
            bad = next((i for i, (p, c) in enumerate(zip(self.prompt_ids, self.corrupt_ids)) if len(p) != len(c)), None)
            if bad is not None:
                raise TaskError(f"pair {bad}: the clean prompt has {len(self.prompt_ids[bad])} tokens but the corrupt one "
                                f"has {len(self.corrupt_ids[bad])}; the two prompts of a pair must align token for token")
        continuations = [self.answer_ids] + ([self.wrong_ids] if self.wrong_ids is not None else [])
        self.multi_token = any(len(c) > 1 for group in continuations for c in group)
        if not self.multi_token:
            groups = [[[] for _ in range(n)]]
            signs = [1]
        else:
            groups = [[c[:-1] for c in group] for group in continuations]
            signs = [1, -1][:len(groups)]
        clean_rows = [p + c for group in groups for p, c in zip(self.prompt_ids, group)]
        corrupt_rows = ([p + c for group in groups for p, c in zip(self.corrupt_ids, group)]
                        if self.corrupt_ids is not None else None)
        clean = Tokens.pad(clean_rows, self.pad_token, self.padding_side, self.device)
        self.clean_tokens, self.attention_mask = clean.ids, clean.mask
        self.corrupt_tokens = (Tokens.pad(corrupt_rows, self.pad_token, self.padding_side, self.device).ids
                               if corrupt_rows is not None else None)
        width = self.clean_tokens.shape[1]
        self.row_prompt = torch.arange(n).repeat(len(groups))
        self.row_sign = torch.tensor([sign for sign in signs for _ in range(n)], dtype=torch.float32)
        lengths = [len(row) for row in clean_rows]
        prompt_lengths = [len(p) for p in self.prompt_ids] * len(groups)
        starts = [width - length if self.padding_side == "left" else 0 for length in lengths]
        self.starts = torch.tensor(starts, dtype=torch.long)
        self.ends = self.starts + torch.tensor(prompt_lengths, dtype=torch.long)
        scored = [c[:1] for c in self.answer_ids] if not self.multi_token else [c for group in continuations for c in group]
        k = max(len(c) for c in scored)
        self.reads = torch.zeros(len(clean_rows), k, dtype=torch.long)
        self.read_targets = torch.zeros(len(clean_rows), k, dtype=torch.long)
        self.read_mask = torch.zeros(len(clean_rows), k, dtype=torch.bool)
        for r, targets in enumerate(scored):
            end = int(self.ends[r])
            self.reads[r] = end - 1
            self.reads[r, :len(targets)] = torch.arange(end - 1, end - 1 + len(targets))
            self.read_targets[r, :len(targets)] = torch.tensor(targets)
            self.read_mask[r, :len(targets)] = True
        self.reads, self.read_targets, self.read_mask = (x.to(self.device) for x in (self.reads, self.read_targets,
                                                                                       self.read_mask))
        self.answers = torch.tensor([c[0] for c in self.answer_ids], device=self.device)
        self.wrong_answers = (torch.tensor([c[0] for c in self.wrong_ids], device=self.device)
                              if self.wrong_ids is not None else None)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_rows(self) -> int:
        """Rows of the padded batch (prompts, or prompts x continuations for longer answers)."""
        return self.clean_tokens.shape[0]

    @property
    def n_positions(self) -> int:
        """Positions of the padded rows."""
        return self.clean_tokens.shape[1]

    @property
    def has_corrupt(self) -> bool:
        return self.corrupt_tokens is not None

    @property
    def subject_positions(self) -> torch.Tensor:
        """[rows, pos] bool: where clean and corrupt tokens differ (noised by Gaussian corruption)."""
        if self.corrupt_tokens is None:
            raise TaskError(f"task {self.name!r} has no corrupt prompts, so no tokens where a pair differs")
        return self.clean_tokens != self.corrupt_tokens

    def fold(self, values):
        """Per-row values [rows, ...] -> per-prompt values [prompts, ...]: each prompt's rows summed
        (a longer answer's log-probability minus the wrong answer's; a single-token task's rows are
        its prompts)."""
        n = len(self)
        if values.shape[0] == n:
            return values
        return sum(values[k * n:(k + 1) * n] for k in range(values.shape[0] // n))

    def settings_under(self, settings: dict) -> dict:
        """A result's settings: the task's (its source, prompt count, ...) with the analysis'
        ``settings`` over them, so the analysis' own seed is what a result records as ``seed`` (the
        one its noise, ablation and verification used); the task's seed is kept as ``task_seed``."""
        task = {("task_seed" if key == "seed" else key): value for key, value in self.settings.items()}
        return {**task, **settings}

    def frame(self, kind: str = "auto") -> PositionFrame:
        """The positions a position-resolved sweep uses (``interp.positions``)."""
        return build_frame(kind, self.starts, self.ends, tuple(self.names), self.row_prompt, self.first_tokens)

    def subset(self, n: int) -> "Task":
        """The first ``n`` prompts."""
        def cut(x):
            return None if x is None else x[:n]
        return Task(self.name, self.clean_prompts[:n], self.corrupt_prompts[:n], self.prompt_ids[:n], cut(self.corrupt_ids),
                    self.answer_ids[:n], cut(self.wrong_ids), dict(self.settings), self.names[:n], self.padding_side,
                    self.pad_token, self.device, self.first_tokens)

    @classmethod
    def from_ids(cls, model: "Model", name: str, prompts: Sequence[Sequence[int]], corrupt: Sequence[Sequence[int]] | None,
                 answers: Sequence[Sequence[int]], wrong: Sequence[Sequence[int]] | None, settings: dict | None = None,
                 names: list[dict] | None = None, padding_side: str = "left") -> "Task":
        """A task from token ids (prompts with the model's special tokens; continuations without)."""
        decode = model.tokenizer.decode
        prompts = [list(p) for p in prompts]
        corrupt = None if corrupt is None else [list(p) for p in corrupt]
        _check_context(model, prompts, answers, wrong, [f"prompt {i}" for i in range(len(prompts))])
        return cls(name, [decode(p) for p in prompts], [] if corrupt is None else [decode(p) for p in corrupt], prompts,
                   corrupt, [list(a) for a in answers], None if wrong is None else [list(w) for w in wrong],
                   settings or {}, names or [], padding_side, pad_id(model.tokenizer), model.device,
                   model.to_str_tokens(torch.tensor(prompts[0])))

    @classmethod
    def from_pairs(cls, model: "Model", name: str, pairs: Sequence[dict], settings: dict | None = None, *,
                   padding_side: str = "left", chat_template: bool = False, labels: Sequence[str] | None = None) -> "Task":
        """From dicts with text fields ``clean``, ``answer`` and optionally ``corrupt``,
        ``wrong_answer`` and ``positions`` (name -> token index in the clean prompt, negative from
        its end); every pair gives the same optional fields. ``labels`` name each pair in errors
        (default ``pair <i>``); ``chat_template`` wraps each prompt in the model's chat template as
        a user turn followed by the assistant's start."""
        if not pairs:
            raise TaskError(f"task {name!r} has no prompt pairs")
        labels = list(labels) if labels is not None else [f"pair {i}" for i in range(len(pairs))]
        tokenizer = model.tokenizer
        first = pairs[0] if isinstance(pairs[0], dict) else {}
        has_corrupt, has_wrong = first.get("corrupt") is not None, first.get("wrong_answer") is not None
        prompts, corrupts, answers, wrongs, names, clean_texts, corrupt_texts = [], [], [], [], [], [], []
        for label, pair in zip(labels, pairs):
            if not isinstance(pair, dict):
                raise TaskError(f"{label}: expected an object with fields clean, corrupt, answer, wrong_answer; "
                                f"got {type(pair).__name__}")
            for key, wanted in (("corrupt", has_corrupt), ("wrong_answer", has_wrong)):
                if (pair.get(key) is not None) != wanted:
                    raise TaskError(f"{label}: {'lacks' if wanted else 'has'} field {key!r}, which the first pair "
                                    f"{'has' if wanted else 'lacks'}; every pair of a task gives the same fields")
            missing = [k for k in ("clean", "answer") if pair.get(k) is None]
            if missing:
                has = ", ".join(repr(k) for k in pair) or "no fields"
                raise TaskError(f"{label} lacks field(s) {', '.join(missing)} (it has {has}; --fields clean=<column> "
                                "reads another column as a field)")
            for key in ("clean", "corrupt", "answer", "wrong_answer"):
                if key in pair and pair[key] is not None and not isinstance(pair[key], str):
                    raise TaskError(f"{label}: field {key!r} must be text, got {pair[key]!r}")
            if not pair["clean"].strip():
                raise TaskError(f"{label}: field 'clean' is empty")
            clean_text = _wrapped(tokenizer, pair["clean"], label) if chat_template else pair["clean"]
            clean = _ids(tokenizer, clean_text, chat_template)
            corrupt = None
            if has_corrupt:
                corrupt_text = _wrapped(tokenizer, pair["corrupt"], label) if chat_template else pair["corrupt"]
                corrupt = _ids(tokenizer, corrupt_text, chat_template)
                if len(clean) != len(corrupt):
                    raise TaskError(f"{label}: clean {pair['clean']!r} has {len(clean)} tokens but corrupt {pair['corrupt']!r} "
                                    f"has {len(corrupt)}; the two prompts of a pair must align token for token")
                corrupts.append(corrupt)
                corrupt_texts.append(corrupt_text)
            answer = _continuation(tokenizer, pair["answer"], label, "answer")
            if has_wrong:
                wrongs.append(_continuation(tokenizer, pair["wrong_answer"], label, "wrong_answer"))
            names.append(_named_positions(tokenizer, pair, clean_text, clean, label, chat_template))
            prompts.append(clean)
            answers.append(answer)
            clean_texts.append(clean_text)
        _check_context(model, prompts, answers, wrongs if has_wrong else None, labels)
        named = {key for found in names for key in found if key != "END"}
        for label, found in zip(labels, names):
            lacking = sorted(named - set(found))
            if lacking:
                raise TaskError(f"{label}: field 'positions' lacks {lacking[0]!r}, which other rows name; every row "
                                "names the same positions")
        return cls(name, clean_texts, corrupt_texts, prompts, corrupts if has_corrupt else None, answers,
                   wrongs if has_wrong else None, dict(settings or {}, **({"chat_template": True} if chat_template else {})),
                   names, padding_side, pad_id(tokenizer), model.device, model.to_str_tokens(torch.tensor(prompts[0])))

    @classmethod
    def from_jsonl(cls, model: "Model", path: str | Path, **options) -> "Task":
        """One JSON object per line with fields clean, answer and optionally corrupt, wrong_answer,
        positions (see :meth:`from_pairs`)."""
        from interp.task_files import read_task_file

        return read_task_file(model, path, **options)

    @classmethod
    def from_template(cls, model: "Model", template: PromptTemplate, n_prompts: int, seed: int = 0,
                      settings: dict | None = None, **options) -> "Task":
        """``n_prompts`` prompts drawn from ``template`` (``interp.templates``)."""
        try:
            pairs = template.pairs(n_prompts, seed)
        except TemplateError as exc:
            raise TaskError(str(exc)) from None
        return cls.from_pairs(model, template.name, pairs, dict({"n_prompts": n_prompts, "seed": seed}, **(settings or {})),
                              **options)


def _check_context(model: "Model", prompts, answers, wrong, labels) -> None:
    """A one-line :class:`TaskError` naming the first row longer than the model reads (a prompt,
    plus all but the last token of its longest continuation)."""
    limit = model.config.n_ctx
    for i, (label, prompt, answer) in enumerate(zip(labels, prompts, answers)):
        longest = max(len(answer), len(wrong[i]) if wrong is not None else 0)
        length = len(prompt) + longest - 1
        if length > limit:
            extra = f" with its answer's tokens, {length}" if longest > 1 else ""
            raise TaskError(f"{label}: the prompt has {len(prompt)} tokens{extra}; {model.config.name} reads at most {limit}")


def _ids(tokenizer, text: str, wrapped: bool) -> list[int]:
    """A prompt's token ids: with the tokenizer's special tokens, unless a chat template already put them in."""
    return tokenizer(text, add_special_tokens=not wrapped)["input_ids"]


def _wrapped(tokenizer, text: str, label: str) -> str:
    """``text`` as a user turn of the tokenizer's chat template, followed by the assistant's start."""
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(f"{label}: --chat-template was given, but this model's tokenizer has no chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def _continuation(tokenizer, text: str, label: str, key: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TaskError(f"{label}: field {key!r} ({text!r}) is empty after tokenization")
    return ids


def token_at_char(tokenizer, text: str, char: int, add_special_tokens: bool = True) -> int:
    """The index of the token of ``text`` that holds character ``char``."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)["offset_mapping"]
        for index, (begin, end) in enumerate(offsets):
            if begin < end and end > char:
                return index
        return len(offsets) - 1
    return len(tokenizer(text[:char], add_special_tokens=add_special_tokens)["input_ids"])


def _named_positions(tokenizer, pair: dict, text: str, ids: list[int], label: str, wrapped: bool) -> dict:
    """Named position -> token offset in the prompt, from ``positions`` (token indices of the
    prompt; negative from its end) or ``char_positions`` (character offsets in the unwrapped clean
    text, from templates); END (the last token) is added whenever a position is named."""
    found: dict[str, int] = {}
    raw = pair.get("positions")
    if raw is not None:
        if not isinstance(raw, dict):
            raise TaskError(f"{label}: field 'positions' must map names to token indices, got {raw!r}")
        for name, index in raw.items():
            if isinstance(index, bool) or not isinstance(index, int):
                raise TaskError(f"{label}: positions[{name!r}] must be a token index, got {index!r}")
            if not -len(ids) <= index < len(ids):
                raise TaskError(f"{label}: positions[{name!r}] = {index} is outside the prompt's {len(ids)} tokens")
            if wrapped:  # the index counts the unwrapped prompt's tokens: find the same token inside the template
                plain = pair["clean"]
                char = _char_of_token(tokenizer, plain, index % len(tokenizer(plain)["input_ids"]))
                index = token_at_char(tokenizer, text, text.index(plain) + char, add_special_tokens=False)
            found[_position_name(name, label)] = index % len(ids)
    for name, char in (pair.get("char_positions") or {}).items():
        shift = text.index(pair["clean"]) if wrapped else 0
        found[_position_name(name, label)] = token_at_char(tokenizer, text, shift + char, add_special_tokens=not wrapped)
    if found and "END" not in found:
        found["END"] = len(ids) - 1
    return found


def _char_of_token(tokenizer, text: str, index: int) -> int:
    if getattr(tokenizer, "is_fast", False):
        return tokenizer(text, return_offsets_mapping=True)["offset_mapping"][index][0]
    return len(tokenizer.decode(tokenizer(text)["input_ids"][:index], skip_special_tokens=True))


def _position_name(name: str, label: str) -> str:
    upper = str(name).upper()
    if not upper or not upper[0].isalpha() or not all(c.isalnum() or c == "_" for c in upper):
        raise TaskError(f"{label}: position name {name!r} must be letters, digits and _ (starting with a letter)")
    return upper


def _single_tokens(model: "Model", words: Sequence[str]) -> list[str]:
    keep = []
    for word in words:
        try:
            model.to_single_token(word)
            keep.append(word)
        except TokenizationError:
            pass
    return keep


def ioi(model: "Model", n_prompts: int = 16, seed: int = 0, **options) -> Task:
    """Indirect object identification: "When Mary and John went to the store, John gave a drink to" -> " Mary".

    Corrupt: the second mention is the other name (-> " John"); metric logit(IO) - logit(S).
    Named positions S1, IO, S2, END. A template (``interp.templates.ioi_template``) over the
    single-token names, places and objects of the model's tokenizer.
    """
    from interp.templates import _NAMES, _OBJECTS, _PLACES

    names, places, objects = (_single_tokens(model, ws) for ws in (_NAMES, _PLACES, _OBJECTS))
    if len(names) < 2 or not places or not objects:
        raise TaskError(f"the tokenizer of {model.config.name} has too few single-token names/places/objects for IOI")
    return Task.from_template(model, ioi_template(names, places, objects), n_prompts, seed, **options)


def capitals(model: "Model", n_prompts: int = 16, seed: int = 0, **options) -> Task:
    """Factual recall: "The capital of France is" -> " Paris"; corrupt: another country. Named
    position SUBJECT (the country)."""
    from interp.templates import _CAPITALS

    usable = [(c, k) for c, k in _CAPITALS if _single_tokens(model, [" " + c]) and _single_tokens(model, [" " + k])]
    if len(usable) < 2:
        raise TaskError(f"the tokenizer of {model.config.name} has too few single-token countries/capitals")
    return Task.from_template(model, capitals_template(usable), n_prompts, seed, **options)


def greater_than(model: "Model", n_prompts: int = 16, seed: int = 0, **options) -> Task:
    """"The war lasted from the year 1732 to the year 17" -> a larger year.

    Tokenizers that split digits (SmolLM2) are asked for the next digit: answer = first digit + 1,
    wrong answer = first digit - 1. Otherwise two-digit tokens YY+1 vs YY-1. Corrupt start year:
    1701. Named position YY.
    """
    digit_level = len(model.tokenizer("1732", add_special_tokens=False)["input_ids"]) == 4
    return Task.from_template(model, greater_than_template(digit_level), n_prompts, seed, {"digit_level": digit_level},
                              **options)


LANDMARKS = Path(__file__).parent / "data" / "tasks" / "landmarks.jsonl"


def landmarks(model: "Model", n_prompts: int = 16, seed: int = 0, **options) -> Task:
    """Factual recall of different lengths: "The Eiffel Tower is in the city of" -> " Paris", 16
    pairs of 6 to 16 tokens in five sentence frames (a bundled JSONL file, its first ``n_prompts``);
    the corrupt prompt names another landmark of the same length. Named position SUBJ: the
    landmark's last token. The pairs align under SmolLM2's tokenizer (and the random models, which
    use it); another tokenizer may split a landmark differently (then the pair is named)."""
    from interp.task_files import read_task_file

    task = read_task_file(model, LANDMARKS, n_prompts=n_prompts, **options)
    task.name, task.settings = "landmarks", dict(task.settings, n_prompts=len(task), source="landmarks")
    return task


def induction(model: "Model", n_prompts: int = 16, seed: int = 0, half_length: int = 10, break_match: bool = False,
              padding_side: str = "left") -> Task:
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
    settings = {"n_prompts": n_prompts, "seed": seed, "half_length": half_length, "break_match": break_match}
    return Task.from_ids(model, "induction", clean_rows, corrupt_rows, [[a] for a in answers], [[w] for w in wrong], settings,
                         padding_side=padding_side)


def tracr(model: "Model", n_prompts: int = 16, seed: int = 0, **options) -> Task:
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
    return Task.from_pairs(model, f"tracr-{program.name}", pairs, {"n_prompts": n_prompts, "seed": seed}, **options)


def sentiment(model: "Model", n_prompts: int = 16, seed: int = 0, **options) -> Task:
    """A neutral description whose next word judges it: " great" against " terrible" (no corrupt
    prompt: for steering and ablations). Named position THING."""
    from interp.templates import sentiment_template

    if not _single_tokens(model, [" great", " terrible"]):
        raise TaskError(f"the sentiment task needs ' great' and ' terrible' to be single tokens of {model.config.name}")
    return Task.from_template(model, sentiment_template(), n_prompts, seed, **options)


GENERATORS = {"ioi": ioi, "sentiment": sentiment, "capitals": capitals, "greater_than": greater_than,
              "landmarks": landmarks, "induction": induction, "tracr": tracr}


def get_task(model: "Model", name_or_path: str, n_prompts: int = 16, seed: int = 0, *, padding_side: str = "left",
             chat_template: bool = False, fields: dict | None = None) -> Task:
    """A built-in task by name, or a task from a source (``interp.task_files``): a JSONL or CSV
    file of pairs, a folder of them, a template (``.json``), or ``hf:<dataset>[:<split>]``; files
    give their first ``n_prompts`` prompts, templates and built-in tasks draw ``n_prompts``.
    ``fields`` maps this library's field names (clean, corrupt, answer, wrong_answer) to a source's
    column names; ``chat_template`` wraps prompts in the model's chat template."""
    from interp.task_files import read_task_source

    if padding_side not in PADDING_SIDES:
        raise TaskError(f"unknown padding side {padding_side!r}; known: {', '.join(PADDING_SIDES)}")
    if name_or_path in GENERATORS or name_or_path.endswith(".json"):  # prompts drawn, not read: their count is asked
        from interp.resources import require

        require(n_prompts * 4096, f"--n-prompts {n_prompts}", "ask for fewer prompts")
    if name_or_path in GENERATORS:
        if chat_template and name_or_path in ("induction",):
            raise TaskError("--chat-template wraps text prompts; the induction task is random tokens")
        options = {"padding_side": padding_side}
        if name_or_path != "induction":
            options["chat_template"] = chat_template
        return GENERATORS[name_or_path](model, n_prompts=n_prompts, seed=seed, **options)
    return read_task_source(model, name_or_path, n_prompts=n_prompts, seed=seed, padding_side=padding_side,
                            chat_template=chat_template, fields=fields)
