"""Which objects the operator may write: the children it controls, never an object someone else made.

A child names its owner in its controller ``ownerReference``. Before the operator writes a child (server-side
apply with force, create) it reads what is there under that kind and name:

- nothing, or an object whose controller is this owner (same uid): written (force corrects drift);
- an object that was ours, left behind by an earlier life of the same owner — it carries the operator's labels
  for this owner (``app.kubernetes.io/managed-by`` and ``mlinfra.io/<kind>: <name>``) and its only controller,
  if any, is a previous object of the same group, kind and name (another uid: a DataStore re-created after a
  Retain deletion, or while the garbage collector is still removing the old one's children): adopted;
- anything else (a user's Service or Secret of that name, another resource's child): :class:`Conflict`,
  nothing written. The caller reports it; an object is never captured by being written over.

Checking and writing are two requests: an object created by someone else in the instant between them is not
detected (the API server offers no "apply only if absent or mine" precondition).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mlinfra.k8s import objects

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# The value of MANAGED_BY_LABEL on everything the operator makes (engines.names.MANAGED_BY, the sync Jobs'
# labels): spelt again here because the k8s layer does not import engines; a unit test holds them equal.
MANAGED_BY = "mlinfra-operator"
LABEL_PREFIX = "mlinfra.io/"

Verdict = Literal["owned", "adoptable"]


class Conflict(Exception):
    """An object of the child's kind and name exists and is not the owner's to write."""

    def __init__(self, kind: str, name: str, holder: str, owner: Mapping[str, Any]) -> None:
        self.kind, self.name, self.holder = kind, name, holder
        this = f"{owner['kind']} {owner['name']}"
        super().__init__(
            f"{kind} {name} already exists and {holder}; {this} needs that name and left it unchanged: give this "
            f"{owner['kind']} another name, or delete or rename {kind} {name}"
        )


def owner_label(kind: str) -> str:
    """The label naming the owner on its children, e.g. ``mlinfra.io/datastore``."""
    return f"{LABEL_PREFIX}{kind.lower()}"


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference marked ``controller: true`` (Kubernetes allows at most one)."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def is_previous(ref: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """``ref`` points at an earlier object of the owner's group, kind and name (one that no longer exists:
    names are unique, so another uid is another, gone, object)."""
    return (
        _group(str(ref.get("apiVersion", ""))) == _group(str(owner["apiVersion"]))
        and ref.get("kind") == owner["kind"]
        and ref.get("name") == owner["name"]
        and ref.get("uid") != owner["uid"]
    )


def labelled_for(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """``obj`` carries the labels the operator puts on ``owner``'s children."""
    have = obj.get("metadata", {}).get("labels") or {}
    return have.get(MANAGED_BY_LABEL) == MANAGED_BY and have.get(owner_label(owner["kind"])) == owner["name"]


def holder(obj: Mapping[str, Any]) -> str:
    """Who holds ``obj``, for a message: its controller, or that it was made outside this owner."""
    ref = controller_of(obj)
    if ref is None:
        return "was created by someone else (it has no controller)"
    return f"is controlled by {ref.get('kind')} {ref.get('name')}"


def verdict(existing: Mapping[str, Any], owner: Mapping[str, Any]) -> Verdict:
    """Whether ``existing`` is ``owner``'s already or was ours and may be adopted; raises :class:`Conflict`."""
    ref = controller_of(existing)
    if ref is not None and ref.get("uid") == owner["uid"]:
        return "owned"
    if labelled_for(existing, owner) and (ref is None or is_previous(ref, owner)):
        return "adoptable"
    raise Conflict(str(existing.get("kind")), str(existing["metadata"]["name"]), holder(existing), owner)


