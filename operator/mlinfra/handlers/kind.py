"""The one shape of every kind's handlers: Kopf wiring around a package's ``reconcile`` and ``observe``.

For each kind: reconcile on create/update/resume, then observe, and write status; observe again on a timer
once this generation has been reconciled; an optional drift timer (re-apply), "sync now" and deletion.
Every handler records activity for the liveness probe and reconcile metrics; a Problem becomes the kind's
problem status, a Warning event and Kopf's retry policy (stalled: not retried unless it asks to be
rechecked). One reconcile or observation of an object runs at a time: a timer tick during a long reconcile
(a rebuild) would otherwise overwrite its progress with what it sees of the old state.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from mlinfra import metrics, problems
from mlinfra.api import base
from mlinfra.context import Context, Obj
from mlinfra.handlers import startup, statuswrite
from mlinfra.k8s import conditions, objects, syncjobs
from mlinfra.problems import Problem, ProblemError


@dataclass(frozen=True)
class Kind:
    """What a kind's package provides; its handler file builds one of these and calls :func:`register`."""

    model: type[base.Resource]
    owned: tuple[str, ...]  # the status fields the kind writes (others' fields are left alone)
    reconcile: Callable[[Context, Obj[Any]], None]  # raises ProblemError
    observe: Callable[[Context, Obj[Any]], Mapping[str, Any]]  # the new status; raises ProblemError
    problem_status: Callable[[Mapping[str, Any], Problem], Mapping[str, Any]]  # body, problem -> status
    forget: Callable[[str, str], None]  # (namespace, name): drop the object's metrics when it is deleted
    delete: Callable[[Context, Obj[Any]], None] | None = None  # what garbage collection would not decide
    request_sync: Callable[[Context, Obj[Any], str], str] | None = None  # requested-at -> Job name
    retry_delay: float = 15.0
    drift_timer: bool = False  # re-apply every settings.drift_interval (children edited by hand)
    # Every settings.failover_interval, for the objects ``watch_when`` (the raw body) admits: a quick look that
    # acts at once (DataStore failover). It never holds the object's lock: a slow observation must not delay it.
    watch: Callable[[Context, Obj[Any]], object] | None = None
    watch_when: Callable[[Mapping[str, Any]], bool] | None = None
    # Requests made by setting an annotation (a user, the CLI, an Argo CD action): key -> action(ctx, obj, value),
    # which returns what it did or raises ProblemError with why not. The outcome replaces the request in
    # ``<key>-result`` (JSON: request, outcome done/refused/failed, message, at). Serialised with ``watch``.
    actions: Mapping[str, Callable[[Context, Obj[Any], str], str]] = field(default_factory=dict)

    @property
    def controller(self) -> str:
        return self.model.crd_info.kind.lower()


class _Reporter:
    """Progress of one handler run, posted as it happens."""

    def __init__(self, ctx: Context, kind: Kind, body: kopf.Body) -> None:
        self.ctx, self.kind, self.body = ctx, kind, body

    def event(self, reason: str, message: str) -> None:
        statuswrite.announce(self.body, reason, message)

    def warning(self, reason: str, message: str) -> None:
        kopf.warn(self.body, reason=reason, message=message)

    def status_now(self, new: Mapping[str, Any]) -> None:
        statuswrite.write_now(self.ctx.kube, self.body, new, self.kind.owned)


def _lock(memo: Any) -> threading.Lock:
    lock: threading.Lock | None = getattr(memo, "mlinfra_lock", None)
    if lock is None:
        lock = memo.mlinfra_lock = threading.Lock()
    return lock


_memo_guard = threading.Lock()


def _watch_lock(memo: Any) -> threading.Lock:
    """The object's lock between its watch ticks and its annotation actions (never the reconcile's: a slow
    reconcile or observation must not hold up a failover)."""
    with _memo_guard:
        lock: threading.Lock | None = getattr(memo, "mlinfra_watch_lock", None)
        if lock is None:
            lock = memo.mlinfra_watch_lock = threading.Lock()
        return lock


