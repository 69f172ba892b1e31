"""Instructions as people say them: phrasings of every task, for training and held out.

Each registered task has one canonical sentence per language (``Task.instruction``).
``genba/envs/instructions/train.json`` adds at least five more per language, short
and long English, plain and polite Japanese; ``heldout.json`` at least two per
language that no training run sees, so an evaluation on them measures wordings
the model has never read (docs/concepts.md#phrasings). Both files have the shape
``{task_id: {"en": [...], "ja": [...]}}``, the shape ``genba eval --instructions FILE``
takes too.

:func:`load` reads a packaged set by name (``train``, ``heldout``) or any such file
and validates it: every id registered, every list non-empty, no empty or duplicate
phrasing (compared after :func:`normalize`: case, width, whitespace, punctuation).
The packaged sets are checked against each other as well: every task in both, none
of the held-out phrasings equal to a training one or to a canonical sentence.
:func:`training_table` is what the trainer hands the data layer (which may not
import this module): per task id and language, the canonical sentence first, then
the training phrasings.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

from genba.data.language import LANGS
from genba.envs import registry
from genba.errors import UserError

#: The packaged sets, by name.
SETS: dict[str, Path] = {name: Path(__file__).parent / "instructions" / f"{name}.json"
                         for name in ("train", "heldout")}
#: Phrasings a packaged set holds per task and language, at least.
MIN_PER_LANG = {"train": 5, "heldout": 2}

Phrasings = dict[str, dict[str, tuple[str, ...]]]  # task id -> lang -> phrasings


class PhrasingsError(UserError, ValueError):
    """A phrasings file that cannot be used; the message names the file, the task and the phrasing."""


def normalize(text: str) -> str:
    """The form two phrasings are compared in: NFKC, case-folded, punctuation dropped, spaces collapsed."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in t)
    return re.sub(r"\s+", " ", t).strip()


def load(source: str | Path = "train") -> Phrasings:
    """A phrasings set: a packaged name (``train``, ``heldout``) or a JSON file, validated."""
    name = str(source)
    if name in SETS:
        return _packaged(name)
    path = Path(source)
    if not path.is_file():
        raise PhrasingsError(f"instructions {name!r}: no such file, and not a packaged set ({', '.join(SETS)})")
    return _read(path)


def training_table() -> Phrasings:
    """Task id -> lang -> (canonical sentence, *training phrasings): what the training sampler draws from."""
    train = load("train")
    return {t.id: {lg: (t.instruction(lg), *train[t.id][lg]) for lg in LANGS} for t in registry.all_tasks()}


def for_tasks(phrasings: Phrasings, task_ids: list[str] | tuple[str, ...], lang: str, where: str) -> dict:
    """Task id -> the phrasings of ``lang`` for each of ``task_ids``; a task or language missing is an error."""
    out = {}
    for tid in task_ids:
        if tid not in phrasings:
            raise PhrasingsError(f"instructions {where}: no phrasings for task {tid!r}")
        if not phrasings[tid].get(lang):
            raise PhrasingsError(f"instructions {where}: task {tid!r} has no {lang!r} phrasings")
        out[tid] = phrasings[tid][lang]
    return out


@functools.cache
def _packaged(name: str) -> Phrasings:
    """A packaged set, checked whole: every task, enough phrasings, and held-out apart from training."""
    sets = {n: _read(p) for n, p in SETS.items()}
    ids = [t.id for t in registry.all_tasks()]
    for n, ph in sets.items():
        missing = [i for i in ids if i not in ph]
        if missing:
            raise PhrasingsError(f"instructions {n}.json: no phrasings for tasks {missing}")
        for tid in ids:
            for lg in LANGS:
                if len(ph[tid].get(lg, ())) < MIN_PER_LANG[n]:
                    raise PhrasingsError(f"instructions {n}.json: task {tid!r} has fewer than "
                                         f"{MIN_PER_LANG[n]} {lg!r} phrasings")
    _check_apart(sets["train"], sets["heldout"])
    return sets[name]


def _check_apart(train: Phrasings, heldout: Phrasings) -> None:
    """No held-out phrasing may equal a training one or a canonical sentence (of any task), nor may a
    phrasing of one task equal another task's: it would not say which goal it means."""
    seen: dict[str, tuple[str, str]] = {}  # normalized -> (set, task id)
    for t in registry.all_tasks():
        for lg in LANGS:
            seen[normalize(t.instruction(lg))] = ("canonical", t.id)
    for set_name, ph in (("train", train), ("heldout", heldout)):
        for tid, langs in ph.items():
            for phrases in langs.values():
                for p in phrases:
                    key = normalize(p)
                    if key in seen and seen[key] != (set_name, tid):
                        other, otid = seen[key]
                        raise PhrasingsError(f"instructions {set_name}.json: task {tid!r} phrasing {p!r} equals "
                                             f"a {other} sentence of task {otid!r} (after normalizing)")
                    seen[key] = (set_name, tid)


def _read(path: Path) -> Phrasings:
    """One file's phrasings: ids registered, languages known, lists non-empty, no empty or repeated phrasing."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PhrasingsError(f"instructions {path}: not a readable JSON file ({e})") from None
    if not isinstance(doc, dict) or not doc:
        raise PhrasingsError(f"instructions {path}: expected a non-empty object {{task_id: {{lang: [...]}}}}")
    out: Phrasings = {}
    for key, langs in doc.items():
        try:
            tid = registry.get_task(key).id
        except registry.UnknownTaskError as e:
            raise PhrasingsError(f"instructions {path}: {e}") from None
        if not isinstance(langs, dict) or not langs or set(langs) - set(LANGS):
            raise PhrasingsError(f"instructions {path}: task {key!r}: expected an object with keys from {LANGS}, "
                                 f"got {langs!r:.80}")
        out[tid] = {lg: _phrases(path, key, lg, v) for lg, v in langs.items()}
    return out


def _phrases(path: Path, task: str, lang: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise PhrasingsError(f"instructions {path}: task {task!r} {lang!r}: expected a non-empty list of phrasings")
    seen: dict[str, str] = {}
    for p in value:
        if not isinstance(p, str) or not normalize(p):
            raise PhrasingsError(f"instructions {path}: task {task!r} {lang!r}: empty or non-text phrasing {p!r}")
        if normalize(p) in seen:
            raise PhrasingsError(f"instructions {path}: task {task!r} {lang!r}: phrasing {p!r} repeats "
                                 f"{seen[normalize(p)]!r} (after normalizing)")
        seen[normalize(p)] = p
    return tuple(value)
