""""Sync now" for the kinds with sync Jobs: a new value of ``mlinfra.io/sync-requested-at`` starts one Job."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf

from mlinfra.k8s import syncjobs
from mlinfra.stores.status import ProblemError

RequestSync = Callable[[Mapping[str, Any], str, str], str]  # (body, job image, requested-at) -> Job name


def register(registry: kopf.OperatorRegistry, resource: tuple[str, str, str], request_sync: RequestSync,
             job_image: str) -> None:
    @kopf.on.field(*resource, field=("metadata", "annotations", syncjobs.SYNC_REQUESTED_ANNOTATION),
                   registry=registry)
    def sync_now(body: kopf.Body, new: Any, logger: kopf.Logger, **_: Any) -> None:
        if not new:
            return
        try:
            name = request_sync(body, job_image, str(new))
        except ProblemError as exc:
            raise kopf.PermanentError(exc.problem.message) from None
        logger.info("sync requested at %s: Job %s", new, name)
