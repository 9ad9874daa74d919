"""Target logic without a server: key checking, where S3 keys land under the prefix, the S3 target's
configuration errors, and the reasons its messages give for each kind of failure (no credential in any)."""

from __future__ import annotations

import io
import os
import ssl
from pathlib import Path

import pytest
from minio.error import S3Error
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError, SSLError

from mlinfra.backup import s3
from mlinfra.backup.s3 import S3Target
from mlinfra.backup.target import NotFound, TargetError, VolumeTarget, check_key

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-value-that-must-never-show"


def _target(**options: object) -> S3Target:
    args: dict[str, object] = {
        "endpoint": "s3.example.test:9000",
        "bucket": "backups",
        "access_key": "AKIAEXAMPLE",
        "secret_key": SECRET,
        "prefix": "ns/store",
    }
    args.update(options)
    return S3Target(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["a", "a/b", "2026-11-30T10:00:00Z/manifest.json", ".tmp-x", "a/.hidden"])
def test_relative_keys_are_accepted(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", ".", "..", "a/../b", "./a"])
def test_keys_with_empty_dot_or_dotdot_parts_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        check_key(key)


def test_keys_live_under_the_prefix() -> None:
    assert _target()._name("b1/manifest") == "ns/store/b1/manifest"
    assert _target(prefix="/ns/store/")._name("k") == "ns/store/k"  # slashes around the prefix do not matter
    assert _target(prefix="")._name("k") == "k"
    with pytest.raises(ValueError):
        _target()._name("../escape")


def test_describe_names_the_place_and_no_secret() -> None:
    target = _target()
    assert target.describe() == "s3://backups/ns/store at https://s3.example.test:9000"
    assert _target(secure=False).describe().endswith("at http://s3.example.test:9000")
    assert SECRET not in target.describe() and SECRET not in repr(target)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bucket": "x"}, "invalid bucket name"),
        ({"endpoint": "https://s3.example.test/path"}, "invalid S3 endpoint"),
        ({"prefix": "a/../b"}, "invalid prefix"),
        ({"sse": "c"}, "32-byte key"),
        ({"sse": "c", "sse_key": b"short"}, "32-byte key"),
        ({"sse": "c", "sse_key": os.urandom(32), "secure": False}, "needs TLS"),
        ({"ca": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}, "not valid PEM"),
    ],
)
def test_configuration_errors_say_what_is_wrong(options: dict[str, object], message: str) -> None:
    with pytest.raises(TargetError, match=message) as caught:
        _target(**options)
    assert SECRET not in str(caught.value)


def test_parts_smaller_than_s3_allows_are_refused() -> None:
    with pytest.raises(ValueError, match="part_size"):
        _target(part_size=1 << 20)


def test_every_request_has_a_deadline_and_few_retries() -> None:
    pool = _target(connect_timeout=3, read_timeout=7)._client._http
    timeout = pool.connection_pool_kw["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (3, 7)
    assert pool.connection_pool_kw["retries"].total == s3.RETRIES <= 2


def _s3_error(code: str, message: str) -> S3Error:
    return S3Error(None, code, message, "/backups/k", "req", "host")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_s3_errors_keep_their_code(code: str) -> None:
    error = _target()._error("cannot write ns/store/k", _s3_error(code, "said the server"))
    assert type(error) is TargetError
    assert (
        str(error)
        == f"cannot write ns/store/k at s3://backups/ns/store at https://s3.example.test:9000: {code}: said the server"
    )


def test_a_missing_key_is_not_found() -> None:
    assert isinstance(_target()._error("cannot read k", _s3_error("NoSuchKey", "gone")), NotFound)


def test_a_server_echoing_the_secret_is_masked() -> None:
    error = _target()._error("cannot write k", _s3_error("SignatureDoesNotMatch", f"expected {SECRET}"))
    assert SECRET not in str(error) and "***" in str(error)


def test_network_failures_are_named() -> None:
    refused = NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert s3._reason(MaxRetryError(None, "/b", refused)) == "cannot connect: Connection refused"  # type: ignore[arg-type]

    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    verify.verify_message = "self-signed certificate"
    wrapped = SSLError(verify)
    wrapped.__cause__ = verify
    assert s3._reason(MaxRetryError(None, "/b", wrapped)) == "TLS verification failed: self-signed certificate"  # type: ignore[arg-type]

    assert s3._reason(ReadTimeoutError(None, "/b", "read timed out")) == "timed out"  # type: ignore[arg-type]
    assert s3._reason(OSError(5, "the dump died")) == "the dump died"


def test_a_volume_lists_only_under_the_prefix_and_an_impossible_prefix_lists_nothing(tmp_path: Path) -> None:
    volume = VolumeTarget(tmp_path)
    for key in ("ns/a/1", "ns/a/2", "ns/ab/3", "other/x"):
        volume.put(key, io.BytesIO(key.encode()))
    assert [o.key for o in volume.list("ns/a")] == ["ns/a/1", "ns/a/2", "ns/ab/3"]
    assert [o.key for o in volume.list("ns/a/")] == ["ns/a/1", "ns/a/2"]
    assert [o.key for o in volume.list("")] == ["ns/a/1", "ns/a/2", "ns/ab/3", "other/x"]
    assert list(volume.list("ns//a")) == [] and list(volume.list("../ns/")) == [] and list(volume.list("none/")) == []
