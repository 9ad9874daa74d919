"""A FeatureView's sync user on the online Redis: an ACL user limited to the view's keys and the commands a
materialization sends.

The Job used to mount the online DataStore's connection Secret (the store's ``default`` user: every key of
every tenant, ``FLUSHALL``, ``CONFIG``). It now gets an ACL user of its own (:func:`user_name`, the same
injective name as the view's PostgreSQL role), made by the reconcile with the store's admin connection:

- keys: the view's marker ``fv:{ns}:{view}`` and its entity keys ``fv:{ns}:{view}:*`` (:data:`layout`), no
  Pub/Sub channel;
- commands: :data:`COMMANDS`, what ``materialize()`` sends (``EVAL`` of the write script, whose ``HGET``,
  ``DEL``, ``HSET`` and ``PEXPIREAT`` Redis checks against the same user; ``GET``/``SET`` of the marker;
  ``WAIT`` for the replicas before a run commits) and what the client sends on connecting (``SELECT`` of the
  store's database, ``PING``).
  Anything else is refused with ``NOPERM``, as is any other view's key.

The password reaches Redis only as its SHA-256 (``#<hex>`` in ``ACL SETUSER``): no ``MONITOR`` or slow log
sees it. The user is a runtime one: a Redis restarted without an ACL file (the operator's managed stores have
none) has lost it, persistence or not — :func:`ensure` is called again by the observation timer whenever the
user is missing (:func:`present`), like the lost-data check.

Ownership: Redis users carry no comment. A user of the name whose key patterns are not exactly this view's
is someone else's: :class:`UserConflict`, never altered nor deleted. Store credentials that may not run
``ACL SETUSER`` (an external Redis with a restricted user) raise :class:`NotPermitted`: the view then keeps
using the store's credentials (the reconcile says so in a Warning event, docs/featureview.md says why) —
faking a restriction that is not there would be worse.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis

from mlinfra.engines import pg_roles
from mlinfra.features import layout
from mlinfra.k8s import syncjobs

KIND = "fv"
SECRET_SUFFIX = "sync-online"  # noqa: S105 - a name suffix. Ends no other kind's Secret, nor does any end it.
_MAX_SECRET_NAME = 253
# What materialize() sends (with the script's own commands) and what redis-py sends on connecting.
# (redis-py's CLIENT SETINFO on connecting is not among them: it ignores the refusal, and Redis 7.0 has no
# such subcommand to allow.)
COMMANDS = ("eval", "get", "set", "hget", "hset", "del", "pexpireat", "select", "ping", "wait")


class UserConflict(Exception):
    """A user of the name exists and is not this view's; nothing was changed."""

    def __init__(self, user: str, keys: str) -> None:
        super().__init__(
            f"Redis ACL user {user!r} exists and is not this FeatureView's (its key patterns are {keys or 'none'})"
        )
        self.user = user


class NotPermitted(Exception):
    """The store's credentials may not manage ACL users (or the server has no ACLs)."""


def user_name(namespace: str, view: str) -> str:
    return pg_roles.role_name(namespace, view, KIND)


def secret_name(view: str) -> str:
    """``<view>-sync-online``: the Secret the Job mounts for the online store, when the view has a user."""
    return syncjobs.bounded_name(view, SECRET_SUFFIX, _MAX_SECRET_NAME)


def _glob(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def key_patterns(namespace: str, view: str) -> tuple[str, str]:
    """``~`` patterns of the marker and of the entity keys."""
    return (f"~{_glob(layout.marker_key(namespace, view))}", f"~{_glob(layout.key_prefix(namespace, view))}*")


def rules(namespace: str, view: str, password: str) -> list[str]:
    digest = hashlib.sha256(password.encode()).hexdigest()
    return [
        "reset",  # off, no password, no keys, no channels, no commands: then exactly these
        "on",
        f"#{digest}",
        *key_patterns(namespace, view),
        "resetchannels",
        "-@all",
        *(f"+{c}" for c in COMMANDS),
    ]


def _getuser(admin: redis.Redis, name: str) -> dict[str, Any] | None:
    try:
        found = admin.acl_getuser(name)
    except redis.exceptions.NoPermissionError as exc:
        raise NotPermitted(f"the store's credentials may not read ACL users: {exc}") from None
    except redis.exceptions.ResponseError as exc:
        raise NotPermitted(f"the server has no ACL users (Redis before 6?): {exc}") from None
    return dict(found) if found else None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    return str(value or "")


def _ours(found: dict[str, Any], namespace: str, view: str) -> tuple[bool, str]:
    keys = _text(found.get("keys"))
    return sorted(keys.split()) == sorted(key_patterns(namespace, view)), keys


def _as_wanted(found: dict[str, Any], password: str) -> bool:
    """The user as :func:`rules` makes it: enabled, this password only, these commands only, no channel."""
    return (
        "on" in _text(found.get("flags")).split()
        and _text(found.get("passwords")).split() == [hashlib.sha256(password.encode()).hexdigest()]
        and sorted(_text(found.get("commands")).split()) == sorted(f"+{c}" for c in COMMANDS)
        and _text(found.get("categories")).split() == ["-@all"]
        and not _text(found.get("channels")).split()
        and not found.get("selectors")
    )


def present(admin: redis.Redis, namespace: str, view: str) -> bool:
    """Whether the view's user exists on this server (a restart without an ACL file loses it)."""
    return _getuser(admin, user_name(namespace, view)) is not None


def ensure(admin: redis.Redis, namespace: str, view: str, password: str) -> str:
    """Create or reset the view's user (its rules exactly :func:`rules`); its name. ``admin``: a client with
    the store's credentials. Raises UserConflict (nothing changed) or NotPermitted."""
    name = user_name(namespace, view)
    found = _getuser(admin, name)
    if found is not None:
        ours, keys = _ours(found, namespace, view)
        if not ours:
            raise UserConflict(name, keys)
        if _as_wanted(found, password):
            return name  # nothing to change (the drift timer comes every few minutes)
    try:
        admin.execute_command("ACL", "SETUSER", name, *rules(namespace, view, password))  # type: ignore[no-untyped-call]
    except redis.exceptions.NoPermissionError as exc:
        raise NotPermitted(f"the store's credentials may not run ACL SETUSER: {exc}") from None
    return name


def delete(admin: redis.Redis, namespace: str, view: str) -> bool:
    """Delete the view's user if it is the view's (key patterns); True when deleted."""
    name = user_name(namespace, view)
    found = _getuser(admin, name)
    if found is None or not _ours(found, namespace, view)[0]:
        return False
    return bool(admin.acl_deluser(name))
