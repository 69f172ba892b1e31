"""Suite-wide fixtures: keep what tests write out of the user's own state directories."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _audit_witness_dir(tmp_path_factory):
    """Audit witnesses (genba.govern.witness) of every test consortium go to a temp dir, not ~/.local/state."""
    old = os.environ.get("GENBA_WITNESS_DIR")
    os.environ["GENBA_WITNESS_DIR"] = str(tmp_path_factory.mktemp("audit-witness"))
    yield
    if old is None:
        os.environ.pop("GENBA_WITNESS_DIR", None)
    else:
        os.environ["GENBA_WITNESS_DIR"] = old
