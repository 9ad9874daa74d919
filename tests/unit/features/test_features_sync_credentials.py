"""The sync credentials' pure parts: names, the Redis ACL rules, the grants grouped per privilege."""

from __future__ import annotations

import hashlib

import pytest

from mlinfra.engines import pg_roles
from mlinfra.features import syncrole, syncuser

pytestmark = pytest.mark.unit


def test_names_are_bounded_injective_and_apart_from_the_registrys() -> None:
    assert len(syncrole.role_name("n" * 63, "v" * 253).encode()) <= pg_roles.MAX_IDENTIFIER
    assert syncrole.role_name("team-x", "models") != syncrole.role_name("team", "x-models")
    assert syncrole.role_name("a", "b") not in {pg_roles.role_name("a", "b", k) for k in ("writer", "reader")}
    assert syncrole.secret_name("v") == "v-sync-offline" and syncuser.secret_name("v") == "v-sync-online"
    assert len(syncrole.secret_name("v" * 253)) <= 253 and syncrole.secret_name("v" * 253).endswith("-sync-offline")
    assert syncrole.secret_name("v" * 253) != syncrole.secret_name("w" * 253)


def test_the_acl_rules_name_the_views_keys_and_the_password_only_by_its_hash() -> None:
    rules = syncuser.rules("ns", "a.b", "s3cret-password-0123456789")
    assert rules[0] == "reset" and "on" in rules and "resetchannels" in rules and "-@all" in rules
    assert f"#{hashlib.sha256(b's3cret-password-0123456789').hexdigest()}" in rules
    assert not any("s3cret" in r for r in rules)
    assert {r for r in rules if r.startswith("~")} == {"~fv:ns:a.b", "~fv:ns:a.b:*"}
    assert {r[1:] for r in rules if r.startswith("+")} == set(syncuser.COMMANDS)
    assert "keys" not in syncuser.COMMANDS and "flushall" not in syncuser.COMMANDS


def test_glob_characters_of_a_name_are_literal_in_the_key_patterns() -> None:
    assert syncuser.key_patterns("n", "v*[x]?") == ("~fv:n:v\\*\\[x\\]\\?", "~fv:n:v\\*\\[x\\]\\?:*")