def declared_owner(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The controller ownerReference a child is written with (every child names one)."""
    ref = controller_of(obj)
    if ref is None:
        raise ValueError(f"{obj.get('kind')} {obj['metadata']['name']} is written without a controller owner")
    return ref


def _existing(kube: objects.Kube, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    meta = obj["metadata"]
    return kube.get_or_none(str(obj["kind"]), meta.get("namespace"), meta["name"])


def _write(kube: objects.Kube, obj: Mapping[str, Any], existing: Mapping[str, Any] | None) -> dict[str, Any]:
    owner = declared_owner(obj)
    if existing is not None and verdict(existing, owner) == "adoptable":
        # Before the apply: a stale controller reference next to ours would make the apply invalid (two
        # controllers) if another field manager wrote it.
        adopt(kube, existing, owner)
    return kube.apply(obj)


def adopt(kube: objects.Kube, existing: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """Make ``owner`` the controller of ``existing`` (which :func:`verdict` found adoptable): the previous
    object's references go, other (non-controller) references stay."""
    meta = existing["metadata"]
    kept = [r for r in meta.get("ownerReferences") or [] if not is_previous(r, owner) and r.get("uid") != owner["uid"]]
    patch = {"metadata": {"ownerReferences": [*kept, dict(owner)]}}
    return kube.merge_patch(str(existing["kind"]), meta.get("namespace"), meta["name"], patch)


def check(kube: objects.Kube, owner: Mapping[str, Any], kind: str, namespace: str | None, name: str) -> None:
    """Raise :class:`Conflict` unless ``kind/name`` is absent, ``owner``'s, or adoptable by it (a child
    written later by other means, e.g. a create-once Secret, checked with the others up front)."""
    existing = kube.get_or_none(kind, namespace, name)
    if existing is not None:
        verdict(existing, owner)


def apply_owned(kube: objects.Kube, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply ``obj`` (with force: drift in the owner's own child is corrected) unless an object of
    its kind and name is someone else's (:class:`Conflict`, nothing written)."""
    return _write(kube, obj, _existing(kube, obj))


@dataclass(frozen=True)
class Claimed:
    """A child checked for writing: what is stored under its name now (None: nothing)."""

    obj: Mapping[str, Any]
    existing: Mapping[str, Any] | None


def claim_all(kube: objects.Kube, objs: Iterable[Mapping[str, Any]]) -> list[Claimed]:
    """Check every one of ``objs`` before any is written (:func:`write_all`): one conflict and none is."""
    claimed = [Claimed(obj, _existing(kube, obj)) for obj in objs]
    for c in claimed:
        if c.existing is not None:
            verdict(c.existing, declared_owner(c.obj))
    return claimed


def write_all(kube: objects.Kube, claimed: Iterable[Claimed]) -> list[dict[str, Any]]:
    return [_write(kube, c.obj, c.existing) for c in claimed]


def apply_all_owned(kube: objects.Kube, objs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`apply_owned` for each of ``objs``, all checked before the first is written."""
    return write_all(kube, claim_all(kube, objs))


def create_owned(kube: objects.Kube, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Create ``obj`` once; when it exists already, the stored object if it is the owner's (adopted if it was
    ours), else :class:`Conflict` (nothing written)."""
    owner = declared_owner(obj)
    meta = obj["metadata"]
    kind, namespace, name = str(obj["kind"]), meta.get("namespace"), meta["name"]
    for _ in range(3):  # created, or found; deleted between the two requests: try again
        created = kube.create(obj)
        if created is not None:
            return created
        existing = kube.get_or_none(kind, namespace, name)
        if existing is not None:
            if verdict(existing, owner) == "adoptable":
                return adopt(kube, existing, owner)
            return existing
    raise objects.ApiError(409, f"{kind} {name} keeps being created and deleted")


def create_retained(kube: objects.Kube, obj: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """Create ``obj`` once, *without* an owner reference: a child that must outlive ``owner`` (a Retain
    deletion policy). The garbage collector deletes whatever names a deleted owner — under foreground deletion
    (Argo CD's prune) before the owner's finalizer runs — so only a child that names no owner survives every
    kind of deletion. It stays ``owner``'s by its labels; an existing object is used if it is ``owner``'s or
    was ours (:func:`verdict`), and then loses its references to ``owner`` or an earlier object of its name;
    anything else is a :class:`Conflict`, unchanged."""
    meta = obj["metadata"]
    if meta.get("ownerReferences"):
        raise ValueError(f"{obj['kind']} {meta['name']} is retained: it is created without owner references")
    kind, namespace, name = str(obj["kind"]), meta.get("namespace"), meta["name"]
    for _ in range(3):
        created = kube.create(obj)
        if created is not None:
            return created
        existing = kube.get_or_none(kind, namespace, name)
        if existing is not None:
            verdict(existing, owner)
            return release(kube, existing, owner)
    raise objects.ApiError(409, f"{kind} {name} keeps being created and deleted")


def release(kube: objects.Kube, existing: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``existing``'s references to ``owner`` and to earlier objects of its name (others stay)."""
    meta = existing["metadata"]
    held = meta.get("ownerReferences") or []
    kept = [r for r in held if not is_previous(r, owner) and r.get("uid") != owner["uid"]]
    if len(kept) == len(held):
        return dict(existing)
    patch = {"metadata": {"ownerReferences": kept or None}}
    return kube.merge_patch(str(existing["kind"]), meta.get("namespace"), meta["name"], patch)


def delete_owned(kube: objects.Kube, owner: Mapping[str, Any], kind: str, namespace: str | None, name: str) -> bool:
    """Delete ``kind/name`` if ``owner`` controls it (an object of that name made by anyone else is left
    alone); False when nothing of the owner's was deleted."""
    existing = kube.get_or_none(kind, namespace, name)
    if existing is None:
        return False
    ref = controller_of(existing)
    if ref is None or ref.get("uid") != owner["uid"]:
        return False
    # The uid precondition: an object re-created under that name since the read is not the one deleted.
    return kube.delete(kind, namespace, name, uid=existing["metadata"].get("uid"))
