"""The task registry, its CLI listing, and the seed rule."""

from __future__ import annotations

import pytest

from genba.envs import registry
from genba.envs.seeds import SEED_SPAN, eval_seed, train_seed


def test_unknown_id_names_the_closest_ids():
    with pytest.raises(registry.UnknownTaskError) as e:
        registry.get_task("metaworld/reach-v4")
    assert "metaworld/reach-v3" in str(e.value)
    assert "reach-v4" in str(e.value)


def test_unknown_id_inside_a_selection_fails():
    with pytest.raises(registry.UnknownTaskError, match="pick-plcae"):
        registry.resolve("mt10,metaworld/pick-plcae-v3")
    with pytest.raises(registry.UnknownTaskError):
        registry.resolve("  ")


def test_groups_mt10_inside_mt50():
    groups = registry.groups()
    assert len(groups["mt50"]) == 50 and len(set(groups["mt50"])) == 50
    assert len(groups["mt10"]) == 10
    assert set(groups["mt10"]) <= set(groups["mt50"])
    assert set(groups["mt50"]) <= set(groups["all"])
    assert all(t.startswith("metaworld/") and t.endswith("-v3") for t in groups["mt50"])


def test_resolve_mixes_groups_and_ids_without_duplicates():
    tasks = registry.resolve("mt10,metaworld/reach-v3,metaworld/soccer-v3")
    ids = [t.id for t in tasks]
    assert len(ids) == len(set(ids)) == 11
    assert ids[-1] == "metaworld/soccer-v3"
    assert registry.get_task("reach-v3").id == "metaworld/reach-v3"  # unambiguous bare name


def test_specs_one_per_embodiment():
    specs = registry.specs()
    assert specs["sawyer"].obs_dim == 39 and specs["sawyer"].action_dim == 4
    for t in registry.all_tasks():
        assert specs[t.embodiment] is t.spec or specs[t.embodiment] == t.spec


def test_cli_list_and_bad_group(capsys):
    from genba.cli import main

    assert main(["envs", "list", "--group", "mt10"]) == 0
    out = capsys.readouterr().out
    assert "metaworld/drawer-open-v3" in out and "引き出しを引いて開けてください。" in out
    assert "metaworld/soccer-v3" not in out
    assert main(["envs", "list", "--group", "mt11"]) == 2
    assert "mt10" in capsys.readouterr().err


def test_train_and_eval_seeds_are_deterministic_and_disjoint():
    ids = ["metaworld/reach-v3", "metaworld/push-v3"]
    train = {train_seed(t, k, 0) for t in ids for k in range(500)}
    evals = {eval_seed(t, k, 0) for t in ids for k in range(500)}
    assert all(0 <= s < SEED_SPAN for s in train)
    assert all(SEED_SPAN <= s < 2 * SEED_SPAN for s in evals)
    assert not train & evals
    assert len({train_seed("metaworld/reach-v3", k) for k in range(500)}) == 500
    assert train_seed("metaworld/reach-v3", 7, 3) == train_seed("metaworld/reach-v3", 7, 3)
    assert train_seed("metaworld/reach-v3", 7, 0) != train_seed("metaworld/reach-v3", 7, 1)
    with pytest.raises(ValueError):
        train_seed("metaworld/reach-v3", -1)
