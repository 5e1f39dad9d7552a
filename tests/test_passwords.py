"""Password hashes: scrypt round trips, compatibility with passlib/RFC 7914, and precise
errors for everything an operator might paste into password_hash."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import passwords
from daemon.passwords import hash_password, parse_hash

CHEAP = {"ln": 4, "r": 8, "p": 1}  # microseconds instead of 50 ms per hash


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _scrypt_text(salt: bytes, digest: bytes, params: str = "ln=4,r=8,p=1") -> str:
    return f"$scrypt${params}${_b64(salt)}${_b64(digest)}"


def test_round_trip_and_wrong_password():
    text = hash_password("correct horse", **CHEAP)
    parsed = parse_hash(text)
    assert parsed.verify("correct horse")
    assert not parsed.verify("correct horsE")
    assert not parsed.verify("")


def test_format_is_modular_crypt_with_unpadded_base64():
    text = hash_password("pw", **CHEAP)
    assert re.fullmatch(r"\$scrypt\$ln=4,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", text)


def test_salt_is_random():
    assert hash_password("pw", **CHEAP) != hash_password("pw", **CHEAP)


def test_default_cost_is_n_2_14_r_8_p_1():
    text = hash_password("s3cret")
    assert text.startswith("$scrypt$ln=14,r=8,p=1$")
    assert parse_hash(text).verify("s3cret")


def test_rfc7914_vector_verifies():
    digest = bytes.fromhex(
        "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
        "d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887")
    text = _scrypt_text(b"SodiumChloride", digest, "ln=14,r=8,p=1")
    assert parse_hash(text).verify("pleaseletmein")


def test_hash_written_by_another_tool_verifies():
    # A passlib-style hash built directly with hashlib, with '=' padding left on.
    salt = bytes(range(16))
    digest = hashlib.scrypt(b"tr0ub4dor", salt=salt, n=2**4, r=8, p=1, dklen=32)
    text = "$scrypt$ln=4,r=8,p=1$" + base64.b64encode(salt).decode() + "$" + \
        base64.b64encode(digest).decode()
    assert "=" in text
    assert parse_hash(text).verify("tr0ub4dor")


def test_utf8_and_bytes_passwords():
    parsed = parse_hash(hash_password("pässwörd", **CHEAP))
    assert parsed.verify("pässwörd")
    assert parsed.verify("pässwörd".encode())
    assert not parsed.verify("passwort")


def test_surrogateescape_round_trip_and_lone_surrogate():
    raw = b"\xffbinary"
    parsed = parse_hash(hash_password(raw.decode("utf-8", "surrogateescape"), **CHEAP))
    assert parsed.verify(raw)
    assert not parsed.verify("\ud800")


def test_repr_hides_salt_and_hash():
    text = hash_password("pw", **CHEAP)
    salt, digest = text.split("$")[3:5]
    shown = repr(parse_hash(text))
    assert "scrypt" in shown
    assert salt not in shown
    assert digest not in shown


def test_empty_password_is_not_hashed():
    with pytest.raises(ValueError, match="empty password"):
        hash_password("")


def test_hash_password_bounds_its_cost():
    with pytest.raises(ValueError, match="MiB"):
        hash_password("pw", ln=22, r=8)


GOOD_SALT = _b64(b"0123456789abcdef")
GOOD_HASH = _b64(b"x" * 32)


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty"),
    ("   ", "empty"),
    ("hunter2", "plaintext password.*egen user hash-password"),
    ("scrypt$ln=14", "plaintext"),
    ("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", "unknown hash scheme '2b'"),
    ("$6$rounds=5000$salt$hash", "unknown hash scheme '6'"),
    (f"$scrypt$ln=14,r=8,p=1${GOOD_SALT}", "3 .*-separated fields instead of 4"),
    (f"$scrypt$ln=14,r=8${GOOD_SALT}${GOOD_HASH}", "missing parameter 'p'"),
    (f"$scrypt$ln=14,r=8,p=1,x=2${GOOD_SALT}${GOOD_HASH}", "unknown parameter 'x'"),
    (f"$scrypt$ln=14,r=8,r=8${GOOD_SALT}${GOOD_HASH}", "given twice"),
    (f"$scrypt$ln=fourteen,r=8,p=1${GOOD_SALT}${GOOD_HASH}", "not name=number"),
    (f"$scrypt$ln=0,r=8,p=1${GOOD_SALT}${GOOD_HASH}", "ln=0 is out of range"),
    (f"$scrypt$ln=14,r=0,p=1${GOOD_SALT}${GOOD_HASH}", "r=0 is out of range"),
    (f"$scrypt$ln=14,r=8,p=99${GOOD_SALT}${GOOD_HASH}", "p=99 is out of range"),
    (f"$scrypt$ln=24,r=8,p=1${GOOD_SALT}${GOOD_HASH}", "needs 16384 MiB.*at most 256"),
    (f"$scrypt$ln=14,r=8,p=1$sa!t${GOOD_HASH}", "salt is not base64.*'!'"),
    (f"$scrypt$ln=14,r=8,p=1${GOOD_SALT}$abcde", "hash is not base64"),
    (f"$scrypt$ln=14,r=8,p=1$${GOOD_HASH}", "salt is empty"),
    (f"$scrypt$ln=14,r=8,p=1${_b64(b'short')}${GOOD_HASH}", "salt is 5 bytes"),
    (f"$scrypt$ln=14,r=8,p=1${GOOD_SALT}${_b64(b'x' * 8)}", "hash is 8 bytes"),
])
def test_malformed_hashes_say_what_is_wrong(text, expected):
    with pytest.raises(ValueError, match=expected):
        parse_hash(text)


ARGON2_EXAMPLE = ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA"
                  "$SqlVijFGiPG+935vDSGEsA6sY7GxmzNdd5OuNz4X+qI")


def test_argon2_without_the_package_says_what_to_do(monkeypatch):
    monkeypatch.setattr(passwords, "_argon2", None)
    with pytest.raises(ValueError, match=r"argon2-cffi.*scrypt"):
        parse_hash(ARGON2_EXAMPLE)


@pytest.mark.parametrize(("text", "expected"), [
    ("$argon2id$v=19$m=65536,t=3$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "missing parameter 't'|"
     "missing parameter 'p'"),
    ("$argon2id$v=7$m=65536,t=3,p=4$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "version v=7"),
    ("$argon2id$v=19$m=9999999,t=3,p=4$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "m=9999999"),
    ("$argon2id$v=19$m=65536,t=99,p=4$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "t=99"),
    ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ", "has the form"),
])
def test_malformed_argon2_hashes(monkeypatch, text, expected):
    # The structure is checked by egen itself, so this runs without argon2-cffi too.
    monkeypatch.setattr(passwords, "_argon2", object())
    with pytest.raises(ValueError, match=expected):
        parse_hash(text)


def test_argon2_verifies_when_installed():
    argon2 = pytest.importorskip("argon2")
    text = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("pw")
    parsed = parse_hash(text)
    assert parsed.scheme == "argon2id"
    assert parsed.verify("pw")
    assert not parsed.verify("pW")


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_password_round_trips(password):
    parsed = parse_hash(hash_password(password, **CHEAP))
    assert parsed.verify(password)
    assert not parsed.verify(password + "x")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_parse_hash_only_raises_value_error(text):
    with contextlib.suppress(ValueError):
        parse_hash(text)
    with contextlib.suppress(ValueError):
        parse_hash("$scrypt$" + text)
