"""TLS settings translated per driver: verified unless insecureSkipVerify, CA or system roots, server name.

Pure translations only (the params and contexts each driver gets); tests/integration/test_engine_tls.py runs
them against real PostgreSQL and Redis servers with real certificates, and the shared SSLContext (neo4j,
qdrant) against a real TLS listener.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
from typing import Any

import psycopg
import pytest

from mlinfra.engines import connection, qdrant

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def info(engine: connection.Engine, **tls: Any) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine(engine, "127.0.0.1", "pw", **tls)


# (ca_cert, server_name, insecure_skip_verify): every combination the spec can express with TLS on.
COMBINATIONS = [
    (ca, name, insecure) for ca in (None, CA) for name in (None, "db.example.com") for insecure in (False, True)
]


# --- the connection Secret carries every setting; old Secrets read as the defaults ------------------------


@pytest.mark.parametrize(("ca", "name", "insecure"), COMBINATIONS)
def test_secret_round_trips_every_tls_setting(ca: str | None, name: str | None, insecure: bool) -> None:
    original = info("postgres", tls=True, ca_cert=ca, server_name=name, insecure_skip_verify=insecure)
    data = original.to_secret_data()
    assert (connection.SERVER_NAME_KEY in data) == (name is not None)
    assert (connection.INSECURE_KEY in data) == insecure
    assert connection.ConnectionInfo.from_secret_data(data) == original


def test_a_secret_written_before_these_keys_existed_reads_as_verified_against_the_host() -> None:
    old = {"engine": "postgres", "host": "db", "port": "5432", "tls": "true", "password": "pw"}
    parsed = connection.ConnectionInfo.from_secret_data(old)
    assert (parsed.tls, parsed.server_name, parsed.insecure_skip_verify, parsed.verified) == (True, None, False, True)


def test_a_bad_insecure_flag_names_the_key() -> None:
    data = {"engine": "redis", "host": "h", "port": "1", "tls": "true", connection.INSECURE_KEY: "perhaps"}
    with pytest.raises(ValueError, match="key 'insecureSkipVerify' must be true or false"):
        connection.ConnectionInfo.from_secret_data(data)


def test_repr_shows_the_tls_settings_but_not_the_ca() -> None:
    text = repr(info("neo4j", tls=True, ca_cert=CA, server_name="n.example.com", insecure_skip_verify=True))
    assert "server_name='n.example.com'" in text and "insecure_skip_verify=True" in text
    assert "MIIB" not in text and "ca_cert=<set>" in text


@pytest.mark.parametrize(
    ("tls", "uri"),
    [
        ({}, "postgresql://postgres@127.0.0.1:5432/postgres"),
        ({"tls": True}, "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert=system"),
        ({"tls": True, "ca_cert": CA}, "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=verify-full"),
        ({"tls": True, "insecure_skip_verify": True}, "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=require"),
    ],
)
def test_postgres_uri_says_what_is_verified(tls: dict[str, Any], uri: str) -> None:
    assert info("postgres", **tls).uri == uri


def test_neo4j_uri_says_when_the_certificate_is_not_checked() -> None:
    assert info("neo4j", tls=True).uri == "neo4j+s://127.0.0.1:7687"
    assert info("neo4j", tls=True, insecure_skip_verify=True).uri == "neo4j+ssc://127.0.0.1:7687"


# --- PostgreSQL (libpq) ---------------------------------------------------------------------------------


def pg_params(conn: connection.ConnectionInfo) -> dict[str, Any]:
    with connection.libpq_params(conn, 5, "test") as params:
        ca_file = params.get("sslrootcert")
        if ca_file not in (None, "system"):
            # The CA reaches libpq as a private file holding exactly the CA, alive while the params are.
            assert os.stat(ca_file).st_mode & 0o077 == 0
            with open(ca_file) as f:
                assert f.read() == conn.ca_cert
            params["sslrootcert"] = "<file>"
        return dict(params)


def test_postgres_without_tls_is_plain_tcp() -> None:
    # Not libpq's default "prefer": TLS off means plain, exactly as the spec says.
    assert pg_params(info("postgres"))["sslmode"] == "disable"


@pytest.mark.parametrize(("ca", "name", "insecure"), COMBINATIONS)
def test_postgres_tls_params(ca: str | None, name: str | None, insecure: bool) -> None:
    params = pg_params(info("postgres", tls=True, ca_cert=ca, server_name=name, insecure_skip_verify=insecure))
    if insecure:
        assert params["sslmode"] == "require"  # encrypted, nothing checked
        assert "sslrootcert" not in params  # a CA file would make libpq verify after all
    else:
        assert params["sslmode"] == "verify-full"  # chain and host name
        assert params["sslrootcert"] == ("<file>" if ca else "system")
    if name:
        # libpq checks ``host`` and connects to ``hostaddr``: the name to verify, the endpoint's address.
        assert (params["host"], params["hostaddr"]) == (name, "127.0.0.1")
    else:
        assert params["host"] == "127.0.0.1" and "hostaddr" not in params


def test_postgres_server_name_keeps_every_address_of_the_host() -> None:
    conn = dataclasses.replace(info("postgres", tls=True, server_name="db.example.com"), host="localhost")
    params = pg_params(conn)
    addresses = params["hostaddr"].split(",")
    expected = {entry[4][0] for entry in socket.getaddrinfo("localhost", 5432, type=socket.SOCK_STREAM)}
    assert set(addresses) == expected
    assert params["host"].split(",") == ["db.example.com"] * len(addresses)


def test_postgres_server_name_of_an_unresolvable_host_is_a_connection_error() -> None:
    conn = dataclasses.replace(info("postgres", tls=True, server_name="db.example.com"), host="nowhere.invalid")
    with pytest.raises(psycopg.OperationalError, match=r"could not resolve the PostgreSQL host 'nowhere\.invalid'"):
        pg_params(conn)


def test_postgres_system_roots_need_libpq_16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psycopg.pq, "version", lambda: 150008)
    with pytest.raises(connection.TLSNotSupported, match="libpq 16 or newer"):
        pg_params(info("postgres", tls=True))
    assert pg_params(info("postgres", tls=True, ca_cert=CA))["sslrootcert"] == "<file>"  # a CA works anywhere


# --- Redis (redis-py) -----------------------------------------------------------------------------------


def test_redis_without_tls_sets_no_tls_options() -> None:
    params = connection.redis_kwargs(info("redis"), 3)
    assert params["ssl"] is False
    assert not {key for key in params if key.startswith("ssl_")}


@pytest.mark.parametrize(("ca", "insecure"), [(None, False), (CA, False), (None, True), (CA, True)])
def test_redis_tls_params(ca: str | None, insecure: bool) -> None:
    params = connection.redis_kwargs(info("redis", tls=True, ca_cert=ca, insecure_skip_verify=insecure), 3)
    assert params["ssl"] is True
    if insecure:
        assert (params["ssl_cert_reqs"], params["ssl_check_hostname"], params["ssl_ca_data"]) == ("none", False, None)
    else:
        assert (params["ssl_cert_reqs"], params["ssl_check_hostname"], params["ssl_ca_data"]) == ("required", True, ca)


def test_redis_refuses_a_server_name_it_cannot_verify() -> None:
    with pytest.raises(connection.TLSNotSupported, match="serverName is not supported for redis"):
        connection.redis_kwargs(info("redis", tls=True, server_name="kv.example.com"), 3)


def test_redis_clients_take_the_settings() -> None:
    # The settings reach redis-py's connections as given (the sync client; the asyncio one takes the same).
    client = connection.redis_client(info("redis", tls=True, ca_cert=CA))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"], kwargs["ssl_ca_data"]) == ("required", True, CA)


# --- the SSLContext of neo4j and qdrant ----------------------------------------------------------------


@pytest.mark.parametrize(("ca", "name", "insecure"), COMBINATIONS)
def test_ssl_context(ca: str | None, name: str | None, insecure: bool, tmp_path: Any) -> None:
    pem = _ca_pem() if ca else None
    context = connection.ssl_context(
        info("neo4j", tls=True, ca_cert=pem, server_name=name, insecure_skip_verify=insecure)
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    if insecure:
        assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
    else:
        assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    if ca and not insecure:
        # Only the given CA: the system roots are not trusted besides it.
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "tls-test-ca"),),)]
    assert getattr(context, "server_name", None) == name


def _ca_pem() -> str:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_the_server_name_replaces_the_host_the_driver_passes() -> None:
    context = connection.ssl_context(info("qdrant", tls=True, server_name="q.example.com"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    assert context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1").server_hostname == "q.example.com"
    with socket.socket() as sock:
        wrapped = context.wrap_socket(sock, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        assert wrapped.server_hostname == "q.example.com"
    plain = connection.ssl_context(info("qdrant", tls=True))
    assert plain.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="127.0.0.1").server_hostname == "127.0.0.1"


@pytest.mark.parametrize(("ca", "name", "insecure"), COMBINATIONS)
def test_neo4j_driver_gets_the_context_over_bolt(ca: str | None, name: str | None, insecure: bool) -> None:
    conn = info("neo4j", tls=True, ca_cert=_ca_pem() if ca else None, server_name=name, insecure_skip_verify=insecure)
    uri, settings = connection.neo4j_settings(conn, 3)
    assert uri == "bolt://127.0.0.1:7687"  # the driver takes its own ssl_context only with the plain schemes
    context = settings["ssl_context"]
    assert context.verify_mode == (ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED)
    assert getattr(context, "server_name", None) == name
    assert "encrypted" not in settings and "trusted_certificates" not in settings
    with connection.neo4j_driver(conn, 3) as driver:  # the driver accepts it (it connects lazily)
        assert driver._pool.pool_config.get_ssl_context().verify_mode == context.verify_mode


def test_neo4j_without_tls_has_no_context() -> None:
    uri, settings = connection.neo4j_settings(info("neo4j"), 3)
    assert uri == "bolt://127.0.0.1:7687" and "ssl_context" not in settings


# --- Qdrant: qdrant-client's httpx client gets the context ----------------------------------------------


def _httpx_context(conn: connection.ConnectionInfo) -> ssl.SSLContext | None:
    with qdrant.open_client(conn) as client:
        api = client._client.openapi_client.client  # type: ignore[attr-defined]
        assert api.host == conn.uri
        pool = api._client._transport._pool
        return pool._ssl_context if conn.tls else None


def test_qdrant_without_tls_speaks_plain_http() -> None:
    conn = dataclasses.replace(info("qdrant"), password="")  # no API key over plain HTTP
    assert "verify" not in connection.qdrant_kwargs(conn, 5)
    assert conn.uri.startswith("http://")
    _httpx_context(conn)


@pytest.mark.parametrize(("ca", "name", "insecure"), COMBINATIONS)
def test_qdrant_client_verifies_like_the_other_engines(ca: str | None, name: str | None, insecure: bool) -> None:
    pem = _ca_pem() if ca else None
    conn = info("qdrant", tls=True, ca_cert=pem, server_name=name, insecure_skip_verify=insecure)
    context = _httpx_context(conn)
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (
        (ssl.CERT_NONE, False) if insecure else (ssl.CERT_REQUIRED, True)
    )
    assert getattr(context, "server_name", None) == name
    if pem and not insecure:
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "tls-test-ca"),),)]
