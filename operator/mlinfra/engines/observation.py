"""What a probe saw on a live database, and how its errors are made safe to publish.

Every engine's ``probe`` returns an :class:`Observation`; the DataStore status (``version``, ``members``,
``replication``, ``capabilities``, the ``Reachable``/``Replicating`` conditions) is computed from it by the
layer above. Observations are values: built once by :meth:`Observation.observed` or
:meth:`Observation.unreachable`, never mutated.

Errors end up in ``status`` and events, which many people can read: :func:`error_message` is the one way an
exception becomes text here, and it removes the password, URL credentials and ``password=`` settings.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Literal
from urllib import parse

from mlinfra.engines import connection

Role = Literal["primary", "replica", "standalone", "peer"]
# streaming: every replica is attached and ready. degraded: some replica is not (or, seen from a replica,
# its link to the primary is down). none: replication possible but no replica attached.
# not-applicable: the engine or edition has no replication (Neo4j Community, Qdrant local mode).
ReplicationState = Literal["streaming", "not-applicable", "none", "degraded"]

MAX_ERROR_LENGTH = 512
REDACTED = "***"


@dataclasses.dataclass(frozen=True)
class MemberObservation:
    """One server of the store: its role, whether it serves, and its lag behind the primary.

    ``lag_bytes``/``lag_seconds`` are None when the engine does not report them (and on the primary itself):
    None means "not measured", never "zero".
    """

    name: str
    role: Role
    ready: bool
    lag_bytes: int | None = None
    lag_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Observation:
    """The result of one probe.

    ``replication`` is None only when the store was not reachable (nothing is known). ``edition`` is set by
    engines that have editions (Neo4j). ``notes`` carry honest one-line statements a status message may
    show, e.g. why replication is not applicable.
    """

    reachable: bool
    version: str | None = None
    members: list[MemberObservation] = dataclasses.field(default_factory=list)
    replication: ReplicationState | None = None
    max_lag_bytes: int | None = None
    max_lag_seconds: float | None = None
    capabilities: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    edition: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def observed(
        cls,
        *,
        version: str | None,
        members: Sequence[MemberObservation],
        replication: ReplicationState,
        capabilities: Iterable[str] = (),
        edition: str | None = None,
        notes: Iterable[str] = (),
    ) -> Observation:
        """A reachable store; the maximum lags are computed from the members that report one."""
        lag_bytes = [m.lag_bytes for m in members if m.lag_bytes is not None]
        lag_seconds = [m.lag_seconds for m in members if m.lag_seconds is not None]
        return cls(
            reachable=True,
            version=version,
            members=list(members),
            replication=replication,
            max_lag_bytes=max(lag_bytes) if lag_bytes else None,
            max_lag_seconds=max(lag_seconds) if lag_seconds else None,
            capabilities=sorted(set(capabilities)),
            edition=edition,
            notes=list(notes),
        )

    @classmethod
    def unreachable(cls, error: str) -> Observation:
        """A store that did not answer (or refused us); ``error`` must already be scrubbed."""
        return cls(reachable=False, error=error)

    @property
    def ready_members(self) -> int:
        return sum(1 for m in self.members if m.ready)

    @property
    def replicas(self) -> list[MemberObservation]:
        return [m for m in self.members if m.role == "replica"]


def replication_state(replicas: Sequence[MemberObservation]) -> ReplicationState:
    """Seen from a primary: ``none`` without replicas, ``streaming`` when all are ready, else ``degraded``."""
    if not replicas:
        return "none"
    return "streaming" if all(m.ready for m in replicas) else "degraded"


# scheme://user:password@  ->  scheme://user:***@
_URL_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@\s]*@")
# password=secret, password='se cret', "api_key": "secret" (libpq conninfo, configs, reprs)
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|api[_-]?key|requirepass|masterauth)\b['\"]?)"
    r"(?P<sep>\s*[=:]\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s,;)}\]]+)",
    re.IGNORECASE,
)


def scrub(text: str, *secrets: str) -> str:
    """``text`` without the given secrets (also URL-encoded), URL credentials and ``password=`` values."""
    forms = {
        form
        for secret in secrets
        if secret
        for form in (secret, parse.quote(secret, safe=""), parse.quote_plus(secret))
    }
    for form in sorted(forms, key=len, reverse=True):  # longest first: one secret may contain another
        text = text.replace(form, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{REDACTED}", text)


def error_message(exc: BaseException, conn: connection.ConnectionInfo | None, *secrets: str) -> str:
    """One scrubbed line describing ``exc``: its type and message, without the password or any DSN secret.

    ``conn``'s password is removed, and so are ``secrets`` (e.g. a DSN built for the driver); URL
    credentials and ``password=`` values are removed whatever they are. The result is bounded to
    :data:`MAX_ERROR_LENGTH` characters, so it fits a condition message.
    """
    detail = " ".join(str(exc).split()) or repr(exc)
    password = conn.password if conn is not None else ""
    text = scrub(f"{type(exc).__name__}: {detail}", password, *secrets)
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 1] + "…"
    return text
