"""Managed mode: the Kubernetes objects that run one DataStore, rendered from ``mlinfra/templates``.

Pure: a DataStore in, plain dicts out; no I/O but reading the packaged templates, and no secrets. Passwords
reach the pods only as ``secretKeyRef`` env from the credentials Secret (``names.credentials_secret``),
which the reconciler generates with the keys ``names.credentials_keys(engine)``.

Templates live in ``templates/common`` (StatefulSet skeleton, Services, ConfigMap, PodDisruptionBudget,
NetworkPolicy) and ``templates/<engine>`` (the pod's containers and volumes, the engine's config files and
scripts). Every ``{{ value }}`` must go through a quoting filter (``tojson`` in manifests: JSON is YAML;
``redis``, ``pgconf``, ``neo4jconf``, ``shell``, ``token``, ``setting`` in config files and scripts): the
environment refuses to output an unquoted value, and ``StrictUndefined`` refuses a missing one. Rendered
manifests are parsed and labelled in code, with labels from ``names``, never the DataStore's own.

Start-up belongs to the operator's scripts, not to the image's entrypoint: each pod's command is a rendered
script (``entrypoint.sh``, or ``start.sh`` for postgres and neo4j), so any image that holds the engine's
binaries runs the same way (Qdrant's script still execs the image's ``/qdrant/entrypoint.sh``). What each
image must contain: docs/datastore-images.md.

Replication topology: pod 0 is the primary (redis, postgres) or the first peer (qdrant); pods > 0
``replicaof`` pod 0 (redis ``entrypoint.sh``), bootstrap from it with ``pg_basebackup`` and stream
(postgres ``bootstrap.sh``, then ``start.sh``), or join its cluster (qdrant ``entrypoint.sh``). Postgres
pod 0 initialises its cluster itself (``start.sh``: initdb, then ``init-primary.sh``). Neo4j Community is
one pod.

Called by the DataStore reconciler (``mlinfra.stores``), which applies the objects with server-side apply
and owner references, and by the local platform and the integration tests (``render_config_files``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import yaml

from mlinfra.api import datastore
from mlinfra.engines import connection, names

CONFIG_DIR = "/etc/mlinfra"
# Where PostgreSQL's unix socket lives in the pods: Debian's default (the official image's too), so psql and
# pg_isready run in a pod find the server without -h.
PG_SOCKET_DIR = "/var/run/postgresql"
DEFAULT_STORAGE_SIZE = "10Gi"
CONFIG_HASH_ANNOTATION = "mlinfra.io/config-hash"


class RenderError(ValueError):
    """The DataStore cannot be rendered (not managed, or a value no config syntax can hold safely)."""


@dataclasses.dataclass(frozen=True)
class Port:
    name: str
    port: int


# A PostgreSQL standby's password file for its WAL receiver: start.sh writes it in the memory-backed run
# directory, primary_conninfo names it (the bootstrap script's, and the operator's when it re-points a standby).
PG_PASSFILE = "/run/mlinfra/replication.pgpass"


def pg_standby_conninfo(ds: datastore.DataStore, primary: str, member: str) -> str:
    """``primary_conninfo`` of ``member`` streaming from the pod ``primary`` (as bootstrap.sh writes it)."""
    host = f"{primary}.{names.headless_service(ds.metadata.name)}.{names.namespace(ds)}.svc"
    port = PROFILES["postgres"].ports[0].port
    user = names.POSTGRES_REPLICATION_USER
    return f"host={host} port={port} user={user} passfile={PG_PASSFILE} application_name={member}"


# On the StatefulSet: the engine version it was rendered with (stores.versions keeps a store's data on its major).
VERSION_ANNOTATION = "mlinfra.io/engine-version"


@dataclasses.dataclass(frozen=True)
class Profile:
    """What differs between engines, beyond their templates."""

    image: str  # format string, {version}
    default_version: str
    ports: tuple[Port, ...]
    client_ports: tuple[str, ...]  # exposed by the client Service (and to the namespace by the NetworkPolicy)
    primary_only: bool  # the client Service selects pod 0 only: the other members are read-only
    uid: int  # the image's unprivileged user (and group)
    data_dir: str  # mount path of the data volume
    files: tuple[str, ...]  # ConfigMap keys, each rendered from templates/<engine>/<key>.j2
    defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)  # tunables; the user's config wins


PROFILES: Mapping[datastore.Engine, Profile] = {
    "redis": Profile(
        image="redis:{version}",
        default_version="7.2",
        ports=(Port("redis", 6379),),
        client_ports=("redis",),
        primary_only=True,
        uid=999,
        data_dir="/data",
        files=("redis.conf", "entrypoint.sh"),
    ),
    "postgres": Profile(
        image="postgres:{version}",
        default_version="15",
        ports=(Port("postgres", 5432),),
        client_ports=("postgres",),
        primary_only=True,
        uid=999,
        data_dir="/var/lib/postgresql/data",
        files=("postgresql.conf", "pg_hba.conf", "start.sh", "bootstrap.sh", "init-primary.sh"),
        # Standbys that fall behind by more than this need a new base backup: be generous.
        defaults={"wal_keep_size": "1GB"},
    ),
    "neo4j": Profile(
        image="neo4j:{version}-community",
        default_version="5.26",
        ports=(Port("bolt", 7687), Port("http", 7474)),
        client_ports=("bolt", "http"),
        primary_only=False,
        uid=7474,
        data_dir="/data",
        files=("neo4j.conf", "start.sh"),
    ),
    "qdrant": Profile(
        image="qdrant/qdrant:v{version}",
        default_version="1.13.6",
        ports=(Port("http", 6333), Port("grpc", 6334), Port("p2p", 6335)),
        client_ports=("http", "grpc"),
        primary_only=False,
        uid=1000,
        data_dir="/qdrant/storage",
        files=("config.yaml", "entrypoint.sh"),
    ),
}


# --- the Jinja environment ------------------------------------------------------------------------------


class _Quoted(str):
    """Text a quoting filter produced: the only thing a template may output."""


_TOKEN_RE = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9._:/@-]*$")
_SETTING_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")


def _text(value: object) -> str:
    # str() of a StrictUndefined raises UndefinedError: a missing variable never renders as "".
    if isinstance(value, jinja2.Undefined):
        str(value)
    return str(value)


def _tojson(value: object) -> _Quoted:
    if isinstance(value, jinja2.Undefined):
        str(value)
    return _Quoted(json.dumps(value, sort_keys=True))


def _shell(value: object) -> _Quoted:
    return _Quoted(shlex.quote(_text(value)))


def _redis(value: object) -> _Quoted:
    """A redis.conf double-quoted string (one argument, whatever spaces or quotes it holds)."""
    text = _text(value).replace("\\", "\\\\").replace('"', '\\"')
    return _Quoted(f'"{text}"')


def _pgconf(value: object) -> _Quoted:
    """A postgresql.conf single-quoted string (the server accepts numbers and units quoted too)."""
    text = _text(value).replace("\\", "\\\\").replace("'", "''")
    return _Quoted(f"'{text}'")


def _neo4jconf(value: object) -> _Quoted:
    """A neo4j.conf value: the rest of the line, as is (control characters are refused before)."""
    return _Quoted(_text(value).strip())


def _token(value: object) -> _Quoted:
    """A name, host, port or path that needs no quoting anywhere; anything else is an error."""
    text = _text(value)
    if not _TOKEN_RE.match(text):
        raise RenderError(f"{text!r} is not a plain name, host, port or path")
    return _Quoted(text)


def _setting(value: object) -> _Quoted:
    """A config setting name (from the API's allow-list or the template itself)."""
    text = _text(value)
    if not _SETTING_RE.match(text):
        raise RenderError(f"{text!r} is not a setting name")
    return _Quoted(text)


def _finalize(value: object) -> object:
    if isinstance(value, _Quoted):
        return value
    raise RenderError(f"a template printed {value!r} without a quoting filter (tojson, shell, redis, ...)")


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja environment: package templates, StrictUndefined, quoting filters, nothing unquoted."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mlinfra", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - YAML, config files and scripts, never HTML; values are quoted instead
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        tojson=_tojson,
        shell=_shell,
        redis=_redis,
        pgconf=_pgconf,
        neo4jconf=_neo4jconf,
        token=_token,
        setting=_setting,
    )
    return env


