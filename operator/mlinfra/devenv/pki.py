"""A throw-away PKI for the local control plane: one CA, the API server's serving cert, client certs.

Keys are ECDSA P-256 (fast to generate, accepted by every component) and live only in the platform's
temporary directory.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    serving: CertPair
    sa_key: Path
    sa_pub: Path
    clients: dict[str, CertPair]


def _issue(
    directory: Path, ca: CertPair, stem: str, cn: str, org: str | None, server: bool, extra_sans: tuple[str, ...] = ()
) -> CertPair:
    """A certificate signed by the CA in ``ca`` (client, or server for 127.0.0.1/localhost + ``extra_sans``)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
        ]
        ips = ("127.0.0.1", "10.0.0.1", *extra_sans)
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pair.key, key)
    return pair


def issue_client(directory: Path, stem: str, cn: str, org: str | None) -> CertPair:
    """A client certificate from the CA that ``create_pki`` wrote into ``directory`` (e.g. a kubelet's
    ``system:node:<name>`` in group ``system:nodes``, issued when the node joins, not with the control plane)."""
    return _issue(directory, CertPair(directory / "ca.crt", directory / "ca.key"), stem, cn, org, server=False)


def create_pki(directory: Path, clients: dict[str, tuple[str, str | None]]) -> Pki:
    """Write a CA, a serving cert for 127.0.0.1/localhost, service-account keys and client certs.

    ``clients`` maps a file stem to (common name, organization): the API server maps CN to the user name
    and O to its group (``system:masters`` for an admin).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = _key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("mlinfra-local-ca"))
        .issuer_name(_name("mlinfra-local-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertPair(directory / "ca.crt", directory / "ca.key")
    ca.cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca.key, ca_key)

    serving = _issue(directory, ca, "apiserver", "kube-apiserver", None, server=True)
    issued = {stem: _issue(directory, ca, stem, cn, org, server=False) for stem, (cn, org) in clients.items()}

    sa = _key()
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _write_key(sa_key, sa)
    sa_pub.write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Pki(ca=ca, serving=serving, sa_key=sa_key, sa_pub=sa_pub, clients=issued)
