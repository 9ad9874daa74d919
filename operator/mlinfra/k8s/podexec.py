"""Run a command in a pod's container (the API's ``pods/exec``), with a deadline.

Used by the failover to kill a hung primary at once: a new process in the server's container can SIGKILL it,
where deleting the pod waits for the kubelet (at least two seconds after SIGTERM, then its report). The
kubernetes library's websocket call swaps the ``call_api`` of the client it is given for the length of the
call, so each call gets an ApiClient of its own (the shared one serves every other thread meanwhile), and it
has no deadline of its own on connecting: the call runs in a worker thread that is given up on at the deadline.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Sequence

from kubernetes import client as k8s
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL

from mlinfra.k8s import client

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="pod-exec")


class ExecFailed(RuntimeError):
    """The command could not be run, did not finish within the deadline, or exited non-zero.
    ``ended_with_container``: the session closed without an exit status, as when the command's container
    stopped under it (a command that kills its own container's processes ends so)."""

    def __init__(self, message: str, ended_with_container: bool = False) -> None:
        super().__init__(message)
        self.ended_with_container = ended_with_container


def run(namespace: str, pod: str, container: str, argv: Sequence[str], timeout: float) -> str:
    """Run ``argv`` in ``container`` of ``pod``; its output (stdout and stderr). Raises ExecFailed."""
    future = _pool.submit(_run, namespace, pod, container, list(argv), timeout)
    try:
        return future.result(timeout=timeout + 1.0)
    except concurrent.futures.TimeoutError:
        raise ExecFailed(f"exec in {namespace}/{pod}: no answer within {timeout:g} s") from None


def _run(namespace: str, pod: str, container: str, argv: list[str], timeout: float) -> str:
    api = k8s.CoreV1Api(k8s.ApiClient(configuration=client.api_client().configuration))
    try:
        ws = stream(
            api.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=argv,
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _preload_content=False,
        )
    except Exception as exc:  # the library wraps every failure (refused, forbidden, no such pod) the same way
        raise ExecFailed(f"exec in {namespace}/{pod}: {' '.join(str(exc).split())[:400]}") from None
    try:
        ws.run_forever(timeout=timeout)
        open_still = ws.is_open()
        status = ws.read_channel(ERROR_CHANNEL)  # the exit status, JSON; empty when none came (read first:
        output = "".join(ws.read_all())  # read_all drops every channel's buffer)
    except Exception as exc:  # the websocket library's own errors: one failed exec, never the caller's crash
        raise ExecFailed(f"exec in {namespace}/{pod}: {type(exc).__name__}: {exc}"[:400]) from None
    finally:
        ws.close()
    if open_still:
        raise ExecFailed(f"exec in {namespace}/{pod}: {argv[0]} did not end within {timeout:g} s")
    if not status:
        raise ExecFailed(f"exec in {namespace}/{pod}: the session ended without an exit status", True)
    code = _exit_code(status)
    if code != 0:
        raise ExecFailed(f"exec in {namespace}/{pod}: {argv[0]} exited {code}: {output.strip()[:200]}")
    return str(output)


def _exit_code(status: str) -> int:
    """The exit code in the API's status message of an exec (Success, or NonZeroExitCode with the code)."""
    try:
        found = json.loads(status)
    except ValueError:
        return -1
    if found.get("status") == "Success":
        return 0
    for cause in (found.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"])
    return -1
