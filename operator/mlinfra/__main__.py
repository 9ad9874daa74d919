"""``python -m mlinfra`` is the ``mlinfra`` CLI."""

from mlinfra.cli import app

app()
