"""Token store: hashed at rest, grants, revocation."""

import json
import os

import pytest

from genba.serve.auth import AuthError, TokenStore, bearer


def test_tokens_hashed_at_rest_and_checked(tmp_path):
    store = TokenStore(tmp_path / "t.json")
    store.add_org("acme", ["pmsm"])
    tok = store.issue("acme", "line 3")  # the secret may itself hold "_": split at most twice
    text = (tmp_path / "t.json").read_text()
    assert tok.split("_", 2)[2] not in text and oct(os.stat(tmp_path / "t.json").st_mode)[-3:] == "600"
    reloaded = TokenStore(tmp_path / "t.json")
    p = reloaded.authenticate(tok)
    assert p.org == "acme" and p.allows("pmsm") and not p.allows("jaco")
    assert reloaded.authenticate(tok[:-1] + ("A" if tok[-1] != "A" else "B")) is None
    assert reloaded.authenticate("garbage") is None and reloaded.authenticate(None) is None
    reloaded.revoke(tok)
    assert TokenStore(tmp_path / "t.json").authenticate(tok) is None
    assert json.loads((tmp_path / "t.json").read_text())["tokens"]


def test_bad_operations_named(tmp_path):
    store = TokenStore(tmp_path / "t.json")
    with pytest.raises(AuthError, match="unknown organization"):
        store.issue("nobody")
    with pytest.raises(AuthError, match="organization name"):
        store.add_org("bad name!", [])
    assert bearer("Bearer abc") == "abc" and bearer("Basic abc") is None and bearer(None) is None


def test_cli_org_session_quota(tmp_path, capsys):
    from genba import cli

    store = str(tmp_path / "t.json")
    assert cli.main(["tokens", "--store", store, "add-org", "acme", "--embodiments", "toy", "--max-sessions", "8"]) == 0
    assert TokenStore(store).orgs["acme"]["max_sessions"] == 8
    assert cli.main(["tokens", "--store", store, "add-org", "acme", "--embodiments", "toy", "--max-sessions", "0"]) == 2
    assert "max_sessions for 'acme' must be a positive integer" in capsys.readouterr().err