def _render(template: str, context: Mapping[str, Any]) -> str:
    return environment().get_template(template).render(context)


def _render_yaml(template: str, context: Mapping[str, Any]) -> dict[str, Any]:
    obj = yaml.safe_load(_render(template, context))
    if not isinstance(obj, dict):
        raise RenderError(f"{template} did not render a mapping")
    return obj


# --- values ---------------------------------------------------------------------------------------------


def _managed(ds: datastore.DataStore) -> datastore.Managed:
    if ds.spec.managed is None:
        raise RenderError(f"DataStore {ds.metadata.name!r} is not managed (spec.external is set)")
    return ds.spec.managed


def version(ds: datastore.DataStore) -> str:
    """The engine version the store runs: ``spec.managed.version`` or the engine's tested default."""
    return _managed(ds).version or PROFILES[ds.spec.engine].default_version


def image(ds: datastore.DataStore, defaults: Mapping[str, str] | None = None) -> str:
    """The container image: ``spec.managed.image``; else the operator's default image for the engine
    (``defaults``, from its settings: e.g. a mirror registry), else the engine's public image. A default may
    contain ``{version}``, replaced by :func:`version`."""
    managed = _managed(ds)
    template = (defaults or {}).get(ds.spec.engine) or PROFILES[ds.spec.engine].image
    return managed.image or template.replace("{version}", version(ds))


