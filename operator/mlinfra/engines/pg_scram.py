"""PostgreSQL passwords as SCRAM-SHA-256 verifiers, computed here so the password itself never reaches the server.

A statement that sets a password (``ALTER ROLE ... PASSWORD '...'``) is logged as written whenever the server's
``log_statement`` (``ddl`` or ``all``), ``log_min_duration_statement`` or ``log_min_error_statement`` lets it,
and the operator does not own the logging configuration of an external server. PostgreSQL stores a password
given in its verifier form as is (RFC 7677 / the format of ``pg_authid.rolpassword``), so sending the verifier
keeps the password out of every log; a verifier cannot be used to log in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SALT_BYTES = 16


def verifier(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` for ``password``.

    PostgreSQL prepares the password with SASLprep first; the operator's generated passwords are ASCII
    (``secrets.token_urlsafe``), for which SASLprep is the identity, so other passwords are refused rather than
    hashed differently from what the server would compute."""
    if not password.isascii() or not password.isprintable():
        raise ValueError("a SCRAM verifier is only computed here for printable ASCII passwords")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
