"""The S3 target: backup objects in a bucket under a prefix, through minio-py (any S3-compatible store).

Every request has a deadline (urllib3 connect/read timeouts) and at most :data:`RETRIES` retries, so a dead
endpoint fails a backup in seconds instead of minio-py's default five minutes times five. Objects of unknown
size go up as multipart uploads of ``part_size`` parts, so memory stays bounded whatever the size; S3 makes an
object visible only when its upload completes, which gives the whole-or-nothing ``put`` of the interface.

Errors become :class:`~mlinfra.backup.target.TargetError` (:class:`~mlinfra.backup.target.NotFound` for a
missing key) whose message names the endpoint, bucket and key and the S3 error code (``NoSuchBucket``,
``AccessDenied``, ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``) or the network failure (connection
refused, TLS verification failed, timed out); never a credential.
"""

from __future__ import annotations

import io
import os
import ssl
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE, check_bucket_name
from minio.sse import Sse, SseCustomerKey, SseS3
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ResponseError,
    SSLError,
    TimeoutError,
)

from mlinfra.backup.target import CHUNK, NotFound, ObjectInfo, TargetError, check_key

RETRIES = 2
PART_SIZE = 16 << 20
TMP_MARK = ".tmp-"  # last path component of objects that are not backups (the check's probe), as in volumes

SseMode = Literal["none", "s3", "c"]