@contextlib.contextmanager
def _unless_busy(memo: Any) -> Iterator[bool]:
    """For timers: True (and the object's lock held) unless a reconcile of it is running."""
    lock = _lock(memo)
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


def _register_action(
    registry: kopf.OperatorRegistry,
    ctx: Context,
    kind: Kind,
    resource: tuple[str, str, str],
    handler: str,
    key: str,
    action: Callable[[Context, Obj[Any], str], str],
) -> None:
    @kopf.on.field(*resource, id=handler, field=("metadata", "annotations", key), registry=registry)
    def act(body: kopf.Body, new: Any, memo: Any, logger: kopf.Logger, **_: Any) -> None:
        if not new:
            return
        obj = Obj(body, problems.parse(kind.model, body), _Reporter(ctx, kind, body))
        with _watch_lock(memo):
            try:
                outcome, message = "done", action(ctx, obj, str(new))
            except ProblemError as exc:
                outcome, message = "refused", exc.problem.message
                obj.report.warning(exc.problem.reason, message)
            except (TimeoutError, RuntimeError) as exc:
                outcome, message = "failed", str(exc)
                obj.report.warning("ActionFailed", f"{key}={new}: {message}")
        logger.info("%s=%s: %s: %s", key, new, outcome, message)
        result = json.dumps({"request": str(new), "outcome": outcome, "message": message, "at": conditions.now()})
        meta = body["metadata"]
        ctx.kube.merge_patch(
            kind.model.crd_info.kind,
            meta["namespace"],
            meta["name"],
            {"metadata": {"annotations": {key: None, f"{key}-result": result}}},
        )


# What a reconcile or an observation may meet besides the Problems it raises: a call that missed its deadline,
# the API server refusing a rendered child as invalid (422), and a child refused because the namespace is
# being deleted (403 NamespaceTerminating); other API errors are retried by Kopf.
_FAILURES = (ProblemError, TimeoutError, objects.ApiError)


def _problem_of(exc: BaseException) -> Problem:
    """A Problem as raised, a call that missed its deadline (a stuck store degrades this object only), or a
    child Kubernetes refused."""
    if isinstance(exc, ProblemError):
        return exc.problem
    if isinstance(exc, objects.ApiError):
        if exc.namespace_terminating:
            return problems.namespace_terminating(exc)
        if exc.status != 422:
            raise exc
        return problems.refused_by_kubernetes(exc)
    assert isinstance(exc, TimeoutError)
    return problems.deadline_exceeded(exc)


