"""A real S3 server for the backup tests: MinIO (built from the Go module proxy by ``e2e/tools/build.sh``) on
free loopback ports, with server-side encryption (a generated KMS key) and optionally TLS.

For the real tier it runs inside the real node's network namespace instead (``netns`` and ``host``: the node's
address), where the node's Pods reach it and the host reaches it over the node's link, as it reaches the kubelet:
nothing of it listens outside the namespace the test run created.

The root credentials are generated and reach the server through its environment, never its argv; the
password and the KMS key are tracked by the secret scan, so the server's own log is checked for them too.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio, MinioAdmin
from minio.credentials.providers import StaticProvider

from mlinfra.backup.s3 import S3Target
from mlinfra.devenv import netns as netns_mod
from mlinfra.devenv import pki, procs, secretscan, tools

_TIMEOUT = urllib3.Timeout(connect=5, read=30)


@dataclass(frozen=True)
class S3User:
    """An access key of the server (the root one, or one limited by a policy)."""

    access_key: str
    secret_key: str = field(repr=False)


@dataclass
class MinioServer:
    """One ``minio server`` process on a directory of its own (a single drive, no erasure coding)."""

    workdir: Path
    tls: bool = False
    port: int = field(default_factory=procs.free_port)
    console_port: int = field(default_factory=procs.free_port)
    root: S3User = field(
        default_factory=lambda: S3User(f"mlinfra-root-{secrets.token_hex(4)}", secrets.token_urlsafe(24))
    )
    proc: procs.Proc | None = None
    ca_pem: bytes | None = None  # the CA that signed the serving certificate (TLS only)
    # The network namespace to run in (None: the host's) and the address to listen on there.
    netns: str | None = None
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def _http(self) -> urllib3.PoolManager:
        if not self.tls:
            return urllib3.PoolManager(timeout=_TIMEOUT, retries=1)
        assert self.ca_pem is not None
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        return urllib3.PoolManager(timeout=_TIMEOUT, retries=1, ssl_context=ctx)

    def client(self, user: S3User | None = None) -> Minio:
        """A minio-py client (root unless ``user``), trusting only the server's CA."""
        user = user or self.root
        return Minio(self.endpoint, user.access_key, user.secret_key, secure=self.tls, http_client=self._http())

    def admin(self) -> MinioAdmin:
        return MinioAdmin(
            endpoint=self.endpoint,
            credentials=StaticProvider(self.root.access_key, self.root.secret_key),
            secure=self.tls,
            http_client=self._http(),
        )

    def target(self, bucket: str, prefix: str = "", user: S3User | None = None, **options: Any) -> S3Target:
        """An :class:`S3Target` on ``bucket`` of this server (root credentials unless ``user``; ``options``
        are passed on, e.g. ``sse="s3"``)."""
        user = user or self.root
        if self.tls:
            options.setdefault("ca", self.ca_pem)
        return S3Target(
            endpoint=self.endpoint,
            bucket=bucket,
            prefix=prefix,
            access_key=user.access_key,
            secret_key=user.secret_key,
            secure=self.tls,
            **options,
        )

    def new_bucket(self, stem: str = "t") -> str:
        """Create a bucket with a fresh name (tests share the server; each works in buckets of its own)."""
        name = f"{stem}-{secrets.token_hex(6)}"
        self.client().make_bucket(name)
        return name

    def add_user(self, bucket: str) -> S3User:
        """A new access key allowed everything on ``bucket`` and nothing else."""
        user = S3User(f"u-{secrets.token_hex(6)}", secrets.token_urlsafe(24))
        secretscan.track(user.secret_key)
        policy = f"only-{bucket}"
        statement = {
            "Effect": "Allow",
            "Action": ["s3:*"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        }
        admin = self.admin()
        admin.policy_add(policy, policy={"Version": "2012-10-17", "Statement": [statement]})
        admin.user_add(user.access_key, user.secret_key)
        attached = json.loads(admin.attach_policy([policy], user=user.access_key) or "{}")
        if attached and policy not in attached.get("policiesAttached", [policy]):
            raise RuntimeError(f"MinIO did not attach policy {policy} to {user.access_key}: {attached}")
        return user

    def _ready(self) -> bool:
        response = self._http().request("GET", f"{self.url}/minio/health/ready")
        return response.status == 200

    def start(self, stack: procs.ProcStack) -> MinioServer:
        if self.tls and self.host != "127.0.0.1":
            # pki.create_pki's serving certificate names 127.0.0.1 and localhost only.
            raise ValueError(f"MinIO over TLS listens on 127.0.0.1 only, not {self.host}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        data, certs = self.workdir / "data", self.workdir / "certs"
        data.mkdir(exist_ok=True)
        certs.mkdir(exist_ok=True)  # always one of our own: the default is ~/.minio/certs
        if self.tls:
            issued = pki.create_pki(self.workdir / "pki", clients={})
            shutil.copyfile(issued.serving.cert, certs / "public.crt")
            shutil.copyfile(issued.serving.key, certs / "private.key")
            (certs / "private.key").chmod(0o600)
            self.ca_pem = issued.ca.cert.read_bytes()
        kms_key = base64.b64encode(os.urandom(32)).decode("ascii")
        for value in (self.root.secret_key, kms_key):
            secretscan.track(value)
        env = {
            "MINIO_ROOT_USER": self.root.access_key,
            "MINIO_ROOT_PASSWORD": self.root.secret_key,
            # A static KMS key: SSE-S3 (and encrypted IAM data) work without a KES server.
            "MINIO_KMS_SECRET_KEY": f"mlinfra-local:{kms_key}",
            "MINIO_BROWSER": "off",  # no web console: nothing listens on the console port
            "MINIO_UPDATE": "off",  # no update check over the network
            "HOME": str(self.workdir),  # it creates ~/.minio whatever --certs-dir says
        }
        argv = [
            str(tools.ensure_tools().minio),
            "server",
            str(data),
            "--address",
            self.endpoint,
            "--console-address",
            f"127.0.0.1:{self.console_port}",  # the loopback of its own namespace (and nothing listens there)
            "--certs-dir",
            str(certs),
            "--anonymous",  # hide what could be sensitive from its log
            "--quiet",
        ]
        if self.netns is not None:
            argv = netns_mod.in_netns(self.netns, *argv)  # nsenter execs minio: the Proc's pid is the server's
        self.proc = stack.add(procs.Proc("minio", argv, self.workdir / "minio.log", env=env))
        procs.wait_until("minio to be ready", self._ready, 60, self.proc)
        return self


def start_minio(
    stack: procs.ProcStack, workdir: Path, tls: bool = False, netns: str | None = None, host: str = "127.0.0.1"
) -> MinioServer:
    return MinioServer(workdir, tls=tls, netns=netns, host=host).start(stack)
