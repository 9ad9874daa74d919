"""Run a command in a pod's container (the API's ``pods/exec``), with a deadline.

Used by the failover to kill a hung primary at once: a new process in the server's container can SIGKILL it,
where deleting the pod waits for the kubelet (at least two seconds after SIGTERM, then its report). The
kubernetes library's websocket call swaps the ``call_api`` of the client it is given for the length of the
call, so each call gets an ApiClient of its own (the shared one serves every other thread meanwhile), and it
has no deadline of its own on connecting: the call runs in a worker thread that is given up on at the deadline.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

from kubernetes import client as k8s
from kubernetes.stream import stream

from mlinfra.k8s import client

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="pod-exec")


class ExecFailed(RuntimeError):
    """The command could not be run, did not finish within the deadline, or exited non-zero."""


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
        raise ExecFailed(f"exec in {namespace}/{pod}: {exc}") from None
    try:
        ws.run_forever(timeout=timeout)
        output = "".join(ws.read_all())
        code = ws.returncode
    finally:
        ws.close()
    if code != 0:
        raise ExecFailed(f"exec in {namespace}/{pod}: {argv[0]} exited {code}: {output.strip()[:200]}")
    return str(output)
