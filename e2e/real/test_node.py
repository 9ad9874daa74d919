"""The real node: it registers as a node of the cluster, and its Pods run, log, exec, resolve and route."""

from __future__ import annotations

import json
from typing import Any

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode

PY = "python"  # the local Debian python image: python3 in every test Pod


def pod(
    name: str,
    image: str,
    command: list[str],
    labels: dict[str, str] | None = None,
    hostname: str | None = None,
    subdomain: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}],
        "terminationGracePeriodSeconds": 1,
    }
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def start_pods(cp: ControlPlane, ns: str, *pods: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Create the Pods and wait until each is Running and Ready; returns them as the API server has them."""
    cp.kubectl(
        "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(pods)})
    )
    names = [p["metadata"]["name"] for p in pods]
    cp.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=120s", *[f"pod/{n}" for n in names])
    return {n: json.loads(cp.kubectl("get", "pod", n, "-n", ns, "-o", "json").stdout) for n in names}


def exec_py(cp: ControlPlane, ns: str, pod_name: str, code: str) -> str:
    return cp.kubectl("exec", "-n", ns, pod_name, "--", "python3", "-c", code, timeout=60).stdout


def test_the_node_is_ready_and_real(real_cp: ControlPlane, real_node: RealNode) -> None:
    node = json.loads(real_cp.kubectl("get", "node", real_node.name, "-o", "json").stdout)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == real_cp.tools.kubernetes_version
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": real_node.node_ip} in node["status"]["addresses"]
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    # Not a kwok node, and kwok does not even run on this platform.
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    assert not any(p.name == "kwok" for p in real_cp.processes)


def test_a_pod_runs_and_kubectl_logs_and_exec_reach_it(
    real_cp: ControlPlane, real_ns: str, real_node: RealNode
) -> None:
    started = start_pods(
        real_cp,
        real_ns,
        pod("hello", real_node.image(PY), ["sh", "-c", "echo hello from $(hostname); exec sleep 3600"]),
    )
    status = started["hello"]["status"]
    assert status["hostIP"] == real_node.node_ip
    assert status["podIP"].startswith(real_node.layout.pod_cidr.rsplit(".", 1)[0] + ".")  # type: ignore[union-attr]
    procs.wait_until(
        "the pod's log line", lambda: "hello from hello" in real_cp.kubectl("logs", "-n", real_ns, "hello").stdout, 30
    )
    # exec runs in the container: its hostname, its own PID namespace (sleep is PID 1).
    assert exec_py(real_cp, real_ns, "hello", "import socket; print(socket.gethostname())").strip() == "hello"
    assert (
        exec_py(real_cp, real_ns, "hello", "print(open('/proc/1/cmdline').read().split(chr(0))[0])").strip() == "sleep"
    )


def test_services_route_and_cluster_dns_resolves_from_another_pod(
    real_cp: ControlPlane, real_ns: str, real_node: RealNode
) -> None:
    ns = real_ns
    server = ["sh", "-c", "echo served-by-$(hostname) > /tmp/index.html && cd /tmp && exec python3 -m http.server 8080"]
    real_cp.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": ns},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web-hl", "namespace": ns},
                "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]},
            },
        ]
    )
    web = pod("web-0", real_node.image(PY), server, {"app": "web"}, "web-0", "web-hl")
    # Ready once it listens: the Service's endpoint (and kube-proxy's rule) follows readiness.
    web["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    pods = start_pods(real_cp, ns, web, pod("client", real_node.image(PY), ["sleep", "3600"]))
    web_ip = pods["web-0"]["status"]["podIP"]
    cluster_ip = json.loads(real_cp.kubectl("get", "svc", "web", "-n", ns, "-o", "json").stdout)["spec"]["clusterIP"]

    resolve = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"

    def lookup(name: str) -> str:
        return real_cp.kubectl("exec", "-n", ns, "client", "--", "python3", "-c", resolve, name).stdout.strip()

    # The headless Service's per-pod name (what StatefulSet replicas use to find pod 0) and the Service name.
    procs.wait_until("pod DNS name", lambda: lookup(f"web-0.web-hl.{ns}.svc.cluster.local") == web_ip, 30)
    assert lookup(f"web.{ns}.svc.cluster.local") == cluster_ip
    assert lookup("web") == cluster_ip  # the search path of the pod's own namespace
    # The ClusterIP routes (kube-proxy's DNAT) to the pod behind it.
    fetch = "import urllib.request, sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"

    def body() -> str:
        return real_cp.kubectl("exec", "-n", ns, "client", "--", "python3", "-c", fetch, "http://web/").stdout

    # kube-proxy programs the rule a moment after the endpoint turns ready.
    procs.wait_until("the ClusterIP answering", lambda: body().strip() == "served-by-web-0", 30)
    # Names outside the cluster are not resolved (and nothing is forwarded off the machine).
    nx = real_cp.kubectl("exec", "-n", ns, "client", "--", "python3", "-c", resolve, "pypi.org", check=False)
    assert nx.returncode != 0 and "Name or service not known" in nx.stderr + nx.stdout


def test_pods_reach_the_api_server_as_the_kubernetes_service(
    real_cp: ControlPlane, real_ns: str, real_node: RealNode
) -> None:
    p = pod("api", real_node.image(PY), ["sleep", "3600"])
    p["spec"]["automountServiceAccountToken"] = True
    start_pods(real_cp, real_ns, p)
    code = (
        "import json, ssl, urllib.request; d = '/var/run/secrets/kubernetes.io/serviceaccount/'; "
        "ctx = ssl.create_default_context(cafile=d + 'ca.crt'); "
        "req = urllib.request.Request('https://kubernetes.default.svc/version', "
        "headers={'Authorization': 'Bearer ' + open(d + 'token').read()}); "
        "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])"
    )
    assert exec_py(real_cp, real_ns, "api", code).strip() == real_cp.tools.kubernetes_version
