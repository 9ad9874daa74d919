"""TLS means verified, against real servers with real certificates (issue 13, class 7).

A throw-away CA issues one server certificate for ``localhost`` and ``db.mlinfra.test`` only (not for
127.0.0.1); another CA plays the wrong one. PostgreSQL (ssl=on) and Redis (tls-port) are started with that
certificate, and every way the spec can ask for TLS is tried through the operator's one translation
(``engines.connection``): the right CA connects, a wrong CA, the system roots (the certificate is not
publicly trusted) and a host the certificate does not name are refused with an error that says so,
insecureSkipVerify connects, and serverName verifies another name than the host (PostgreSQL; Redis refuses it).

Neo4j and Qdrant take the SSLContext of ``connection.ssl_context``; it is tried here against a real HTTPS
listener through httpx, the transport qdrant-client uses (that listener is not a Qdrant, and no Neo4j is
started with TLS: tests/unit/engines/test_engines_tls.py shows both drivers are handed this context).
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis as redis_lib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlinfra.client import connections
from mlinfra.devenv import procs
from mlinfra.devenv.postgres import PostgresServer
from mlinfra.devenv.redis import RedisServer
from mlinfra.engines import connection

SERVER_NAME = "db.mlinfra.test"  # in the certificate, resolvable by nobody: only serverName can name it
PASSWORD = "tls-test-password"


# --- a throw-away PKI ------------------------------------------------------------------------------------


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),  # signs certs and CRLs
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


@dataclass(frozen=True)
class Pki:
    ca_pem: str
    wrong_ca_pem: str
    cert: Path
    key: Path
    ca_file: Path


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("mlinfra-tls-test-ca")
    wrong, _ = _ca("mlinfra-tls-wrong-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # No IP address: a client connecting to 127.0.0.1 must be refused unless it verifies a name.
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(SERVER_NAME)]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(_pem(ca), _pem(wrong), directory / "server.crt", directory / "server.key", directory / "ca.crt")
    pki.cert.write_text(_pem(cert))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.key.chmod(0o600)
    pki.ca_file.write_text(pki.ca_pem)
    return pki


# --- the cases: (id, host, TLS settings, what happens) ---------------------------------------------------

CONNECTS = "connects"


def cases(pki_ca: str, wrong_ca: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """``expected`` is CONNECTS or a regex of the refusal (libpq's and Python's ssl wording)."""
    chain = r"certificate verify failed|self.signed|unable to get local issuer"
    return [
        ("ca", "localhost", {"ca_cert": pki_ca}, CONNECTS),
        ("wrong-ca", "localhost", {"ca_cert": wrong_ca}, chain),
        ("system-roots", "localhost", {}, chain),
        ("host-not-in-cert", "127.0.0.1", {"ca_cert": pki_ca}, r"does not match|mismatch|doesn't match|not valid for"),
        ("insecure", "127.0.0.1", {"insecure_skip_verify": True}, CONNECTS),
        ("insecure-wrong-ca", "127.0.0.1", {"ca_cert": wrong_ca, "insecure_skip_verify": True}, CONNECTS),
        ("server-name", "127.0.0.1", {"ca_cert": pki_ca, "server_name": SERVER_NAME}, CONNECTS),
        (
            "wrong-server-name",
            "127.0.0.1",
            {"ca_cert": pki_ca, "server_name": "other.mlinfra.test"},
            r"does not match|mismatch|doesn't match|not valid for",
        ),
    ]


CASE_IDS = [case[0] for case in cases("", "")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("tls-pki"))


@pytest.fixture(scope="module")
def stack() -> Iterator[procs.ProcStack]:
    with procs.ProcStack() as s:
        yield s


def case(pki: Pki, name: str) -> tuple[str, dict[str, Any], str]:
    found = {c[0]: c[1:] for c in cases(pki.ca_pem, pki.wrong_ca_pem)}
    return found[name]


# --- PostgreSQL -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_tls(pki: Pki, stack: procs.ProcStack, tmp_path_factory: pytest.TempPathFactory) -> PostgresServer:
    workdir = tmp_path_factory.mktemp("pg-tls")
    tls_dir = workdir / "tls"  # inside workdir: init() gives it to the server's user (the key must be its own)
    tls_dir.mkdir()
    for source in (pki.cert, pki.key):
        (tls_dir / source.name).write_bytes(source.read_bytes())
    (tls_dir / pki.key.name).chmod(0o600)
    conf = f"ssl = on\nssl_cert_file = '{tls_dir / 'server.crt'}'\nssl_key_file = '{tls_dir / 'server.key'}'\n"
    return PostgresServer(workdir, "tls", PASSWORD, conf=conf).init().start(stack)


@pytest.mark.parametrize("name", CASE_IDS)
def test_postgres_tls(pki: Pki, pg_tls: PostgresServer, name: str) -> None:
    host, tls, expected = case(pki, name)
    info = connection.ConnectionInfo.for_engine("postgres", host, PASSWORD, port=pg_tls.port, tls=True, **tls)
    if expected == CONNECTS:
        with connection.postgres(info, connect_timeout=10) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)  # really encrypted, not a plain fallback
        return
    with pytest.raises(psycopg.OperationalError, match=expected) as refused, connection.postgres(info):
        pass
    assert PASSWORD not in str(refused.value)


def test_postgres_without_tls_is_plain_even_where_the_server_offers_tls(pg_tls: PostgresServer) -> None:
    info = connection.ConnectionInfo.for_engine("postgres", "127.0.0.1", PASSWORD, port=pg_tls.port)
    with connection.postgres(info, connect_timeout=10) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (False,)


def test_postgres_settings_travel_through_the_published_secret(pki: Pki, pg_tls: PostgresServer) -> None:
    # What a sync Job or the SDK does: parse <name>-conn, connect with the SDK's own helper.
    published = connection.ConnectionInfo.for_engine(
        "postgres", "127.0.0.1", PASSWORD, port=pg_tls.port, tls=True, ca_cert=pki.ca_pem, server_name=SERVER_NAME
    ).to_secret_data()
    info = connections.from_mapping(published)
    with connections.postgres_connect(info) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    without_name = {key: value for key, value in published.items() if key != connection.SERVER_NAME_KEY}
    with pytest.raises(psycopg.OperationalError, match="does not match"):
        connections.postgres_connect(connections.from_mapping(without_name)).close()


# --- Redis ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_tls(pki: Pki, stack: procs.ProcStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[RedisServer, int]:
    tls_port = procs.free_port()
    config = (
        f"tls-port {tls_port}\ntls-cert-file {pki.cert}\ntls-key-file {pki.key}\n"
        f"tls-ca-cert-file {pki.ca_file}\ntls-auth-clients no\n"
    )
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), "tls", PASSWORD, config=config).start(stack)
    return server, tls_port


def redis_info(host: str, port: int, **tls: Any) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine("redis", host, PASSWORD, port=port, tls=True, **tls)


@pytest.mark.parametrize("name", CASE_IDS)
def test_redis_tls(pki: Pki, redis_tls: tuple[RedisServer, int], name: str) -> None:
    host, tls, expected = case(pki, name)
    info = redis_info(host, redis_tls[1], **tls)
    if "server_name" in tls:
        # redis-py cannot verify another name than the host: refused before any connection (and by the API).
        with pytest.raises(connection.TLSNotSupported, match="serverName is not supported for redis"):
            connection.redis_client(info, 5)
        return
    client = connection.redis_client(info, 5)
    try:
        if expected == CONNECTS:
            assert client.ping() is True
            return
        with pytest.raises(redis_lib.ConnectionError, match=expected) as refused:
            client.ping()
        assert PASSWORD not in str(refused.value)
    finally:
        client.close()


@pytest.mark.parametrize("name", ["ca", "insecure", "host-not-in-cert", "system-roots"])
def test_redis_asyncio_client_verifies_the_same(pki: Pki, redis_tls: tuple[RedisServer, int], name: str) -> None:
    # The SDK's asyncio client: redis-py's asyncio SSL defaults differ from the sync ones, the settings do not.
    host, tls, expected = case(pki, name)
    info = redis_info(host, redis_tls[1], **tls)

    async def ping() -> bool:
        client = connections.redis_async_client(info, 5)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    if expected == CONNECTS:
        assert asyncio.run(ping()) is True
    else:
        with pytest.raises(redis_lib.ConnectionError, match=expected):
            asyncio.run(ping())


# --- the SSLContext of neo4j and qdrant, against a real HTTPS listener (not a Qdrant) ---------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def https_port(pki: Pki) -> Iterator[int]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.cert, pki.key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("name", CASE_IDS)
def test_ssl_context_over_httpx(pki: Pki, https_port: int, name: str) -> None:
    host, tls, expected = case(pki, name)
    info = connection.ConnectionInfo.for_engine("qdrant", host, "", port=https_port, tls=True, **tls)
    verify = connection.qdrant_kwargs(info, 5)["verify"]  # what qdrant-client hands its httpx client
    with httpx.Client(verify=verify, timeout=5) as client:
        if expected == CONNECTS:
            assert client.get(info.uri).text == "hello"
        else:
            with pytest.raises(httpx.ConnectError, match=expected):
                client.get(info.uri)