def settings(ds: datastore.DataStore) -> list[tuple[str, str]]:
    """The tunable settings written into the config file: the operator's defaults overlaid with the
    allow-listed keys of ``spec.managed.config`` (other keys are the API's to refuse; they are never
    written), sorted."""
    engine = ds.spec.engine
    allowed = datastore.ALLOWED_CONFIG[engine]
    user = {k: v for k, v in (_managed(ds).config or {}).items() if k in allowed}
    merged = {**PROFILES[engine].defaults, **user}
    for key, value in merged.items():
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise RenderError(f"spec.managed.config[{key!r}] contains a control character (e.g. a line break)")
    return sorted(merged.items())


def _context(
    ds: datastore.DataStore,
    images: Mapping[str, str] | None = None,
    operator_namespace: str | None = None,
    primary: str | None = None,
) -> dict[str, Any]:
    managed = _managed(ds)
    profile = PROFILES[ds.spec.engine]
    name, ns = ds.metadata.name, names.namespace(ds)
    ports = {p.name: p.port for p in profile.ports}
    storage = managed.storage
    return {
        "name": name,
        "namespace": ns,
        "engine": ds.spec.engine,
        "replicas": managed.replicas,
        "image": image(ds, images),
        "resources": managed.resources.model_dump(by_alias=True, exclude_none=True) if managed.resources else {},
        "storage_size": storage.size if storage else DEFAULT_STORAGE_SIZE,
        "storage_class_name": storage.storage_class_name if storage else None,
        "settings": settings(ds),
        "ports": ports,
        "port_list": [dataclasses.asdict(p) for p in profile.ports],
        "client_port_list": [{"name": n, "port": ports[n]} for n in profile.client_ports],
        "uid": profile.uid,
        "data_dir": profile.data_dir,
        "pgdata": f"{profile.data_dir}/pgdata",
        "pg_socket_dir": PG_SOCKET_DIR,
        "config_dir": CONFIG_DIR,
        "run_dir": "/run/mlinfra",
        "data_volume": names.DATA_VOLUME,
        "statefulset": names.statefulset(name),
        "headless_service": names.headless_service(name),
        "client_service": names.client_service(name),
        "config_map": names.config_map(name),
        "pdb": names.pod_disruption_budget(name),
        "network_policy": names.network_policy(name),
        "credentials_secret": names.credentials_secret(name),
        "username_key": names.USERNAME_KEY,
        "password_key": names.PASSWORD_KEY,
        "replication_password_key": names.REPLICATION_PASSWORD_KEY,
        "replication_user": names.POSTGRES_REPLICATION_USER,
        "admin_user": connection.DEFAULT_USERNAMES["postgres"],
        "pod0_host": names.pod_host(ds, 0),
        "pod0": names.pod(name, 0),
        "primary_record": names.primary_record(name),
        "pg_passfile": PG_PASSFILE,
        "primary_key": names.PRIMARY_KEY,
        "headless_domain": f"{names.headless_service(name)}.{ns}.svc",
        "client_host": names.service_host(ds),
        "selector": names.selector_labels(ds),
        "client_selector": names.primary_selector(ds, primary) if profile.primary_only else names.selector_labels(ds),
        "operator_selector": dict(names.OPERATOR_POD_LABELS),
        "operator_namespace": operator_namespace,
        "engine_version": version(ds),
        "version_annotation": VERSION_ANNOTATION,
    }


# --- config files ---------------------------------------------------------------------------------------


def _scalar(text: str) -> Any:
    # Qdrant's settings are typed: "true" is a boolean, "8" a number; anything else stays a string.
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


def _qdrant_config(rendered: str, values: list[tuple[str, str]]) -> str:
    config = yaml.safe_load(rendered)
    for dotted, value in values:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _scalar(value)
    header = "# Qdrant config of a DataStore, rendered by mlinfra-operator: edits are overwritten.\n"
    return header + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def render_config_files(ds: datastore.DataStore) -> dict[str, str]:
    """The ConfigMap's files, name -> content: the engine config (redis.conf; postgresql.conf and
    pg_hba.conf; neo4j.conf; config.yaml) and the scripts the pods run (entrypoint.sh; start.sh,
    bootstrap.sh and init-primary.sh; start.sh)."""
    context = _context(ds)
    engine = ds.spec.engine
    files = {}
    for file in PROFILES[engine].files:
        text = _render(f"{engine}/{file}.j2", context)
        if engine == "qdrant" and file == "config.yaml":
            text = _qdrant_config(text, context["settings"])
        files[file] = text
    return files


def config_hash(files: Mapping[str, str]) -> str:
    """A digest of the ConfigMap's files; on the pod template, so a config change rolls the pods."""
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()


# --- objects --------------------------------------------------------------------------------------------


def _restricted(container: dict[str, Any]) -> None:
    # Pod Security "restricted": the pod sets runAsNonRoot, the user and seccomp; each container this.
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "privileged": False,
    }


@dataclasses.dataclass(frozen=True)
class FirstInit:
    """An init container that runs before the engine's own, with the volumes only it mounts: a bootstrapped
    store's restore (``stores.bootstrap`` builds it: this module stays free of backups and Secrets). It gets the
    restricted security context of every container here, and a read-only root filesystem (it writes to its
    volumes only)."""

    container: Mapping[str, Any]
    volumes: Sequence[Mapping[str, Any]] = ()


def _statefulset(
    ds: datastore.DataStore, context: Mapping[str, Any], first_init: FirstInit | None = None
) -> dict[str, Any]:
    sts = _render_yaml("common/statefulset.yaml.j2", context)
    pod = _render_yaml(f"{ds.spec.engine}/pod.yaml.j2", context)
    if first_init is not None:
        pod["initContainers"] = [copy.deepcopy(dict(first_init.container)), *pod.get("initContainers", [])]
        pod["volumes"] = [*pod.get("volumes", []), *(copy.deepcopy(dict(v)) for v in first_init.volumes)]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        _restricted(container)
    if first_init is not None:
        pod["initContainers"][0]["securityContext"]["readOnlyRootFilesystem"] = True
    template = sts["spec"]["template"]
    template["spec"].update(pod)
    if PROFILES[ds.spec.engine].primary_only:
        # The failover's fence kills a hung primary from a new process in its container (stores.ha), which
        # the server may not be PID 1 of: a container's PID 1 cannot be killed from inside it.
        template["spec"]["shareProcessNamespace"] = True
    template["metadata"]["labels"] = names.labels(ds)
    for claim in sts["spec"]["volumeClaimTemplates"]:
        claim["metadata"]["labels"] = names.labels(ds)
    return sts


def has_read_only_service(ds: datastore.DataStore) -> bool:
    """A replicated store whose replicas are read-only (redis, postgres with more than one member) has the
    read-only Service ``<name>-ro`` over its healthy replicas."""
    return PROFILES[ds.spec.engine].primary_only and _managed(ds).replicas > 1


def render_managed(
    ds: datastore.DataStore,
    images: Mapping[str, str] | None = None,
    operator_namespace: str | None = None,
    first_init: FirstInit | None = None,
    primary: str | None = None,
) -> list[dict[str, Any]]:
    """Every object of the managed store ``ds`` except the credentials and connection Secrets: ConfigMap,
    headless and client Services, StatefulSet, the read-only Service (:func:`has_read_only_service`),
    PodDisruptionBudget (more than one replica) and
    NetworkPolicy (``spec.managed.networkPolicy``). Same input, same output, in this order. ``images``: the
    operator's default image per engine (see :func:`image`). ``operator_namespace``: where the operator's pod
    runs; the NetworkPolicy admits the operator's pods from that namespace only (a pod label alone would
    admit any tenant's pod that copies it), and none from elsewhere when it is unknown. ``first_init``: an init
    container to run first in every pod (:class:`FirstInit`); none when omitted. ``primary``: the pod the
    store's primary record names, which the client Service selects (pod 0 when omitted)."""
    managed = _managed(ds)
    files = render_config_files(ds)
    context = {
        **_context(ds, images, operator_namespace, primary),
        "files": files,
        "config_hash": config_hash(files),
    }
    objects = [
        _render_yaml("common/configmap.yaml.j2", context),
        _render_yaml("common/headless-service.yaml.j2", context),
        _render_yaml("common/client-service.yaml.j2", context),
        _statefulset(ds, context, first_init),
    ]
    if has_read_only_service(ds):
        read_only = {
            **context,
            "client_service": names.read_only_service(ds.metadata.name),
            "client_selector": names.read_only_selector(ds),
        }
        objects.append(_render_yaml("common/client-service.yaml.j2", read_only))
    if managed.replicas > 1:
        objects.append(_render_yaml("common/pdb.yaml.j2", context))
    if managed.network_policy:
        objects.append(_render_yaml("common/networkpolicy.yaml.j2", context))
    for obj in objects:
        obj["metadata"]["labels"] = names.labels(ds)
    return objects
