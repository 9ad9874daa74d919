"""What a PostgreSQL store's backups and WAL archive can restore, as the DataStore's status shows it:
``firstRecoverabilityPoint`` (the end of the oldest complete base backup), ``lastRecoverabilityPoint`` (the
latest archived mark reachable from a base backup without a gap) and ``walGaps``.

:func:`compute` is pure (base backups' metadata, archived names, history files' text); :func:`read` lists the
target (manifests, WAL names) and fetches only the timeline history files, which are tiny: the archive's
segments are never downloaded for this.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlinfra.backup import catalog, pg_wal
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.backup.target import Target

MAX_GAPS = 10  # in the status: more is "the archive is broken", and the count says how broken


def _iso(when: datetime.datetime | None) -> str | None:
    return when.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z") if when else None


def postgres_bases(manifests: Iterable[catalog.Manifest], store_uid: str | None = None) -> list[dict[str, Any]]:
    """The metadata of complete PostgreSQL base backups (what ``take_base`` returned), of ``store_uid`` only
    when given (a prefix holds one store's, but a manifest says whose it is)."""
    return [
        dict(m.meta)
        for m in manifests
        if m.engine == "postgres"
        and m.meta.get("engine", "postgres") == "postgres"
        and (store_uid is None or m.store.uid == store_uid)
    ]


def compute(
    bases: Sequence[Mapping[str, Any]], names: Iterable[str], histories: Mapping[int, str] | None = None
) -> pg_wal.Recoverability:
    return pg_wal.recoverability(bases, names, histories or None)


def to_status(window: pg_wal.Recoverability) -> dict[str, Any]:
    """The DataStore status fields. A point's time is None when no archived mark vouches for one (only a
    restore to the end reaches it); its LSN is always there."""

    def point(p: pg_wal.Point | None) -> dict[str, Any] | None:
        return {"time": _iso(p.time), "lsn": pg_wal.format_lsn(p.lsn)} if p is not None else None

    return {
        "firstRecoverabilityPoint": point(window.first),
        "lastRecoverabilityPoint": point(window.last),
        "walGaps": [
            {"from": g.first_missing, "to": g.last_missing, "count": g.count, "message": g.describe()}
            for g in window.gaps[:MAX_GAPS]
        ],
        "walGapCount": len(window.gaps),
    }


def read(
    target: Target, store_prefix: str, enc_key: EncryptionKey | None, store_uid: str | None = None
) -> pg_wal.Recoverability:
    """Recoverability from what is on ``target`` under ``store_prefix``: its manifests, the names in its
    WAL archive and the text of its history files (fetched and verified; a key is needed when encrypted)."""
    bases = postgres_bases(catalog.list_backups(target, store_prefix), store_uid)
    names = catalog.list_wal(target, store_prefix)
    return compute(bases, names, histories(target, store_prefix, names, enc_key))


def histories(target: Target, store_prefix: str, names: Iterable[str], enc_key: EncryptionKey | None) -> dict[int, str]:
    """The text of the archive's timeline history files among ``names`` (tiny; fetched and verified)."""
    found: dict[int, str] = {}
    for name in names:
        timeline = pg_wal.history_timeline(name)
        if timeline is not None:
            buf = io.BytesIO()
            catalog.get_wal(target, store_prefix, name, buf, enc_key)
            found[timeline] = buf.getvalue().decode()
    return found
