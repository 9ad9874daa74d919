"""An in-memory Kubernetes API with the methods of ``mlinfra.k8s.objects.Kube``: the fast tier's stand-in.

It keeps what the API server would keep for the operator's calls — uids, resourceVersions that move only on
a change, ``stringData`` folded into base64 ``data``, label selectors, merge patches (status through its
subresource only), 409 on create of an existing name, 404 as ``NotFound`` — and records every write, so a
test can assert what a reconcile wrote and that an idle one wrote nothing. Not a proof that a feature works
against Kubernetes (the e2e and real tiers are): a way to run handlers and reconcile steps in milliseconds.
"""

from __future__ import annotations

import base64
import copy
import itertools
import uuid
from collections.abc import Mapping
from typing import Any

from mlinfra.k8s import objects, patches, resources

Key = tuple[str, str | None, str]


def _merge(old: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(old) if isinstance(old, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


class FakeKube(objects.Kube):
    def __init__(self) -> None:
        self.store: dict[Key, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str | None, str]] = []  # (verb, kind, namespace, name)
        self._versions = itertools.count(1)

    # -- helpers for tests ------------------------------------------------------------------------------
    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as if a user had created it (not recorded as the operator's write)."""
        stored = self._normalise(obj, None)
        self.store[self._key(stored)] = stored
        return copy.deepcopy(stored)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _, _), o in sorted(self.store.items(), key=lambda i: str(i[0])) if k == kind]

    # -- the Kube interface -----------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        raise AssertionError(f"FakeKube does not serve raw calls ({method} {path})")

    def apply(
        self, obj: Mapping[str, Any], field_manager: str = objects.FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        resources.kind_of(dict(obj))
        key = self._key(obj)
        old = self.store.get(key)
        new = self._normalise(obj, old)
        if old is not None:
            spec_like = {k: v for k, v in new.items() if k != "metadata"}
            merged = _merge({k: v for k, v in old.items() if k != "status"}, spec_like)
            server_set = ("uid", "resourceVersion", "creationTimestamp", "generation")
            merged["metadata"] = _merge(
                old["metadata"], {k: v for k, v in new["metadata"].items() if k not in server_set}
            )
            if "status" in old:
                merged["status"] = old["status"]
            new = merged
        return self._write("apply", key, old, new)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        found = self.store.get((kind, namespace, name))
        if found is None:
            raise objects.NotFound(f"{kind} {namespace}/{name}")
        return copy.deepcopy(found)

    def list_(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        out = []
        for (k, ns, _), obj in sorted(self.store.items(), key=lambda i: str(i[0])):
            have = obj["metadata"].get("labels") or {}
            if k == kind and ns == namespace and all(have.get(a) == b for a, b in (labels or {}).items()):
                out.append(copy.deepcopy(obj))
        return out

    def delete(
        self, kind: str, namespace: str | None, name: str, uid: str | None = None, grace_seconds: int | None = None
    ) -> bool:
        key = (kind, namespace, name)
        if key not in self.store:
            return False
        if uid is not None and self.store[key]["metadata"].get("uid") != uid:
            return False  # the API server's 409 on a failed uid precondition, as Kube.delete reports it
        del self.store[key]
        self.writes.append(("delete", kind, namespace, name))
        return True

    def merge_patch(
        self, kind: str, namespace: str | None, name: str, patch: Mapping[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        key = (kind, namespace, name)
        old = self.get(kind, namespace, name)
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != old["metadata"].get("resourceVersion"):
            raise objects.ApiError(409, f"Operation cannot be fulfilled on {kind} {name}: the object has been modified")
        if subresource == "status":
            new = dict(old, status=_merge(old.get("status") or {}, patch.get("status") or {}))
        else:
            new = _merge(old, {k: v for k, v in patch.items() if k != "status"})
        return self._write(f"patch/{subresource}" if subresource else "patch", key, old, new)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        resources.kind_of(dict(obj))
        key = self._key(obj)
        if key in self.store:
            return None
        return self._write("create", key, None, self._normalise(obj, None))

    # -- internals --------------------------------------------------------------------------------------
    @staticmethod
    def _key(obj: Mapping[str, Any]) -> Key:
        meta = obj["metadata"]
        return str(obj["kind"]), meta.get("namespace"), str(meta["name"])

    def _normalise(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
        new = copy.deepcopy(dict(obj))
        if "stringData" in new:  # what the API server does with stringData
            data = dict(new.get("data") or {})
            data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in new.pop("stringData").items()})
            new["data"] = data
        meta = new.setdefault("metadata", {})
        meta.setdefault("uid", (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", f"2026-01-01T00:00:{len(self.store) % 60:02d}Z")
        return new

    def _write(self, verb: str, key: Key, old: Mapping[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        if old is not None and patches.merge_diff(_strip(old), _strip(new)) == {}:
            return copy.deepcopy(dict(old))  # nothing changed: no new resourceVersion, no write
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        self.store[key] = new
        self.writes.append((verb, *key))
        return copy.deepcopy(new)


def _strip(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out.get("metadata", {}).pop("resourceVersion", None)
    return out
