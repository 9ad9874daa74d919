"""The ``mlinfra`` command line: ``version`` and ``dev`` (the local test platform) for now."""

from __future__ import annotations

import typer

import mlinfra
from mlinfra.devenv import cli as devenv_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="mlinfra-operator command line.")
app.add_typer(devenv_cli.app, name="dev")


@app.command()
def version() -> None:
    """Print the operator version."""
    typer.echo(mlinfra.__version__)
