"""``mlinfra backup-volume serve``: the server of a volume backup target, as its Deployment runs it
(:mod:`mlinfra.stores.volumeserver`).

The directory comes from ``MLINFRA_VOLUME_ROOT`` (the claim's mount) and the token from the file named by
``MLINFRA_VOLUME_TOKEN_FILE`` (the mounted Secret): never from argv. SIGTERM stops it after the requests in
flight; a put cut short leaves no object (:class:`~mlinfra.backup.target.VolumeTarget`), and its temporary
file is removed when the next server starts. Exit 2 when it cannot
start (no directory, no token).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

from mlinfra.backup.target import VolumeTarget
from mlinfra.backup.volume_server import VolumeServer
from mlinfra.stores import sync_command
from mlinfra.stores.volumeserver import ROOT_ENV, TOKEN_FILE_ENV


def _unusable(message: str) -> int:
    sync_command.termination_message("Unusable", message)
    print(message, flush=True)
    return 2


def run(port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 - a Pod serving its Service
    root_value, token_file = os.environ.get(ROOT_ENV), os.environ.get(TOKEN_FILE_ENV)
    if not root_value or not token_file:
        return _unusable(f"{ROOT_ENV} and {TOKEN_FILE_ENV} must be set: this runs in a backup volume's server pod")
    root = Path(root_value)
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        return _unusable(f"cannot read the token file {token_file}: {exc.strerror or exc}")
    if not root.is_dir() or not token:
        return _unusable(f"{root} is not a directory" if not root.is_dir() else f"the token file {token_file} is empty")
    # One server per claim (its Deployment is Recreate): a temporary file here now is a put its predecessor
    # never finished, which no listing shows and nothing else would ever delete.
    swept = VolumeTarget(root).remove_leftovers()
    if swept:
        print(f"removed {swept} unfinished upload(s) left by the previous server", flush=True)
    server = VolumeServer(root, token, host=host, port=port).start()
    stopped = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"serving {root} on {host}:{server.port}", flush=True)
    stopped.wait()
    server.stop()
    return 0
