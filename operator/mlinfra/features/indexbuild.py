"""The operator's index builds for offline tables too large to index inside a reconcile.

A missing index of a table over ``schema.IN_OPERATOR``'s size takes longer than the operator's statement
timeout to build. It used to be left to the next materialization Job; but building an index needs the table's
ownership, and the Job's role may only read the table (``features.syncrole``). So the operator builds it
itself, in a thread of its own with a connection of its own (the admin connection, no statement timeout,
``schema.IN_BACKGROUND``), and the reconcile goes on at once: no admin credentials leave the operator, no
Job runs DDL, and the table's writers go on (``CREATE INDEX CONCURRENTLY``).

One build per table at a time in this process (and one per table on the server: ``schema.build_indexes``
takes a session advisory lock). An operator that stops during a build leaves an invalid index, which the
next build drops and builds again; the reconcile reports the indexes still missing (``IndexesPending``) until
they are there.
"""

from __future__ import annotations

import logging
import threading

from mlinfra.api import featureview
from mlinfra.engines import connection
from mlinfra.features import layout, schema

APPLICATION_NAME = "mlinfra-operator"
# No statement timeout (a build takes as long as the table needs); a build that must wait for a lock gives
# up after schema.IN_BACKGROUND.lock_timeout. Idle connections are still ended by the server.
TIMEOUTS = connection.PgTimeouts(statement=None, lock=None, idle_in_transaction=300.0)

log = logging.getLogger(__name__)
_lock = threading.Lock()
_running: dict[str, threading.Thread] = {}


def key(info: connection.ConnectionInfo, spec: featureview.FeatureViewSpec, view: str) -> str:
    """The table on its server: ``host:port/database/schema.table``."""
    schema_name, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    return f"{info.endpoint}/{info.database}/{layout.qualified_name(schema_name, table)}"


def start(info: connection.ConnectionInfo, spec: featureview.FeatureViewSpec, view: str) -> threading.Thread | None:
    """Start building the view's missing indexes in the background; the thread, or None when a build of the
    table is already running in this process."""
    where = key(info, spec, view)
    with _lock:
        running = _running.get(where)
        if running is not None and running.is_alive():
            return None
        thread = threading.Thread(
            target=_build, args=(where, info, spec, view), name=f"index build {where}", daemon=True
        )
        _running[where] = thread
    thread.start()
    return thread


def running(where: str) -> bool:
    with _lock:
        thread = _running.get(where)
        return thread is not None and thread.is_alive()


def _build(where: str, info: connection.ConnectionInfo, spec: featureview.FeatureViewSpec, view: str) -> None:
    try:
        with connection.postgres(info, APPLICATION_NAME, timeouts=TIMEOUTS) as conn:
            built, pending, why = schema.build_indexes(conn, spec, view, schema.IN_BACKGROUND)
        if pending:
            log.info("index build of %s: %s still missing: %s", where, ", ".join(pending), why)
        else:
            log.info("index build of %s: built %s", where, ", ".join(built) or "nothing (all there)")
    except Exception as exc:  # a thread's error has nobody to go to: logged, the next reconcile tries again
        log.warning("index build of %s failed: %s: %s", where, type(exc).__name__, (str(exc).splitlines() or [""])[0])
    finally:
        with _lock:
            if _running.get(where) is threading.current_thread():
                del _running[where]
