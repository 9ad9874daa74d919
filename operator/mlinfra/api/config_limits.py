"""The numeric limits of the engine settings a managed DataStore may set (``spec.managed.config``).

The CRD's rules check the shape of each value (``datastore.CONFIG_VALUES``); a value of the right shape can
still be out of the engine's range (``shared_buffers: 8kB``, ``checkpoint_timeout: 5s``,
``slowlog-log-slower-than: -2``), and the engine then refuses to start: the pods crash-loop and only a spec
change fixes it. The units make these limits more than a CEL rule can say within the API server's cost
budget, so the model checks them (the operator reports ``InvalidSpec`` naming the setting and its range
before it renders anything). The limits are the engines' own (PostgreSQL's are its ``pg_settings``
``min_val``/``max_val``, which the integration tier compares with these).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

_INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Limit:
    """A setting's range in the engine's unit for it."""

    parse: Callable[[str], float]  # the written value in ``unit``
    minimum: float
    maximum: float
    unit: str
    why: str = ""  # when the engine's reason is not obvious from the range

    def refusal(self, key: str, value: str) -> str | None:
        amount = self.parse(value)
        if self.minimum <= amount <= self.maximum:
            return None
        extra = f" ({self.why})" if self.why else ""
        return (
            f"spec.managed.config[{key}] is {value!r}, which is {_number(amount)} {self.unit}: the engine takes "
            f"{_number(self.minimum)} to {_number(self.maximum)} {self.unit}{extra}"
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- Redis: bytes with its own multipliers (k = 1000, kb = 1024) ----------------------------------------

_REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def _redis_bytes(value: str) -> float:
    number, unit = re.fullmatch(r"([0-9]+)([a-zA-Z]*)", value).groups()  # type: ignore[union-attr]
    return int(number) * _REDIS_UNITS[unit.lower()]


# --- PostgreSQL: an amount in a unit, converted to the setting's base unit and rounded (as the server does) ---

_PG_MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_PG_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def _pg_amount(value: str, units: Mapping[str, float], base: float) -> float:
    """``value`` (e.g. ``256MB``, ``1.5GB``, ``30s``, or a bare number already in the base unit) in base units."""
    match = re.fullmatch(r"(-?[0-9]+(?:\.[0-9]+)?) ?([a-zA-Z]*)", value.strip())
    assert match is not None  # the CRD's pattern came first
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        return float(round(number))
    return float(round(number * units[unit] / base))


def _pg_memory(base_bytes: int) -> Callable[[str], float]:
    return lambda value: _pg_amount(value, _PG_MEMORY_UNITS, base_bytes)


def _pg_time(base_ms: float) -> Callable[[str], float]:
    return lambda value: _pg_amount(value, _PG_TIME_UNITS, base_ms)


# --- Neo4j: bytes, every multiplier binary -------------------------------------------------------------

_NEO4J_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}
_NEO4J_UNITS |= {"g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def neo4j_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"([0-9]+)([a-zA-Z]*)", value).groups()  # type: ignore[union-attr]
    return int(number) * _NEO4J_UNITS[unit.lower()]


_KB, _PAGE, _MB = 1024, 8192, 1024**2

LIMITS: dict[str, dict[str, Limit]] = {
    "redis": {
        "maxmemory": Limit(_redis_bytes, 0, 2**64 - 1, "bytes"),
        "slowlog-log-slower-than": Limit(float, -1, 2**63 - 1, "microseconds", "-1 turns it off"),
    },
    "postgres": {
        "shared_buffers": Limit(_pg_memory(_PAGE), 16, _INT_MAX // 2, "pages (8kB)"),
        "effective_cache_size": Limit(_pg_memory(_PAGE), 1, _INT_MAX, "pages (8kB)"),
        "work_mem": Limit(_pg_memory(_KB), 64, _INT_MAX, "kB"),
        "maintenance_work_mem": Limit(_pg_memory(_KB), 1024, _INT_MAX, "kB"),
        # pg_settings says 2; the server also refuses to start below two WAL segments (16MB each here).
        "max_wal_size": Limit(_pg_memory(_MB), 32, _INT_MAX, "MB", "at least two 16MB WAL segments"),
        "min_wal_size": Limit(_pg_memory(_MB), 32, _INT_MAX, "MB", "at least two 16MB WAL segments"),
        "wal_keep_size": Limit(_pg_memory(_MB), 0, _INT_MAX, "MB"),
        "checkpoint_timeout": Limit(_pg_time(1000.0), 30, 86_400, "s"),
        "statement_timeout": Limit(_pg_time(1.0), 0, _INT_MAX, "ms"),
        "idle_in_transaction_session_timeout": Limit(_pg_time(1.0), 0, _INT_MAX, "ms"),
        "log_min_duration_statement": Limit(_pg_time(1.0), -1, _INT_MAX, "ms", "-1 turns it off"),
    },
}

# Neo4j passes the heap sizes to the JVM, which refuses to start with an initial heap above the maximum.
NEO4J_HEAP = ("server.memory.heap.initial_size", "server.memory.heap.max_size")


def refusals(engine: str, config: Mapping[str, str]) -> list[str]:
    """Why the engine would refuse these settings (empty when it takes them). The values have the CRD's
    shape already (``datastore.CONFIG_VALUES``)."""
    found = [
        message
        for key, value in sorted(config.items())
        if (limit := LIMITS.get(engine, {}).get(key)) is not None and (message := limit.refusal(key, value))
    ]
    if engine == "neo4j" and all(key in config for key in NEO4J_HEAP):
        initial, maximum = (config[key] for key in NEO4J_HEAP)
        if neo4j_bytes(initial) > neo4j_bytes(maximum):
            found.append(
                f"spec.managed.config[{NEO4J_HEAP[0]}] is {initial!r}, more than "
                f"spec.managed.config[{NEO4J_HEAP[1]}] {maximum!r}: the JVM refuses to start with an initial heap "
                "above the maximum; make the initial size at most the maximum"
            )
    return found
