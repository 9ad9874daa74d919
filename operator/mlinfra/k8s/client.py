"""The process-wide Kubernetes API client: in-cluster credentials, else the kubeconfig (KUBECONFIG)."""

from __future__ import annotations

import os
import threading

from kubernetes import client, config

_lock = threading.Lock()
_api: client.ApiClient | None = None


def api_client() -> client.ApiClient:
    """One shared ApiClient (thread-safe to use; built on first call)."""
    global _api
    with _lock:
        if _api is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                _api = client.ApiClient()
            except config.ConfigException:
                # KUBECONFIG as it is now: the library reads it once, when it is imported.
                _api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
        return _api


def reset() -> None:
    """Forget the client (tests that switch clusters)."""
    global _api
    with _lock:
        _api = None
