"""What the rules must allow: the owner at home, a granted member on pooled data, evaluation-only access."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from govern_world import DATA_FILE

from genba.govern import admin
from genba.govern.errors import AccessDenied


def _plain(world, name):
    return pq.read_table(world.tmp / "plain" / name / DATA_FILE)


def test_owner_trains_on_own_data_at_a_jp_site(world):
    acc = world.access("a/alice", site="osaka")
    table = acc.read_table(world.ds("a-ds") / DATA_FILE)
    assert table.equals(_plain(world, "a-ds"))
    lin = acc.lineage()
    assert lin["owners"] == ["a"] and lin["site"] == {"id": "osaka", "jurisdiction": "JP"}
    assert set(lin["datasets"][0]["files"]) == {DATA_FILE}
    ev = world.last_event()
    assert (ev["decision"], ev["file"], ev["principal"]) == ("allow", DATA_FILE, "a/alice")


def test_granted_member_trains_on_pooled_data(world):
    admin.grant(world.c, owner="a", grantee="b", dataset="a-ds", purpose="pretraining")
    acc = world.access("b/bob")
    for name in ("a-ds", "b-ds"):
        assert acc.read_table(world.ds(name) / DATA_FILE).equals(_plain(world, name))
    lin = acc.lineage()
    assert lin["owners"] == ["a", "b"]
    assert [d["dataset_id"] for d in lin["datasets"]] == ["a-ds", "b-ds"]
    # the grant is for pretraining only, and other members gain nothing
    with pytest.raises(AccessDenied):
        world.access("b/bob", purpose="finetune").authorize(world.ds("a-ds"))
    with pytest.raises(AccessDenied):
        world.access("c/carol").authorize(world.ds("a-ds"))


def test_evaluation_only_access(world):
    world.ingest("a-eval", "a", seed=5, purposes=("evaluation",))
    admin.grant(world.c, owner="a", grantee="b", dataset="a-eval", purpose="evaluation")
    assert world.access("b/bob", purpose="evaluation").read_table(world.ds("a-eval") / DATA_FILE).num_rows == 50
    for principal in ("b/bob", "a/alice"):  # the manifest allows evaluation only, even to the owner
        with pytest.raises(AccessDenied) as e:
            world.access(principal, purpose="pretraining").authorize(world.ds("a-eval"))
        assert e.value.policy_id == "purpose-not-allowed"


def test_wildcard_grant_then_revoke(world):
    admin.grant(world.c, owner="a", grantee="c", dataset="*", purpose="finetune")
    world.access("c/carol", purpose="finetune").authorize(world.ds("a-ds"))
    assert admin.revoke(world.c, owner="a", grantee="c", dataset="*") == 1
    with pytest.raises(AccessDenied):
        world.access("c/carol", purpose="finetune").authorize(world.ds("a-ds"))


def test_decision_is_cached_per_dataset_not_per_read(world, monkeypatch):
    acc = world.access("a/alice")
    calls = []
    real = acc.engine._evaluate
    monkeypatch.setattr(acc.engine, "_evaluate", lambda req: calls.append(req) or real(req))
    for _ in range(5):
        acc.read_table(world.ds("a-ds") / DATA_FILE)
    acc.read_table(world.ds("a-ds") / "meta" / "tasks.parquet")
    assert len(calls) == 1
    assert np.unique(acc.lineage()["datasets"][0]["audit_entries"]).size == 7  # 1 decision + 6 file reads