def register(registry: kopf.OperatorRegistry, ctx: Context, kind: Kind) -> None:
    resource = (base.GROUP, base.VERSION, kind.model.crd_info.plural)
    settings = ctx.settings

    def obj_of(body: kopf.Body) -> Obj[Any]:
        return Obj(body, problems.parse(kind.model, body), _Reporter(ctx, kind, body))

    def observe_into(body: kopf.Body, patch: kopf.Patch, obj: Obj[Any]) -> None:
        statuswrite.write_status(body, patch, kind.observe(ctx, obj), kind.owned)

    # Handler ids exactly as the per-kind handler files named them before this shape (Kopf's default id is
    # the function's qualified name): Kopf keys its progress annotations by them, so objects caught
    # mid-retry by an upgrade carry on where they were.
    def handler_id(name: str) -> str:
        return f"register.<locals>.{name}"

    reconcile_id, observe_id, delete_id = (
        handler_id(f"{verb}_{kind.controller}") for verb in ("reconcile", "observe", "delete")
    )

    @kopf.on.resume(*resource, id=reconcile_id, registry=registry)
    @kopf.on.create(*resource, id=reconcile_id, registry=registry)
    @kopf.on.update(*resource, id=reconcile_id, field="spec", registry=registry)
    def reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int = 0, **_: Any) -> None:
        startup.touch()
        with _lock(memo), metrics.reconciling(kind.controller):
            try:
                obj = obj_of(body)
                kind.reconcile(ctx, obj)
                observe_into(body, patch, obj)
            except _FAILURES as exc:
                problem = _problem_of(exc)
                memo.mlinfra_reconciled = None
                statuswrite.fail(
                    body, patch, problem, kind.problem_status(body, problem), kind.owned, kind.retry_delay, retry
                )
            memo.mlinfra_reconciled = body["metadata"].get("generation")

    @kopf.timer(
        *resource,
        id=observe_id,
        interval=settings.observe_interval,
        initial_delay=settings.observe_interval,
        registry=registry,
    )
    def observe(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
        startup.touch()
        # A generation the reconcile handler has not brought about yet (or refused) is its to report.
        if getattr(memo, "mlinfra_reconciled", None) != body["metadata"].get("generation"):
            return
        with _unless_busy(memo) as free:
            if not free:
                return  # a reconcile (perhaps a rebuild) is running: it writes status when done
            try:
                observe_into(body, patch, obj_of(body))
            except _FAILURES as exc:
                # A store went away, is unhealthy or stuck: say so (the reconcile handler retries the rest).
                statuswrite.write_status(body, patch, kind.problem_status(body, _problem_of(exc)), kind.owned)

    if kind.drift_timer:

        @kopf.timer(
            *resource,
            id=handler_id("correct_drift"),
            interval=settings.drift_interval,
            initial_delay=settings.drift_interval,
            registry=registry,
        )
        def correct_drift(body: kopf.Body, memo: Any, **_: Any) -> None:
            # Server-side apply of unchanged children is a no-op for the API server (no write, no new
            # resourceVersion); children edited by hand are put back.
            if getattr(memo, "mlinfra_reconciled", None) != body["metadata"].get("generation"):
                return
            with _unless_busy(memo) as free, contextlib.suppress(ProblemError, TimeoutError):
                if free:
                    kind.reconcile(ctx, obj_of(body))

    if kind.watch is not None:
        watch_fn, admits = kind.watch, kind.watch_when or (lambda _body: True)

        @kopf.timer(
            *resource,
            id=handler_id("watch"),
            interval=settings.failover_interval,
            initial_delay=settings.failover_interval,
            when=lambda body, **_: admits(body),
            registry=registry,
        )
        def watch(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
            if getattr(memo, "mlinfra_reconciled", None) is None:
                return  # not reconciled since the operator started: the reconcile comes first
            with _watch_lock(memo):
                try:
                    watch_fn(ctx, obj_of(body))
                except (*_FAILURES, RuntimeError) as exc:
                    # One tick lost: the next looks again (an unreachable member is a fact, not an error).
                    logger.warning("watch of %s: %s", body["metadata"]["name"], exc)

    for key, action in kind.actions.items():
        _register_action(registry, ctx, kind, resource, handler_id(f"action_{key.rpartition('/')[2]}"), key, action)

    if kind.request_sync is not None:
        request_sync = kind.request_sync

        @kopf.on.field(
            *resource,
            id=handler_id("sync_now"),
            field=("metadata", "annotations", syncjobs.SYNC_REQUESTED_ANNOTATION),
            registry=registry,
        )
        def sync_now(body: kopf.Body, new: Any, logger: kopf.Logger, **_: Any) -> None:
            if not new:
                return
            try:
                name = request_sync(ctx, obj_of(body), str(new))
            except ProblemError as exc:
                raise kopf.PermanentError(exc.problem.message) from None
            logger.info("sync requested at %s: Job %s", new, name)

    @kopf.on.delete(*resource, id=delete_id, registry=registry)
    def delete(body: kopf.Body, **_: Any) -> None:
        startup.touch()
        if kind.delete is not None:
            with contextlib.suppress(ProblemError):  # an invalid spec never created anything
                kind.delete(ctx, obj_of(body))
        kind.forget(body["metadata"]["namespace"], body["metadata"]["name"])
