"""Errors of the governance layer: one class per way an access can be refused.

Every refusal is raised BEFORE a byte of dataset content is read (the manifest
and consortium files are metadata, not data). Each error names what it refused
and why, so an operator can act without a traceback.
"""

from __future__ import annotations

from genba.errors import UserError


class GovernanceError(UserError):
    """Base class of every governance refusal (a UserError: ``genba`` prints it without a traceback)."""


class ConsortiumError(GovernanceError):
    """The consortium home is missing, incomplete or malformed."""


class AccessDenied(GovernanceError):
    """The Cedar policy engine refused the request; ``policy_id`` names the policy."""

    def __init__(self, message: str, *, policy_id: str, policy_ids: tuple[str, ...] = ()):
        super().__init__(message)
        self.policy_id = policy_id
        self.policy_ids = policy_ids or (policy_id,)


class SiteClaimError(GovernanceError):
    """A site claim is forged, expired, not yet valid, or names an unknown site."""


class ManifestError(GovernanceError):
    """A manifest is missing, malformed, or its signature does not verify (tampered)."""


class FileHashMismatch(GovernanceError):
    """A dataset file's bytes differ from the sha256 its signed manifest records (swapped file)."""

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


class KeyUnavailable(GovernanceError):
    """The KMS holds no usable key-encryption key for this owner."""


class KeyShredded(KeyUnavailable):
    """The owner's key-encryption key was destroyed (crypto-shredding): its data is unrecoverable."""


class WrongOwnerKey(GovernanceError):
    """A file was presented to a key that is not its owner's, or the key does not open it."""


class AuditIntegrityError(GovernanceError):
    """The audit log fails verification; ``index`` is the first bad entry (None for head-only faults)."""

    def __init__(self, message: str, *, index: int | None, kind: str):
        super().__init__(message)
        self.index = index
        self.kind = kind
