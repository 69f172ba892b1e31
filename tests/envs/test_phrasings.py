"""The packaged phrasings: every task, enough of them, held out apart from training; bad files refused."""

from __future__ import annotations

import json
import re

import pytest

from genba.data.language import LANGS
from genba.envs import phrasings
from genba.envs.phrasings import PhrasingsError, load, normalize, training_table
from genba.envs.registry import all_tasks
from genba.model.config import get_preset

POLITE = re.compile(r"(ください|ますか|ませんか|ます|お願いします)。?$")


def test_every_task_has_its_phrasings():
    train, heldout = load("train"), load("heldout")
    for t in all_tasks():
        for lg in LANGS:
            assert len(train[t.id][lg]) >= 5 and len(heldout[t.id][lg]) >= 2, (t.id, lg)
    assert set(train) == set(heldout) == {t.id for t in all_tasks()}


def test_heldout_never_seen_in_training():
    train, heldout = load("train"), load("heldout")
    seen = {normalize(p) for ph in train.values() for ps in ph.values() for p in ps}
    seen |= {normalize(t.instruction(lg)) for t in all_tasks() for lg in LANGS}
    for tid, ph in heldout.items():
        for ps in ph.values():
            for p in ps:
                assert p.strip() and normalize(p) not in seen, (tid, p)


def test_no_wording_names_two_tasks_or_repeats():
    owner: dict[str, str] = {}
    for name in ("train", "heldout"):
        for tid, ph in load(name).items():
            for ps in ph.values():
                keys = [normalize(p) for p in ps]
                assert len(set(keys)) == len(keys), tid
                for k in keys:
                    assert owner.setdefault(k, tid) == tid, (k, tid, owner[k])


def test_forms_and_lengths():
    """Short and long English, plain and polite Japanese, per task; every wording fits the small model's
    instruction length (bytes), so none is cut."""
    max_len = get_preset("small").max_lang_len
    for tid, ph in load("train").items():
        words = [len(p.split()) for p in ph["en"]]
        assert min(words) <= 6 and max(words) >= 10, (tid, words)
        polite = [bool(POLITE.search(p)) for p in ph["ja"]]
        assert any(polite) and not all(polite), (tid, ph["ja"])
    for name in ("train", "heldout"):
        for ph in load(name).values():
            assert all(len(p.encode()) <= max_len for ps in ph.values() for p in ps)


def test_training_table_puts_the_sentence_first():
    table = training_table()
    for t in all_tasks():
        for lg in LANGS:
            assert table[t.id][lg][0] == t.instruction(lg) and len(table[t.id][lg]) >= 6


def test_normalize():
    assert normalize("  Push the Door,  shut! ") == normalize("push the door shut")
    assert normalize("ドアを閉める。") == normalize("ドアを閉める") and normalize("ＰＭＳＭ") == "pmsm"


@pytest.mark.parametrize("doc, match", [
    ({"metaworld/nope-v3": {"en": ["x"]}}, "unknown task id 'metaworld/nope-v3'"),
    ({"metaworld/reach-v3": {"en": []}}, "'metaworld/reach-v3' 'en': expected a non-empty list"),
    ({"metaworld/reach-v3": {"en": ["  "]}}, "empty or non-text phrasing"),
    ({"metaworld/reach-v3": {"en": ["Go there.", "go there"]}}, "repeats 'Go there.'"),
    ({"metaworld/reach-v3": {"fr": ["va"]}}, "expected an object with keys"),
    ({}, "non-empty object"),
])
def test_bad_files_name_what_is_wrong(tmp_path, doc, match):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(PhrasingsError, match=match):
        load(path)


def test_a_file_and_its_tasks(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"reach-v3": {"en": ["Go to the dot."]}}), encoding="utf-8")
    ph = load(str(path))
    assert ph == {"metaworld/reach-v3": {"en": ("Go to the dot.",)}}  # a bare name resolves
    assert phrasings.for_tasks(ph, ["metaworld/reach-v3"], "en", "mine") == {"metaworld/reach-v3": ("Go to the dot.",)}
    with pytest.raises(PhrasingsError, match="no phrasings for task 'metaworld/push-v3'"):
        phrasings.for_tasks(ph, ["metaworld/push-v3"], "en", "mine")
    with pytest.raises(PhrasingsError, match="has no 'ja' phrasings"):
        phrasings.for_tasks(ph, ["metaworld/reach-v3"], "ja", "mine")
    with pytest.raises(PhrasingsError, match="no such file"):
        load(tmp_path / "absent.json")
