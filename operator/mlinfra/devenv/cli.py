"""``mlinfra dev up | down | env``: keep the local platform running for manual use.

``up`` runs in the foreground until SIGTERM/Ctrl-C (``make cluster-up`` starts it in the background and
waits for the state directory's ``env`` file); ``down`` signals it and waits until everything is stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import typer

from mlinfra.devenv import procs, tools

app = typer.Typer(no_args_is_help=True, help="The local test platform (real control plane + databases).")

STATE_OPT = typer.Option(None, help="State directory (default: <cache>/cluster).")


def _state(state_dir: Path | None) -> Path:
    return state_dir or tools.cache_dir() / "cluster"


@app.command()
def up(
    state_dir: Path | None = STATE_OPT,
    kube: bool = typer.Option(True, help="Start the Kubernetes control plane."),
    databases: bool = typer.Option(True, help="Start Redis, PostgreSQL and Neo4j."),
) -> None:
    """Start the platform and keep it running until interrupted."""
    from mlinfra.devenv.platform import Platform

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    state = _state(state_dir)
    pidfile = state / "pid"
    if pidfile.exists() and _alive(int(pidfile.read_text())):
        typer.echo(f"already running (pid {pidfile.read_text().strip()}); `mlinfra dev down` first", err=True)
        raise typer.Exit(1)
    state.mkdir(parents=True, exist_ok=True)
    (state / "env").unlink(missing_ok=True)
    pidfile.write_text(str(os.getpid()))
    platform = Platform(workdir=state / "run", kube=kube, databases=databases)
    try:
        with procs.stopping_on_signals():
            platform.start()
            platform.write_env(state / "env")
            typer.echo(platform.summary())
            typer.echo(f"\nexport the settings with:  source {state / 'env'}")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping the platform")
    finally:
        platform.stop()
        platform.remove()
        (state / "env").unlink(missing_ok=True)
        pidfile.unlink(missing_ok=True)


@app.command()
def wait(state_dir: Path | None = STATE_OPT, timeout: float = 900) -> None:
    """Wait until a background ``up`` is ready (its env file exists), then print how to use it."""
    state = _state(state_dir)
    start = time.monotonic()
    while not (state / "env").exists():
        pid = int((state / "pid").read_text()) if (state / "pid").exists() else None
        waited = time.monotonic() - start
        if waited > timeout or (pid is None and waited > 30) or (pid is not None and not _alive(pid)):
            typer.echo(f"the platform did not come up; see {state / 'up.log'}", err=True)
            raise typer.Exit(1)
        time.sleep(1)
    typer.echo(
        f"platform ready. In your shell:\n  source {state / 'env'}\n"
        f"  kubectl get nodes   (kubectl: {tools.find_tools().kubectl})"
    )


@app.command()
def down(state_dir: Path | None = STATE_OPT, timeout: float = 60) -> None:
    """Stop a running ``up`` and wait until its processes are gone."""
    pidfile = _state(state_dir) / "pid"
    if not pidfile.exists():
        typer.echo("not running")
        return
    pid = int(pidfile.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        typer.echo(f"pid {pid} did not stop in {timeout:.0f}s", err=True)
        raise typer.Exit(1)
    pidfile.unlink(missing_ok=True)
    typer.echo("stopped")


@app.command()
def env(state_dir: Path | None = STATE_OPT) -> None:
    """Print the env file of a running platform (``eval "$(mlinfra dev env)"``)."""
    path = _state(state_dir) / "env"
    if not path.exists():
        typer.echo("not running", err=True)
        raise typer.Exit(1)
    typer.echo(path.read_text(), nl=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "Z" not in (Path(f"/proc/{pid}/stat").read_text().split()[2])