class S3Target:
    """Objects ``<prefix>/<key>`` in ``bucket`` at ``endpoint`` (``host:port``).

    ``secure`` uses TLS, verified against ``ca`` (PEM bytes; otherwise the usual public CAs) unless
    ``insecure``. ``sse`` asks the server to encrypt at rest: ``"s3"`` with keys it manages (SSE-S3), ``"c"``
    with ``sse_key`` (32 bytes) that only this client holds (SSE-C, TLS only: the key travels with every
    request, and a restore needs the same key).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        prefix: str = "",
        region: str | None = None,
        secure: bool = True,
        ca: bytes | None = None,
        insecure: bool = False,
        sse: SseMode = "none",
        sse_key: bytes | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        part_size: int = PART_SIZE,
        parallel_uploads: int = 2,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.secure = secure
        # Masked in messages should a server echo them; a short value would mask innocent words instead.
        self._hidden = tuple(v for v in (secret_key, sse_key.hex() if sse_key else None) if v and len(v) >= 8)
        try:
            check_bucket_name(bucket)
        except ValueError:
            raise TargetError(f"invalid bucket name {bucket!r} for {self._where()}") from None
        if self.prefix:
            try:
                check_key(self.prefix)
            except ValueError:
                raise TargetError(f"invalid prefix {prefix!r} for {self._where()}") from None
        self._root = f"{self.prefix}/" if self.prefix else ""
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")
        self.part_size = part_size
        self.parallel_uploads = max(1, parallel_uploads)
        self._sse, self._ssec = self._encryption(sse, sse_key)
        http = self._pool(ca, insecure, connect_timeout, read_timeout)
        try:
            self._client = Minio(
                endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http
            )
        except ValueError as exc:  # an endpoint with a path or a scheme, a malformed region
            raise TargetError(f"invalid S3 endpoint or region for {self._where()}: {exc}") from None

    def _encryption(self, sse: SseMode, key: bytes | None) -> tuple[Sse | None, SseCustomerKey | None]:
        if sse == "none":
            return None, None
        if sse == "s3":
            return SseS3(), None
        if sse == "c":
            if key is None or len(key) != 32:
                raise TargetError(f"SSE-C for {self.describe()} needs a 32-byte key")
            if not self.secure:
                raise TargetError(f"SSE-C for {self.describe()} needs TLS: the key is sent with every request")
            ssec = SseCustomerKey(key)
            return ssec, ssec
        raise ValueError(f"unknown server-side encryption {sse!r}: none, s3 or c")

    def _pool(self, ca: bytes | None, insecure: bool, connect: float, read: float) -> urllib3.PoolManager:
        retries = urllib3.Retry(total=RETRIES, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
        kwargs: dict[str, Any] = {}
        if self.secure and insecure:
            kwargs["cert_reqs"] = "CERT_NONE"
        elif self.secure and ca is not None:
            try:
                # Only this CA, as libpq's sslrootcert: the system's public CAs do not vouch for a private S3.
                kwargs["ssl_context"] = ssl.create_default_context(cadata=ca.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError):
                raise TargetError(f"the CA bundle for {self._where()} is not valid PEM") from None
        elif self.secure:
            kwargs.update(cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())
        return urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect, read=read), retries=retries, maxsize=4, **kwargs
        )

    def _where(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"s3://{self.bucket}/{self.prefix} at {scheme}://{self.endpoint}"

    def describe(self) -> str:
        return self._where()

    def _name(self, key: str) -> str:
        return self._root + check_key(key)

    def _error(self, what: str, exc: BaseException) -> TargetError:
        """A TargetError for ``exc`` raised while doing ``what``, without any credential in it."""
        reason = _reason(exc)
        for value in self._hidden:
            reason = reason.replace(value, "***")
        message = f"{what} at {self._where()}: {reason}"
        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject"):
            return NotFound(message)
        return TargetError(message)

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        name = self._name(key)
        try:
            self._client.put_object(
                self.bucket,
                name,
                source,
                length=-1 if size is None else size,
                part_size=self.part_size,
                num_parallel_uploads=self.parallel_uploads,
                sse=self._sse,
            )
        except (MinioException, HTTPError, OSError, ValueError) as exc:
            raise self._error(f"cannot write {name}", exc) from None

    def get(self, key: str, sink: BinaryIO) -> None:
        name = self._name(key)
        try:
            response = self._client.get_object(self.bucket, name, ssec=self._ssec)
        except (MinioException, HTTPError, OSError) as exc:
            error = self._error(f"cannot read {name}", exc)
            if isinstance(error, NotFound):
                raise NotFound(f"{key} not found in {self._where()}") from None
            raise error from None
        try:
            for chunk in response.stream(CHUNK):
                sink.write(chunk)
        except (HTTPError, OSError) as exc:
            raise self._error(f"reading {name} broke off", exc) from None
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for obj in self._client.list_objects(self.bucket, prefix=self._root + prefix, recursive=True):
                name = obj.object_name or ""
                if obj.is_dir or name.rsplit("/", 1)[-1].startswith(TMP_MARK):
                    continue
                assert obj.last_modified is not None and obj.size is not None
                yield ObjectInfo(name[len(self._root) :], obj.size, obj.last_modified)
        except (MinioException, HTTPError, OSError) as exc:
            raise self._error(f"cannot list {self._root + prefix}*", exc) from None

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self._client.remove_object(self.bucket, name)
        except (MinioException, HTTPError, OSError) as exc:
            raise self._error(f"cannot delete {name}", exc) from None

    def check(self) -> None:
        """Write and remove a probe object under the prefix, then list the prefix: the bucket exists, the
        credentials are accepted and allow writing, deleting and listing."""
        probe = f"{TMP_MARK}check.{os.urandom(4).hex()}"
        self.put(probe, io.BytesIO(b""), 0)
        self.delete(probe)
        for _ in self.list(""):
            break


def _reason(exc: BaseException) -> str:
    """What went wrong, in words and with the S3 error code when the server gave one."""
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}" if exc.message else str(exc.code)
    if isinstance(exc, ServerError):
        return f"server error (HTTP {exc.status_code})"
    if isinstance(exc, InvalidResponseError):
        return "the endpoint did not answer like S3 (a non-XML response)"
    if isinstance(exc, MaxRetryError):
        return _reason(exc.reason) if exc.reason is not None else "too many retries"
    if isinstance(exc, SSLError):
        cause = exc.__cause__ or (exc.args[0] if exc.args else exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS verification failed: {cause.verify_message or cause.reason}"
        return f"TLS error: {cause}"
    if isinstance(exc, NewConnectionError):
        cause = exc.__cause__
        detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause or exc)
        return f"cannot connect: {detail}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ResponseError):
        return f"server error after {RETRIES} retries ({exc})"
    if isinstance(exc, ProtocolError):
        return f"connection broken: {exc.args[0] if exc.args else exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
