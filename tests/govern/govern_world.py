"""Helpers of the governance tests (imported by conftest.py): a small consortium: three JP members, two JP sites and one US site.

Datasets are tiny plaintext parquet trees written here (not by the data layer),
so these tests exercise governance alone; test_integration.py uses the real
LeRobot writer and reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genba.govern import admin, sites
from genba.govern.access import GovernedAccess
from genba.govern.consortium import Consortium, Member, init_consortium

DATA_FILE = "data/chunk-000/file-000.parquet"
VIDEO_FILE = "videos/observation.images.corner2/chunk-000/file-000.mp4"


def write_plain(root: Path, seed: int, frames: int = 50, video: bytes | None = None) -> Path:
    """A plaintext dataset-shaped tree: meta/info.json plus two parquet files (and ``video`` as VIDEO_FILE)."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({"seed": seed}))
    (root / "data" / "chunk-000").mkdir(parents=True)
    obs = rng.normal(size=(frames, 4)).astype(np.float32)
    table = pa.table({"observation.state": pa.FixedSizeListArray.from_arrays(pa.array(obs.ravel()), 4),
                      "index": pa.array(np.arange(frames))})
    pq.write_table(table, root / DATA_FILE)
    pq.write_table(pa.table({"task_index": [0]}), root / "meta" / "tasks.parquet")
    if video is not None:  # governance treats a video as opaque bytes: any content stands in for an MP4
        (root / VIDEO_FILE).parent.mkdir(parents=True)
        (root / VIDEO_FILE).write_bytes(video)
    return root


@dataclass
class World:
    tmp: Path
    home: Path
    c: Consortium

    def ds(self, name: str) -> Path:
        return self.tmp / "governed" / name

    def claim(self, site: str = "tokyo", **kw) -> dict:
        return sites.issue_claim(self.c, site, **kw)

    def access(self, principal: str, *, site: str = "tokyo", purpose: str = "pretraining", run_id: str = "run-1",
               action: str = "read") -> GovernedAccess:
        return GovernedAccess(self.home, principal, self.claim(site), purpose, run_id, action=action)

    def ingest(self, name: str, owner: str, seed: int, video: bytes | None = None, **kw) -> Path:
        src = write_plain(self.tmp / "plain" / name, seed, video=video)
        kw.setdefault("classification", "confidential")
        kw.setdefault("purposes", ("pretraining", "finetune", "evaluation"))
        admin.ingest(self.c, src, self.ds(name), owner=owner, dataset_id=name, **kw)
        return self.ds(name)

    def last_event(self) -> dict:
        log = admin.audit_log(self.c)
        try:
            return log.entries(log.size() - 1)[0]["event"]
        finally:
            log.close()


@pytest.fixture
def world(tmp_path) -> World:
    home = tmp_path / "home"
    c = init_consortium(home, "test-consortium",
                        [Member("a", "Member A", "JP"), Member("b", "Member B", "JP"), Member("c", "Member C", "JP")],
                        [("tokyo", "JP", "Tokyo DC"), ("osaka", "JP", "Osaka DC"), ("virginia", "US", "US cloud")])
    w = World(tmp_path, home, c)
    w.ingest("a-ds", "a", seed=1)
    w.ingest("b-ds", "b", seed=2)
    return w
