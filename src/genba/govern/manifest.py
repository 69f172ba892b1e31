"""Data manifests: who owns a dataset, where it may live, what it may be used for.

``meta/manifest.json`` holds the manifest body and the registry's Ed25519
signature over it. The body lists the sha256 of every file of the (encrypted)
dataset, so a swapped file or an edited manifest is detected on open, before
any content is read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genba.govern import signing
from genba.govern.consortium import check_id, check_jurisdiction
from genba.govern.errors import ManifestError

MANIFEST_PATH = "meta/manifest.json"
CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
PURPOSES = ("pretraining", "finetune", "evaluation")
FOREVER = 2**53  # "no retention limit"; fits Cedar's Long and JSON numbers


@dataclass(frozen=True)
class Manifest:
    dataset_id: str
    owner: str
    jurisdiction: str
    classification: str
    personal_data: bool
    purposes: tuple[str, ...]
    retain_until: int  # unix seconds
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 hex
    embodiment: str = ""
    created: int = 0
    version: int = 1

    def __post_init__(self):
        check_id("dataset", self.dataset_id)
        check_id("owner", self.owner)
        check_jurisdiction(self.jurisdiction)
        if self.classification not in CLASSIFICATIONS:
            raise ManifestError(f"manifest classification {self.classification!r} is not one of {CLASSIFICATIONS}")
        bad = [p for p in self.purposes if p not in PURPOSES]
        if bad or not self.purposes:
            raise ManifestError(f"manifest purposes {list(self.purposes)!r} must be a non-empty subset of {PURPOSES}")
        if not isinstance(self.personal_data, bool):
            raise ManifestError(f"manifest personal_data must be true or false, got {self.personal_data!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["purposes"] = sorted(self.purposes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        try:
            return cls(**{**d, "purposes": tuple(d["purposes"]), "files": dict(d["files"])})
        except (TypeError, KeyError) as e:
            raise ManifestError(f"manifest is malformed: {e}") from None

    @property
    def digest(self) -> str:
        """sha256 of the canonical body: the manifest's identity in audit entries and lineage."""
        return signing.sha256_hex(signing.canonical_json(self.to_dict()))


def hash_file(path: Path) -> str:
    return signing.sha256_hex(Path(path).read_bytes())


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest itself."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hash_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_PATH}


def write_manifest(root: Path, manifest: Manifest, registry_key) -> Path:
    """Sign ``manifest`` with the registry key and store it in the dataset's meta/."""
    body = manifest.to_dict()
    path = Path(root) / MANIFEST_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"manifest": body, "signature": signing.sign_obj(registry_key, body)}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_manifest(root: Path, registry_public_key: str) -> Manifest:
    """The verified manifest of a dataset; ManifestError if absent, malformed or tampered."""
    path = Path(root) / MANIFEST_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing: dataset {root} is not governed (ingest it with `genba data ingest`)") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    body = doc.get("manifest") if isinstance(doc, dict) else None
    if not signing.verify_obj(registry_public_key, body, (doc or {}).get("signature") or {}):
        raise ManifestError(f"{path} is tampered: its signature does not verify with the consortium registry key")
    return Manifest.from_dict(body)


def retention_from_days(days: int | None, now: float | None = None) -> int:
    if days is None:
        return FOREVER
    if days <= 0:
        raise ManifestError(f"retention must be a positive number of days, got {days}")
    return int((now if now is not None else time.time()) + days * 86400)
