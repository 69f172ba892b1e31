"""Lineage: which owners' data, which files, and which audit entries stand behind a checkpoint.

The trainer stores ``access.lineage()`` (or ``merge_lineage`` of several) under
the key ``"lineage"`` of the checkpoint's checkpoint.json. ``verify_lineage`` checks
each cited audit entry against the log with an RFC 6962 inclusion proof, and
that the log still extends the tree head recorded at training time.
"""

from __future__ import annotations

import json
from pathlib import Path

from genba.govern import merkle
from genba.govern.audit import AuditLog
from genba.govern.errors import GovernanceError

LINEAGE_VERSION = 1


def access_lineage(access) -> dict:
    """Lineage record of one GovernedAccess (see access.py)."""
    head = access.log.head()
    datasets = []
    for o in access.opened():
        m = o.manifest
        datasets.append({
            "dataset_id": m.dataset_id, "owner": m.owner, "jurisdiction": m.jurisdiction,
            "classification": m.classification, "embodiment": m.embodiment, "purposes": sorted(m.purposes),
            "manifest_sha256": m.digest, "files": dict(sorted(o.files.items())),
            "audit_entries": list(o.audit_entries)})
    return {
        "version": LINEAGE_VERSION, "run_id": access.run_id, "principal": access.principal,
        "purpose": access.purpose, "site": {"id": access.site.site_id, "jurisdiction": access.site.jurisdiction},
        "owners": sorted({d["owner"] for d in datasets}), "datasets": datasets, "audit_head": head,
    }


def merge_lineage(records: list[dict]) -> dict:
    """One record for a run that opened data through several accesses (e.g. several ranks)."""
    if not records:
        raise GovernanceError("no lineage records to merge")
    by_id: dict[str, dict] = {}
    for r in records:
        for d in r["datasets"]:
            cur = by_id.setdefault(d["dataset_id"], {**d, "files": {}, "audit_entries": []})
            cur["files"].update(d["files"])
            cur["audit_entries"] = sorted(set(cur["audit_entries"]) | set(d["audit_entries"]))
    heads = [r["audit_head"] for r in records if r.get("audit_head")]
    return {**records[0], "owners": sorted({d["owner"] for d in by_id.values()}),
            "datasets": [by_id[k] for k in sorted(by_id)],
            "audit_head": max(heads, key=lambda h: h["tree_size"]) if heads else None}


def read_checkpoint_lineage(checkpoint: str | Path) -> dict:
    """The lineage stored in CHECKPOINT/checkpoint.json (or in that file's path).

    A checkpoint written before the manifest's rename holds ``genba.json``
    instead (``genba.model.bundle.manifest_path``; govern sits below model, so
    the two names are repeated here).
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / ("genba.json" if not (path / "checkpoint.json").is_file()
                       and (path / "genba.json").is_file() else "checkpoint.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GovernanceError(f"{path} does not exist: not a genba checkpoint") from None
    except json.JSONDecodeError as e:
        raise GovernanceError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta.get("lineage"), dict):
        raise GovernanceError(f"{path} records no lineage: the checkpoint was not trained through genba.govern")
    return meta["lineage"]


def verify_lineage(lineage: dict, log: AuditLog) -> list[str]:
    """Problems found checking lineage against the audit log; empty when every entry is proven."""
    problems = []
    head = log.head()
    if head is None or not log.verify_head_signature(head):
        return ["the audit log has no valid signed tree head"]
    old = lineage.get("audit_head")
    if old:
        if not log.verify_head_signature(old):
            problems.append("the tree head recorded in the lineage is not signed by the audit key")
        elif old["tree_size"] > head["tree_size"]:
            problems.append(f"the log shrank: lineage saw {old['tree_size']} entries, the log has {head['tree_size']}")
        elif old["tree_size"]:
            proof = [bytes.fromhex(h) for h in log.consistency_proof(old["tree_size"], head["tree_size"])]
            if not merkle.verify_consistency(old["tree_size"], head["tree_size"], bytes.fromhex(old["root"]),
                                             bytes.fromhex(head["root"]), proof):
                problems.append(f"the log no longer extends the head recorded at training time (size {old['tree_size']})")
    for d in lineage["datasets"]:
        for idx in d["audit_entries"]:
            entries = log.entries(idx, idx + 1)
            if not entries or not log.verify_entry(idx, entries[0], head):
                problems.append(f"audit entry #{idx} of dataset {d['dataset_id']} is not provably in the log")
                continue
            ev = entries[0]["event"]
            if ev.get("dataset") != d["dataset_id"] or ev.get("decision") != "allow" or ev.get("run_id") != lineage["run_id"]:
                problems.append(f"audit entry #{idx} does not record an allowed read of {d['dataset_id']} by this run")
            elif "sha256" in ev and d["files"].get(ev["file"]) != ev["sha256"]:
                problems.append(f"audit entry #{idx} records a different hash for {ev['file']}")
    return problems


def format_lineage(lineage: dict) -> str:
    """Human-readable lineage for `genba lineage`."""
    lines = [f"run {lineage['run_id']} by {lineage['principal']} for {lineage['purpose']} at site "
             f"{lineage['site']['id']} ({lineage['site']['jurisdiction']})",
             f"owners whose data is inside: {', '.join(lineage['owners']) or '(none)'}"]
    for d in lineage["datasets"]:
        lines.append(f"- dataset {d['dataset_id']} (owner {d['owner']}, {d['jurisdiction']}, {d['classification']}, "
                     f"embodiment {d.get('embodiment') or '?'}) manifest {d['manifest_sha256'][:16]}")
        lines += [f"    {rel}  sha256 {sha}" for rel, sha in d["files"].items()]
        lines.append(f"    audit entries: {', '.join(f'#{i}' for i in d['audit_entries'])}")
    head = lineage.get("audit_head")
    if head:
        lines.append(f"audit tree head at training time: size {head['tree_size']} root {head['root'][:16]}")
    return "\n".join(lines)


def model_card(lineage: dict, *, model_name: str, description: str = "") -> str:
    """Markdown model card section stating whose data the model was trained on."""
    rows = "\n".join(f"| {d['dataset_id']} | {d['owner']} | {d['jurisdiction']} | {d['classification']} | "
                     f"{d.get('embodiment') or ''} | `{d['manifest_sha256'][:16]}` |" for d in lineage["datasets"])
    head = lineage.get("audit_head") or {}
    return f"""# Model card: {model_name}

{description}

## Training data
Trained by `{lineage['principal']}` for **{lineage['purpose']}** at site `{lineage['site']['id']}`
({lineage['site']['jurisdiction']}), run `{lineage['run_id']}`.

**Owners whose data is inside this model:** {', '.join(lineage['owners']) or 'none'}.

| dataset | owner | jurisdiction | classification | embodiment | manifest |
|---|---|---|---|---|---|
{rows}

Every file read is recorded in the consortium audit log (tree head at training time: size
{head.get('tree_size', '?')}, root `{str(head.get('root', '?'))[:16]}`); verify with `genba lineage CHECKPOINT --verify`.
"""
