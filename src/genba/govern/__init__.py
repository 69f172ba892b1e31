"""genba.govern: every read of consortium data is authorized, encrypted, located and audited.

Modules: ``consortium`` (home: members, sites, grants, dataset registry),
``sites`` (signed site claims), ``manifest`` (signed data manifests),
``policy`` (Cedar engine; policies in ``policies/``), ``kms`` and ``encryption``
(per-owner keys, Parquet modular encryption, crypto-shredding), ``merkle`` and
``audit`` (tamper-evident log), ``access`` (the governed open), ``lineage``,
``admin`` (ingest, grant, revoke, shred), ``commands`` (CLI). Imports only
``genba.data`` from genba. See docs/governance.md.
"""
