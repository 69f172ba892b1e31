"""The policy server's sessions: one policy state, one shield and one e-stop latch per
(organization, session), with per-organization quotas.

Notable features:

* An e-stop is state of (organization, session), not of a cache entry: a latched session is
  never evicted, and only an authorized reset releases it. (Issue 19: with one LRU table shared
  by all organizations, organization B sending ~1,100 resets with new session names evicted
  A's latched session, and A's next infer came back unlatched with real actions.)
* Quotas: an organization holds at most its quota of sessions (the token store's per-org
  ``max_sessions``, else the server's default). At its quota its own least recently used idle,
  unlatched session makes room; if it has none, 429 naming the quota. The table as a whole
  holds at most ``max_sessions``; when full, again only the caller's own idle unlatched
  sessions may go, else 503. Nothing one organization does evicts another's session.
* A session held by a request in progress is never evicted.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from genba.serve.api import ServeError
from genba.serve.shield import SafetyShield


@dataclass
class Session:
    org: str
    name: str
    state: Any
    embodiment: str | None = None
    shield: SafetyShield | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    estop_reason: str | None = None  # latched while set; pins the session in the table
    users: int = 0  # requests holding the session; it is never evicted while > 0

    @property
    def latched(self) -> bool:
        return self.estop_reason is not None

    def latch(self, reason: str) -> None:
        self.estop_reason = self.estop_reason or reason
        if self.shield is not None:
            self.shield.estop(reason)


class SessionTable:
    """Sessions by organization, least recently used first within each organization."""

    def __init__(self, new_state: Callable[[], Any], max_sessions: int, per_org: int) -> None:
        if max_sessions < 1 or per_org < 1:
            raise ValueError(f"max_sessions ({max_sessions}) and sessions per organization ({per_org}) must be >= 1")
        self.new_state, self.max_sessions, self.per_org = new_state, max_sessions, per_org
        self._orgs: dict[str, OrderedDict[str, Session]] = {}
        self._count = 0
        self.evicted = 0

    def __len__(self) -> int:
        return self._count

    def latched(self) -> int:
        return sum(s.latched for org in self._orgs.values() for s in org.values())

    def get(self, org: str, name: str) -> Session | None:
        return self._orgs.get(org, {}).get(name)

    def quota(self, org_quota: int | None) -> int:
        return min(org_quota or self.per_org, self.max_sessions)

    @contextmanager
    def hold(self, org: str, name: str, *, quota: int | None = None, create: bool = True) -> Iterator[Session | None]:
        """The session (created if ``create``, else None when absent), pinned while held."""
        s = self.get(org, name)
        if s is None:
            if not create:
                yield None
                return
            s = self._create(org, name, self.quota(quota))
        self._orgs[org].move_to_end(name)
        s.users += 1
        try:
            yield s
        finally:
            s.users -= 1

    def _create(self, org: str, name: str, quota: int) -> Session:
        mine = self._orgs.setdefault(org, OrderedDict())
        if len(mine) >= quota and not self._evict_idle(mine):
            raise ServeError(429, f"organization {org!r} has {len(mine)} sessions, its quota ({quota}), all latched "
                                  f"or in use; reuse a session name, or release a latch (POST /v1/estop/reset)")
        if self._count >= self.max_sessions and not self._evict_idle(mine):
            raise ServeError(503, f"session table full (max_sessions={self.max_sessions}) and organization {org!r} "
                                  f"has no idle unlatched session to give up; retry later")
        s = mine[name] = Session(org, name, self.new_state())
        self._count += 1
        return s

    def _evict_idle(self, mine: OrderedDict[str, Session]) -> bool:
        """Drop the organization's least recently used session that is idle and unlatched."""
        for name, s in mine.items():
            if s.users == 0 and not s.latched and not (s.shield is not None and s.shield.latched):
                del mine[name]
                self._count -= 1
                self.evicted += 1
                return True
        return False
