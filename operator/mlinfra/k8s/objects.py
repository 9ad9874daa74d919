"""Reading and writing Kubernetes objects: server-side apply (so drift is corrected), get, list, delete.

:class:`Kube` is the one client the operator's code holds (through its context, ``mlinfra.context``); plain
``def`` methods on the synchronous client, since Kopf runs sync handlers in its thread pool and the event
loop is never blocked. The fast test tier swaps it for an in-memory one with the same methods.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlinfra.k8s import client, resources

FIELD_MANAGER = "mlinfra-operator"


class NotFound(LookupError):
    """The object does not exist."""


NAMESPACE_TERMINATING = "NamespaceTerminating"


class ApiError(RuntimeError):
    """The API server refused a request; the message is its own (it never contains Secret data).

    ``causes``: the reasons of the Status object's ``details.causes`` (e.g. NamespaceTerminating)."""

    def __init__(self, status: int, message: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.causes = causes

    @property
    def namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted: nothing new may be created in it, ever again."""
        return self.status == 403 and NAMESPACE_TERMINATING in self.causes


def _refusal(raw: bytes) -> tuple[str, tuple[str, ...]]:
    """The message and the cause reasons of the API server's Status answer (or the body's start)."""
    try:
        status = json.loads(raw)
    except ValueError:
        return (raw[:500].decode(errors="replace") if raw else ""), ()
    if not isinstance(status, dict):
        return str(status)[:500], ()
    causes = ((status.get("details") or {}).get("causes")) or []
    return str(status.get("message", "")), tuple(str(c.get("reason", "")) for c in causes if isinstance(c, dict))


class Kube:
    """The Kubernetes API as the operator uses it (the process-wide client of ``k8s.client``)."""

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        api = client.api_client()
        method_, url, headers, body_, _ = api.param_serialize(
            method,
            path,
            query_params=query or [],
            body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        resp = api.call_api(method_, url, header_params=headers, body=body_, _request_timeout=30)
        raw: bytes = resp.read()  # type: ignore[no-untyped-call]
        if resp.status == 404:
            raise NotFound(path)
        if resp.status >= 400:
            message, causes = _refusal(raw)
            raise ApiError(resp.status, message, causes)
        return json.loads(raw) if raw else {}

    def apply(self, obj: Mapping[str, Any], field_manager: str = FIELD_MANAGER, force: bool = True) -> dict[str, Any]:
        """Server-side apply ``obj``; returns the object as stored. ``force`` takes over fields that another
        manager set by hand, which is how drift gets corrected."""
        meta = obj["metadata"]
        kind = resources.kind_of(dict(obj))
        path = kind.path(meta.get("namespace"), meta["name"])
        query = [("fieldManager", field_manager)] + ([("force", "true")] if force else [])
        result = self._call("PATCH", path, body=dict(obj), query=query, content_type="application/apply-patch+yaml")
        return dict(result)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        return dict(self._call("GET", resources.KINDS[kind].path(namespace, name)))

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.get(kind, namespace, name)
        except NotFound:
            return None

    def list_(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        query = []
        if labels:
            query.append(("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(labels.items()))))
        return list(self._call("GET", resources.KINDS[kind].path(namespace), query=query).get("items", []))

    def delete(
        self, kind: str, namespace: str | None, name: str, uid: str | None = None, grace_seconds: int | None = None
    ) -> bool:
        """Delete (background propagation); False when it was already gone, or when ``uid`` is given and the
        object of that name is another one (the precondition failed: nothing deleted). ``grace_seconds``: a
        pod's grace period instead of its own."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self._call("DELETE", resources.KINDS[kind].path(namespace, name), body=body)
        except NotFound:
            return False
        except ApiError as exc:
            if uid is not None and exc.status == 409:
                return False
            raise
        return True

    def merge_patch(
        self, kind: str, namespace: str | None, name: str, patch: Mapping[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        path = resources.KINDS[kind].path(namespace, name) + (f"/{subresource}" if subresource else "")
        return dict(self._call("PATCH", path, body=dict(patch), content_type="application/merge-patch+json"))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create ``obj``; None when it already exists (create-once objects, e.g. generated credentials)."""
        meta = obj["metadata"]
        kind = resources.kind_of(dict(obj))
        try:
            return dict(self._call("POST", kind.path(meta.get("namespace")), body=dict(obj)))
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise


def owner_reference(owner: Mapping[str, Any], controller: bool = True) -> dict[str, Any]:
    """An ownerReference to ``owner`` (a CR body): children are garbage-collected with it."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }
