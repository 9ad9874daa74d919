"""The ``mlinfra`` command line: ``version``, ``crds``, ``run``, ``status``, ``backup`` (a Backup of a store, now),
``promote`` (a switchover),
``restore`` (a Backup laid out by hand; ``restore pod``: a bootstrapped store's restore init container), ``sync``
(materialization jobs), ``rebuild`` (a VectorIndex's rebuild Job), ``take`` (a backup Job), ``archive`` (a store's
WAL archiver) and ``dev``."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

import mlinfra
from mlinfra.devenv import cli as devenv_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="mlinfra-operator command line.")
app.add_typer(devenv_cli.app, name="dev")
sync_app = typer.Typer(no_args_is_help=True, help="One sync run, as the operator's Jobs run it.")
app.add_typer(sync_app, name="sync")
rebuild_app = typer.Typer(no_args_is_help=True, help="One rebuild, as the operator's rebuild Jobs run it.")
app.add_typer(rebuild_app, name="rebuild")
take_app = typer.Typer(no_args_is_help=True, help="One backup, as the operator's backup Jobs take it.")
app.add_typer(take_app, name="take")
archive_app = typer.Typer(no_args_is_help=True, help="Continuous archiving, as the operator's archiver pods run it.")
app.add_typer(archive_app, name="archive")
volume_app = typer.Typer(no_args_is_help=True, help="The server of a volume backup target, as its pod runs it.")
app.add_typer(volume_app, name="backup-volume")


@app.command()
def version() -> None:
    """Print the operator version."""
    typer.echo(mlinfra.__version__)


@app.command()
def crds(
    check: Annotated[
        bool, typer.Option("--check", help="Only compare: exit 1, naming the stale files, if they differ.")
    ] = False,
    root: Annotated[
        pathlib.Path | None,
        typer.Option(help="Repository root holding crds/ and charts/ (default: this checkout)."),
    ] = None,
) -> None:
    """Generate the CRDs from the API models into crds/ and charts/mlinfra-operator/crds/."""
    from mlinfra.build import apidocs, crdgen  # build-time only: `mlinfra run` never loads the generators

    base = root or crdgen.repo_root()
    if check:
        stale = crdgen.stale(base) + ([base / apidocs.PATH] if apidocs.stale(base) else [])
        if stale:
            names = ", ".join(str(path.relative_to(base)) for path in stale)
            typer.echo(f"stale CRD files (run `mlinfra crds` and commit them): {names}", err=True)
            raise typer.Exit(1)
        typer.echo("CRDs are up to date")
        return
    for path in crdgen.write(base):
        typer.echo(f"wrote {path.relative_to(base)}")
    if apidocs.write(base):
        typer.echo(f"wrote {apidocs.PATH}")


@app.command()
def run(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch only this namespace (repeatable).")
    ] = None,
    health_port: Annotated[int, typer.Option(help="Port of the /healthz liveness endpoint.")] = 8080,
    metrics_port: Annotated[int, typer.Option(help="Port of the Prometheus /metrics endpoint.")] = 9090,
    endpoint_map: Annotated[
        pathlib.Path | None,
        typer.Option(
            help="Development only: JSON map of managed stores to local endpoints "
            "(env MLINFRA_ENDPOINT_MAP); see docs/development.md."
        ),
    ] = None,
) -> None:
    """Run the operator (Kopf, standalone: one replica)."""
    from mlinfra import run as run_mod
    from mlinfra.config import Settings

    settings = Settings.from_env(
        namespaces=tuple(namespace or ()), health_port=health_port, metrics_port=metrics_port, endpoint_map=endpoint_map
    )
    run_mod.run(settings)


@app.command()
def demo(
    once: Annotated[bool, typer.Option(help="Exit after the samples are Ready (exit 1 if they are not).")] = False,
    state_dir: Annotated[pathlib.Path | None, typer.Option(help="Working directory (default: a temp dir).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the samples to become Ready.")] = 300,
    kwok: Annotated[
        bool,
        typer.Option(
            help="On kwok's fake nodes instead of a real node: stores served by local servers, the operator and "
            "the Jobs' commands on this host, Qdrant (local mode) and the VectorIndex loop included."
        ),
    ] = False,
) -> None:
    """The local platform, the operator and the sample resources becoming Ready (Ctrl-C stops it): as real
    Pods on a real node (needs root; the Qdrant sample is left out: no server binary here), or ``--kwok``."""
    import logging
    import tempfile

    from mlinfra.devenv import demo as demo_mod
    from mlinfra.devenv import realdemo

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    workdir = state_dir or pathlib.Path(tempfile.mkdtemp(prefix="mlinfra-demo-"))
    run = demo_mod.run if kwok else realdemo.run
    raise typer.Exit(run(workdir, once=once, timeout=timeout))


@app.command()
def status(
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace to show (default: the kubeconfig's current one)."),
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text, or json (docs/observability.md).")] = "text",
    color: Annotated[
        bool | None, typer.Option("--color/--no-color", help="Colour (default: when stdout is a terminal).")
    ] = None,
) -> None:
    """Every mlinfra resource as a tree of DataStores and their dependents, from .status (read access suffices)."""
    import datetime
    import os
    import sys

    import urllib3
    from kubernetes import client as kube
    from kubernetes import config as kubeconfig

    from mlinfra import statusview
    from mlinfra.k8s import client, resources

    if output not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--output")
    scope = None if all_namespaces else (namespace or _current_namespace())
    try:
        # CustomObjectsApi, not k8s.objects.Kube.list_: that one lists within a namespace only, and -A needs the
        # cluster-wide list. The client (and so the kubeconfig or in-cluster account) is the shared one.
        api = kube.CustomObjectsApi(client.api_client())
        listed: dict[str, list[dict[str, object]]] = {}
        for kind in statusview.KINDS:
            group, version = resources.KINDS[kind].api_version.split("/")
            plural = resources.KINDS[kind].plural
            try:
                body = (
                    api.list_cluster_custom_object(group, version, plural)
                    if scope is None
                    else api.list_namespaced_custom_object(group, version, scope, plural)
                )
            except kube.ApiException as exc:
                if exc.status != 404:  # 404: this kind's CRD is not installed, so there is none of it
                    raise
                body = {}
            listed[kind] = list(body.get("items") or []) if isinstance(body, dict) else []
    except kube.ApiException as exc:
        where = "all namespaces" if scope is None else f"namespace {scope}"
        typer.echo(f"error: listing mlinfra resources in {where}: {exc.status} {exc.reason}", err=True)
        raise typer.Exit(1) from None
    except kubeconfig.ConfigException as exc:
        typer.echo(f"error: no Kubernetes credentials: {exc}", err=True)
        raise typer.Exit(1) from None
    except urllib3.exceptions.HTTPError as exc:
        typer.echo(f"error: cannot reach the Kubernetes API server: {exc}", err=True)
        raise typer.Exit(1) from None
    trees = statusview.build(listed)
    if output == "json":
        typer.echo(statusview.render_json(trees))
        return
    if color is None:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    # color= too: click strips ANSI codes from output that is not a terminal, which would undo --color.
    typer.echo(
        statusview.render_text(trees, color=color, now=datetime.datetime.now(datetime.UTC)), nl=False, color=color
    )


def _current_namespace() -> str:
    """The namespace kubectl would use: the pod's own in a cluster, else the kubeconfig context's, else default."""
    import os

    from kubernetes import config as kubeconfig

    in_pod = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if os.environ.get("KUBERNETES_SERVICE_HOST") and in_pod.is_file():
        return in_pod.read_text().strip()
    try:
        _, active = kubeconfig.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except (kubeconfig.ConfigException, OSError):
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


@sync_app.command("featureview")
def sync_featureview(
    target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the FeatureView.")],
    file: Annotated[
        pathlib.Path | None,
        typer.Option("--file", "-f", help="Read the FeatureView from this YAML/JSON file, not the API server."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Rows per batch (default: spec.materialization.batchSize).")
    ] = None,
) -> None:
    """Materialize a FeatureView offline -> online once; prints a one-line JSON summary."""
    from mlinfra.features import sync_cli

    raise typer.Exit(sync_cli.run(target, file=file, batch_size=batch_size))


@sync_app.command("vectorindex")
def sync_vectorindex(
    target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the VectorIndex.")],
    file: Annotated[
        pathlib.Path | None,
        typer.Option("--file", "-f", help="Read the VectorIndex from this YAML/JSON file, not the API server."),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Also delete points whose source row is gone (hard deletes).")
    ] = False,
) -> None:
    """Copy changed rows of a VectorIndex's source table into its collection once; prints a JSON summary."""
    from mlinfra.vectors import sync_cli as vector_sync_cli

    raise typer.Exit(vector_sync_cli.run(target, file=file, full=full))


