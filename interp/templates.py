"""Prompt templates: a task written as format strings and lists of fillers.

    {"name": "capitals",
     "clean": "The capital of {C[country]:SUBJECT} is",
     "corrupt": "The capital of {OTHER[country]:SUBJECT} is",
     "answer": " {C[capital]}", "wrong_answer": " {OTHER[capital]}",
     "fillers": {"C": [{"country": "France", "capital": "Paris"}, ...], "OTHER": "C"},
     "distinct": [["C", "OTHER"]]}

* ``clean`` (and ``corrupt``, parallel to it) is one format string or a list of them; each prompt
  uses one, chosen at random. ``corrupt`` may be left out (a task for ablations).
* A field ``{SLOT}`` is filled with a value drawn from ``fillers[SLOT]``: a list of strings, or of
  objects whose fields are read as ``{SLOT[field]}``; a slot whose fillers are another slot's name
  draws from that slot's list. Slots in one ``distinct`` group are drawn together without
  replacement.
* ``{SLOT:NAME}`` names that occurrence's position ``NAME`` in every prompt (the token where its
  filler starts in the clean prompt): ``--positions named`` sweeps over those, in the order of
  ``positions`` if given, and ``END`` (the last token) is always added.

Draws, for a reproducible seed: the distinct groups in order (``random.sample``), then every other
slot in the order of ``fillers`` (``random.choice``), then the format string when there are several
(``random.random``). The built-in IOI, capitals and greater-than tasks are templates
(:data:`BUILT_IN`); ``interp patch --task my_task.json`` reads one from a file.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TemplateError(ValueError):
    """A template that cannot be filled (unknown slot, too few fillers, bad file)."""


_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class PromptTemplate:
    """See the module docstring."""

    name: str
    clean: tuple[str, ...]
    answer: str
    fillers: dict[str, Any]
    corrupt: tuple[str, ...] | None = None
    wrong_answer: str | None = None
    distinct: tuple[tuple[str, ...], ...] = ()
    positions: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.clean:
            raise TemplateError(f"template {self.name!r} has no clean prompt")
        if self.corrupt is not None and len(self.corrupt) != len(self.clean):
            raise TemplateError(f"template {self.name!r} has {len(self.clean)} clean and {len(self.corrupt)} corrupt "
                                "prompts; give one corrupt prompt per clean one")
        used = set()
        for text in self.clean + (self.corrupt or ()) + (self.answer,) + ((self.wrong_answer,) if self.wrong_answer else ()):
            used |= {slot for slot, _ in _fields(text, self.name)}
        missing = sorted(used - set(self.fillers))
        if missing:
            raise TemplateError(f"template {self.name!r} uses slot {missing[0]!r}, which 'fillers' does not give")
        for group in self.distinct:
            unknown = [slot for slot in group if slot not in self.fillers]
            if unknown:
                raise TemplateError(f"template {self.name!r}: distinct group names unknown slot {unknown[0]!r}")
            sizes = {len(self.values(slot)) for slot in group}
            lists = {id(self.values(slot)) for slot in group}
            if len(lists) > 1:
                raise TemplateError(f"template {self.name!r}: the slots of a distinct group must draw from one list "
                                    f"(give {group[1]!r} the fillers {group[0]!r})")
            if min(sizes) < len(group):
                raise TemplateError(f"template {self.name!r}: {len(group)} distinct fillers are drawn for "
                                    f"{', '.join(group)} from a list of {min(sizes)}")

    def values(self, slot: str) -> list:
        """The fillers of ``slot`` (following a reference to another slot's list)."""
        seen = [slot]
        value = self.fillers[slot]
        while isinstance(value, str):
            if value not in self.fillers or value in seen:
                raise TemplateError(f"template {self.name!r}: fillers of {slot!r} name {value!r}, which is not a slot with a list")
            seen.append(value)
            value = self.fillers[value]
        if not isinstance(value, list) or not value:
            raise TemplateError(f"template {self.name!r}: fillers of {slot!r} must be a non-empty list")
        return value

    def draw(self, rng: random.Random) -> tuple[dict[str, Any], int]:
        """One prompt's fillers and the index of its format string (see the module doc's order)."""
        chosen: dict[str, Any] = {}
        for group in self.distinct:
            chosen.update(zip(group, rng.sample(self.values(group[0]), len(group))))
        for slot in self.fillers:
            if slot not in chosen:
                chosen[slot] = rng.choice(self.values(slot))
        variant = int(rng.random() * len(self.clean)) if len(self.clean) > 1 else 0
        return chosen, variant

    def pairs(self, n_prompts: int, seed: int = 0) -> list[dict]:
        """``n_prompts`` task rows (clean, corrupt, answer, wrong_answer, and the character offsets of
        the named positions in the clean prompt under ``char_positions``)."""
        rng = random.Random(seed)
        rows = []
        for _ in range(n_prompts):
            chosen, variant = self.draw(rng)
            clean, marks = fill(self.clean[variant], chosen, self.name)
            row: dict[str, Any] = {"clean": clean, "answer": fill(self.answer, chosen, self.name)[0]}
            if self.corrupt is not None:
                row["corrupt"] = fill(self.corrupt[variant], chosen, self.name)[0]
            if self.wrong_answer is not None:
                row["wrong_answer"] = fill(self.wrong_answer, chosen, self.name)[0]
            order = list(self.positions) + [name for name in marks if name not in self.positions]
            row["char_positions"] = {name: marks[name] for name in order if name in marks}
            rows.append(row)
        return rows

    @classmethod
    def from_dict(cls, data: dict, name: str) -> "PromptTemplate":
        if not isinstance(data, dict):
            raise TemplateError(f"template {name}: expected a JSON object")
        for key in ("clean", "answer", "fillers"):
            if key not in data:
                raise TemplateError(f"template {name} lacks field {key!r}")
        unknown = sorted(set(data) - {"name", "clean", "corrupt", "answer", "wrong_answer", "fillers", "distinct", "positions"})
        if unknown:
            raise TemplateError(f"template {name} has unknown field {unknown[0]!r}")

        def strings(key: str) -> tuple[str, ...] | None:
            value = data.get(key)
            if value is None:
                return None
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TemplateError(f"template {name}: {key!r} must be a string or a list of strings")
            return tuple(value)

        if not isinstance(data["fillers"], dict):
            raise TemplateError(f"template {name}: 'fillers' must map slot names to lists")
        for key in ("answer", "wrong_answer"):
            if key in data and not isinstance(data[key], str):
                raise TemplateError(f"template {name}: {key!r} must be a string")
        return cls(name=str(data.get("name", name)), clean=strings("clean"), corrupt=strings("corrupt"),
                   answer=data["answer"], wrong_answer=data.get("wrong_answer"), fillers=dict(data["fillers"]),
                   distinct=tuple(tuple(group) for group in data.get("distinct", ())),
                   positions=tuple(data.get("positions", ())))

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptTemplate":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TemplateError(f"template file not found: {path}") from None
        except UnicodeDecodeError:
            raise TemplateError(f"{path} is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise TemplateError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_dict(data, path.stem)


def _fields(text: str, name: str) -> list[tuple[str, str]]:
    """(slot, position name) of every field of a format string."""
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise TemplateError(f"template {name}: cannot read {text!r} ({exc})") from None
    found = []
    for _, field_name, spec, _ in parsed:
        if field_name is None:
            continue
        slot = field_name.split("[", 1)[0].split(".", 1)[0]
        if not slot:
            raise TemplateError(f"template {name}: {text!r} has an unnamed field {{}}")
        found.append((slot, spec or ""))
    return found


def fill(text: str, chosen: dict[str, Any], name: str) -> tuple[str, dict[str, int]]:
    """``text`` with its fields filled, and the character offset where each named field starts."""
    out, marks = [], {}
    length = 0
    for literal, field_name, spec, conversion in _FORMATTER.parse(text):
        out.append(literal)
        length += len(literal)
        if field_name is None:
            continue
        try:
            value, _ = _FORMATTER.get_field(field_name, (), chosen)
        except (KeyError, IndexError, TypeError) as exc:
            raise TemplateError(f"template {name}: cannot fill {{{field_name}}} ({type(exc).__name__}: {exc})") from None
        value = str(_FORMATTER.convert_field(value, conversion))
        if spec:
            marks[spec.upper()] = length
        out.append(value)
        length += len(value)
    return "".join(out), marks


# ----------------------------------------------------------------------------- the built-in tasks
_NAMES = [" Mary", " John", " Tom", " James", " Anna", " Paul", " Sarah", " David", " Mark", " Lisa",
          " Peter", " Emma", " Kate", " Mike", " Alice", " Bob", " Jack", " Laura", " Daniel", " Grace"]
_PLACES = [" store", " park", " school", " office", " beach", " market", " station", " garden", " library"]
_OBJECTS = [" drink", " book", " ball", " gift", " key", " letter", " bag", " ring", " hat"]
_CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
             ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("England", "London"),
             ("Greece", "Athens"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
             ("Portugal", "Lisbon"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Norway", "Oslo"),
             ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Sweden", "Stockholm")]


def ioi_template(names=_NAMES, places=_PLACES, objects=_OBJECTS) -> PromptTemplate:
    """Indirect object identification: "When Mary and John went to the store, John gave a drink to"
    -> " Mary"; the corrupt prompt's second mention is the other name (-> " John")."""
    sentence = "When{A} and{B} went to the{PLACE},{S2} gave a{OBJECT} to"
    orders = [("{IO:IO}", "{S:S1}"), ("{S:S1}", "{IO:IO}")]
    clean = tuple(sentence.replace("{A}", a).replace("{B}", b).replace("{S2}", "{S:S2}") for a, b in orders)
    corrupt = tuple(sentence.replace("{A}", a).replace("{B}", b).replace("{S2}", "{IO:S2}") for a, b in orders)
    return PromptTemplate("ioi", clean, "{IO}", {"IO": list(names), "S": "IO", "PLACE": list(places),
                                                  "OBJECT": list(objects)},
                          corrupt=corrupt, wrong_answer="{S}", distinct=(("IO", "S"),), positions=("S1", "IO", "S2", "END"))


def capitals_template(capitals=_CAPITALS) -> PromptTemplate:
    """Factual recall: "The capital of France is" -> " Paris"; the corrupt prompt names another country."""
    records = [{"country": country, "capital": capital} for country, capital in capitals]
    return PromptTemplate("capitals", ("The capital of {C[country]:SUBJECT} is",), " {C[capital]}",
                          {"C": records, "OTHER": "C"}, corrupt=("The capital of {OTHER[country]:SUBJECT} is",),
                          wrong_answer=" {OTHER[capital]}", distinct=(("C", "OTHER"),))


def greater_than_template(digit_level: bool) -> PromptTemplate:
    """"The war lasted from the year 1732 to the year 17" -> a larger year; corrupt start year 1701.
    Tokenizers that split digits are asked for the next digit (answer = first digit + 1, wrong =
    first digit - 1), others for two-digit tokens (YY+1 against YY-1)."""
    years = range(22, 79) if digit_level else range(12, 89)
    records = [{"yy": f"{yy:02d}", "answer": str(yy // 10 + 1) if digit_level else f"{yy + 1:02d}",
                "wrong": str(yy // 10 - 1) if digit_level else f"{yy - 1:02d}"} for yy in years]
    return PromptTemplate("greater_than", ("The war lasted from the year 17{Y[yy]:YY} to the year 17",), "{Y[answer]}",
                          {"Y": records}, corrupt=("The war lasted from the year 1701 to the year 17",),
                          wrong_answer="{Y[wrong]}")


_THINGS = ["the movie", "the new restaurant", "the concert", "the museum", "the play", "the game", "the show",
           "the hotel", "the book", "the exhibition", "the festival", "the lecture"]


def sentiment_template(things=_THINGS) -> PromptTemplate:
    """A neutral description whose next word judges it: answer " great" against " terrible"; no
    corrupt prompt (a task for steering and ablations). Named position THING."""
    clean = ("I watched {THING:THING} yesterday. Honestly, it was", "My friend told me about {THING:THING}. I think it is",
             "We went to {THING:THING} last week, and it was", "Everyone is talking about {THING:THING}. In my opinion it is")
    return PromptTemplate("sentiment", clean, " great", {"THING": list(things)}, wrong_answer=" terrible")
