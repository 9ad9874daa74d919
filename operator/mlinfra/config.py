"""The operator's settings: built once by ``mlinfra run`` (flags, then environment) and passed down."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    observe_interval: float = 15.0  # seconds between observations of each store
    drift_interval: float = 300.0  # seconds between re-applies of children (drift correction)
    probe_timeout: float = 5.0
    # Seconds between looks at the members of each store with failover (stores.ha).
    failover_interval: float = 1.0
    max_workers: int = 32  # threads running the (synchronous) handlers at once
    # Seconds without any handler or timer starting, while objects exist, after which /healthz fails.
    stall_timeout: float = 300.0
    endpoint_map: Path | None = None  # development only: see mlinfra.engines.endpoints
    health_port: int = 8080
    metrics_port: int = 9090
    log_format: Literal["json", "plain"] = "json"
    job_image: str = "ghcr.io/mlinfra/mlinfra-operator:0.1.0"  # the image sync Jobs run (the operator's own)
    # Default image per engine for managed stores without spec.managed.image (a mirror, or locally built
    # images); "{version}" is replaced by the store's version. Empty: the engines' public images.
    engine_images: Mapping[str, str] = field(default_factory=dict)
    # The namespace of the operator's own pod (the chart sets it from the downward API); None when the
    # operator runs outside the cluster. Managed stores' NetworkPolicies admit the operator from there only.
    operator_namespace: str | None = None
    # The server-side timeouts of the operator's own PostgreSQL sessions, in seconds (never off: a stuck
    # database must degrade one object, not hold a handler for ever). Sync Jobs have none (their Job's
    # activeDeadlineSeconds bounds them).
    pg_statement_timeout: float = 60.0
    pg_lock_timeout: float = 10.0
    pg_idle_in_transaction_timeout: float = 300.0
    # Seconds between a failed VectorIndex rebuild attempt (a Job) and the next, doubled per failed attempt up
    # to an hour: a rebuild that keeps failing must not recopy the source table every few seconds. Tests
    # shorten it.
    rebuild_backoff: float = 60.0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "observe_interval": float(env.get("MLINFRA_OBSERVE_INTERVAL", cls.observe_interval)),
            "drift_interval": float(env.get("MLINFRA_DRIFT_INTERVAL", cls.drift_interval)),
            "probe_timeout": float(env.get("MLINFRA_PROBE_TIMEOUT", cls.probe_timeout)),
            "failover_interval": float(env.get("MLINFRA_FAILOVER_INTERVAL", cls.failover_interval)),
            "max_workers": int(env.get("MLINFRA_MAX_WORKERS", cls.max_workers)),
            "stall_timeout": float(env.get("MLINFRA_STALL_TIMEOUT", cls.stall_timeout)),
            "endpoint_map": Path(env["MLINFRA_ENDPOINT_MAP"]) if env.get("MLINFRA_ENDPOINT_MAP") else None,
            "log_format": "plain" if env.get("MLINFRA_LOG_FORMAT") == "plain" else "json",
            "job_image": env.get("MLINFRA_JOB_IMAGE", cls.job_image),
            "engine_images": parse_engine_images(env.get("MLINFRA_ENGINE_IMAGES", "")),
            "operator_namespace": env.get("MLINFRA_OPERATOR_NAMESPACE") or None,
            "pg_statement_timeout": seconds(env, "MLINFRA_PG_STATEMENT_TIMEOUT", cls.pg_statement_timeout),
            "pg_lock_timeout": seconds(env, "MLINFRA_PG_LOCK_TIMEOUT", cls.pg_lock_timeout),
            "pg_idle_in_transaction_timeout": seconds(
                env, "MLINFRA_PG_IDLE_IN_TRANSACTION_TIMEOUT", cls.pg_idle_in_transaction_timeout
            ),
            "rebuild_backoff": seconds(env, "MLINFRA_REBUILD_BACKOFF", cls.rebuild_backoff),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


ENGINES = ("redis", "postgres", "neo4j", "qdrant")
# PostgreSQL keeps timeouts in whole milliseconds as a 32-bit int.
_MAX_TIMEOUT = 2_147_483.0


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A timeout setting in seconds: a number > 0 (and within PostgreSQL's range), refused at start-up with
    the variable's name otherwise: 0 would mean "no limit" to the server, which the operator never runs with."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= _MAX_TIMEOUT):  # also NaN and inf
        raise ValueError(f"{name}: {raw!r} is not a number of seconds > 0 and <= {_MAX_TIMEOUT:.0f}")
    return value


def parse_engine_images(value: str) -> dict[str, str]:
    """``MLINFRA_ENGINE_IMAGES``: comma-separated ``engine=image`` pairs, e.g.
    ``redis=mirror.local/redis:{version},postgres=mirror.local/postgres:{version}``. Refused at start-up (a
    clear error, not a silent default) when an engine is unknown or an image is empty."""
    images: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        engine, sep, image = item.partition("=")
        engine, image = engine.strip(), image.strip()
        if not sep or engine not in ENGINES or not image or any(c.isspace() for c in image):
            raise ValueError(
                f"MLINFRA_ENGINE_IMAGES: {item!r} is not <engine>=<image> with engine one of {', '.join(ENGINES)}"
            )
        images[engine] = image
    return images