@rebuild_app.command("vectorindex")
def rebuild_vectorindex(
    target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the VectorIndex.")],
    file: Annotated[
        pathlib.Path | None,
        typer.Option("--file", "-f", help="Read the VectorIndex from this YAML/JSON file, not the API server."),
    ] = None,
) -> None:
    """Rebuild a VectorIndex's collection blue/green from its source table (new collection, backfill, count
    check, alias moved); prints a JSON summary. Nothing to do when the alias serves the spec's collection."""
    from mlinfra.vectors import rebuild_cli

    raise typer.Exit(rebuild_cli.run(target, file=file))


@sync_app.command("modelregistry")
def sync_modelregistry(
    target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the ModelRegistry.")],
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Events per batch (default: spec.lineageSync.batchSize).")
    ] = None,
) -> None:
    """Drain a ModelRegistry's outbox into its lineage graph once; prints a one-line JSON summary."""
    from mlinfra.registry import sync_cli as registry_sync_cli

    raise typer.Exit(registry_sync_cli.run(target, batch_size=batch_size))


@take_app.command("backup")
def take_backup(target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the Backup.")]) -> None:
    """Take the backup its Job's plan describes (MLINFRA_BACKUP_PLAN), upload it sealed, write the manifest last;
    prints a JSON summary."""
    from mlinfra.backups import take_cli

    raise typer.Exit(take_cli.run(target))


@archive_app.command("wal")
def archive_wal(target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the PostgreSQL DataStore.")]) -> None:
    """Archive the store's WAL continuously as its archiver plan (MLINFRA_ARCHIVE_PLAN) says: pg_receivewal on
    the store's slot, each segment and mark sealed into <store prefix>/wal/; JSON status lines; exits on SIGTERM."""
    from mlinfra.backups import archive_cli

    raise typer.Exit(archive_cli.run(target))


@volume_app.command("serve")
def volume_serve(port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8080) -> None:
    """Serve the claim mounted at MLINFRA_VOLUME_ROOT to the backup Jobs, the WAL archiver, restores and the
    operator, with the token in the file MLINFRA_VOLUME_TOKEN_FILE; exits on SIGTERM."""
    from mlinfra.backups import volume_cli

    raise typer.Exit(volume_cli.run(port))


@app.command("backup")
def backup_now(
    target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the DataStore to back up.")],
    name: Annotated[str | None, typer.Option(help="Name of the Backup (default: <store>-<UTC time>).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the Backup is Ready (or has failed).")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600.0,
) -> None:
    """Create a Backup of a DataStore now (its spec.backup says where it goes); with --wait, follow it to its end."""
    from mlinfra.backups import request

    try:
        code = request.backup_now(target, name=name, wait=wait, timeout=timeout, echo=typer.echo)
    except request.RequestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command("promote")
def promote(
    target: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the DataStore (managed redis with replicas).")],
    member: Annotated[str, typer.Argument(help="The pod to make the primary, e.g. cache-2.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the operator's answer.")] = 120.0,
) -> None:
    """Switch the store's primary to MEMBER with no acknowledged write lost (refused, with the reason, when MEMBER
    is not a replica that answers or lags too far)."""
    from mlinfra.stores import switchover_request

    try:
        code = switchover_request.promote(target, member, timeout=timeout, echo=typer.echo)
    except switchover_request.RequestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command("restore")
def restore_backup(
    target: Annotated[
        str,
        typer.Argument(
            help="NAMESPACE/NAME of a complete Backup; or `pod`: the restore init container of a store that "
            "bootstraps from a Backup (the plan in MLINFRA_RESTORE_PLAN)."
        ),
    ],
    into: Annotated[pathlib.Path | None, typer.Option(help="A new (or empty) directory for the files.")] = None,
    to: Annotated[
        str | None, typer.Option(help="neo4j, qdrant: the DataStore (same namespace) to load the backup into.")
    ] = None,
    appendonly: Annotated[bool, typer.Option(help="redis: lay out for a server with appendonly yes.")] = False,
    target_time: Annotated[
        str | None,
        typer.Option(help="postgres: replay the store's WAL archive to this time (RFC 3339, 2026-11-30T03:15:00Z)."),
    ] = None,
) -> None:
    """Download a Backup (every object verified, decrypted with its key) and lay it out for its engine: a redis
    data directory, a PostgreSQL data directory that recovers and promotes, or a load into a neo4j/qdrant store.
    `mlinfra restore pod` restores a bootstrapped store's pod 0 onto its data volume, as its plan says."""
    import datetime
    import json

    if target == "pod":  # never a Backup: those are NAMESPACE/NAME
        if into is not None or to is not None or appendonly or target_time is not None:
            raise typer.BadParameter("`restore pod` takes no options: its plan says everything")
        from mlinfra.backups import bootstrap_cli

        raise typer.Exit(bootstrap_cli.run())
    if into is None:
        raise typer.BadParameter("a directory for the files is required", param_hint="--into")
    from mlinfra.backups import restore_cli

    try:
        when = datetime.datetime.fromisoformat(target_time.replace("Z", "+00:00")) if target_time else None
    except ValueError:
        hint = "must be an RFC 3339 time, e.g. 2026-11-30T03:15:00Z"
        raise typer.BadParameter(hint, param_hint="--target-time") from None
    try:
        result = restore_cli.run(target, into=into, to=to, appendonly=appendonly, echo=typer.echo, target_time=when)
    except restore_cli.RestoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, sort_keys=True, default=str))
