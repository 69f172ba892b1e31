"""Issue 19 item 4: a bundle's weights are checked by SHA-256, not size; eval and serve refuse in one line."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from genba.cli import main as cli_main
from genba.model.bundle import BundleError, load_model, read_manifest, save_bundle
from genba.model.config import get_preset
from genba.model.generalist import Generalist
from genba.model.policy import load_policy
from tests.fixtures import toy_stats


def _bundle(path, specs):
    with torch.device("meta"):
        model = Generalist(get_preset("debug"), specs)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    return save_bundle(path, model, stats=toy_stats(specs), preset="debug")


def _flip(path, n=16):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + n):  # inside the tensor data, past the header
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def bundle(tmp_path, specs):
    return _bundle(tmp_path / "ckpt", specs)


def test_the_manifest_records_the_weights_digest(bundle):
    weights = read_manifest(bundle)["weights"]
    assert weights["sha256"] == hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()


def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(bundle):
    _flip(bundle / "model.safetensors")
    with pytest.raises(BundleError, match=r"model\.safetensors: SHA-256 .* differs"):
        load_model(bundle)
    with pytest.raises(BundleError, match="SHA-256"):
        load_policy(bundle, device="cpu")


def test_a_bundle_without_a_recorded_digest_still_loads(bundle):
    manifest = json.loads((bundle / "checkpoint.json").read_text())
    del manifest["weights"]["sha256"]  # written before digests were recorded
    (bundle / "checkpoint.json").write_text(json.dumps(manifest))
    load_model(bundle)


def test_a_checkpoint_with_the_old_manifest_name_still_loads(bundle):
    from genba.govern.lineage import read_checkpoint_lineage
    from genba.model.bundle import LEGACY_MANIFEST, MANIFEST, manifest_path

    want = read_manifest(bundle)
    (bundle / MANIFEST).rename(bundle / LEGACY_MANIFEST)  # written before issue 18 renamed genba.json
    assert manifest_path(bundle) == bundle / "genba.json" and read_manifest(bundle) == want
    load_model(bundle)
    assert load_policy(bundle, device="cpu") is not None
    assert read_checkpoint_lineage(bundle) == want["lineage"]


def _real_task_bundle(tmp_path):
    from genba.envs.registry import get_task

    spec = get_task("drive/pmsm-current").spec
    return _bundle(tmp_path / "ckpt", {spec.name: spec})


def test_eval_refuses_a_corrupt_checkpoint_in_one_line(tmp_path, capsys):
    ckpt = _real_task_bundle(tmp_path)
    _flip(ckpt / "model.safetensors")
    rc = cli_main(["eval", str(ckpt), "--tasks", "drive/pmsm-current", "--episodes", "1", "--workers", "1",
                   "--no-progress", "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert rc == 2 and "model.safetensors: SHA-256" in err and "Traceback" not in err


def test_serve_refuses_a_corrupt_checkpoint_in_one_line(tmp_path, capsys):
    ckpt = _real_task_bundle(tmp_path)
    _flip(ckpt / "model.safetensors")
    tokens = tmp_path / "tokens.json"
    tokens.write_text("{}")
    rc = cli_main(["serve", "--checkpoint", str(ckpt), "--tokens", str(tokens), "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.safetensors: SHA-256" in err and "Traceback" not in err
