"""Password hashes for SMTP AUTH users: scrypt (stdlib) and, when installed, argon2.

The config holds only hashes, in the self-describing Modular Crypt format that passlib and
argon2-cffi also write, so an operator can move users between tools. Hashes are parsed at
config load (a malformed one stops the daemon before it listens) and their cost parameters
are bounded, because a hash with absurd parameters would let any AUTH attempt eat a
gigabyte of memory or seconds of CPU.

Verification is CPU-bound on purpose (~50 ms for scrypt at N=2^14): the SMTP server must
call `PasswordHash.verify` through `asyncio.to_thread`, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

_argon2: Any
try:  # optional: egen does not depend on argon2-cffi, it only verifies argon2 if present
    from argon2 import low_level as _argon2
except ImportError:  # pragma: no cover - depends on the environment
    _argon2 = None

# scrypt needs 128 * r * (N + p + 2) bytes; a config may not ask for more than this per
# verification (the default N=2^14, r=8 needs 16 MiB).
MAX_SCRYPT_MEMORY = 256 * 2**20
MAX_ARGON2_MEMORY_KIB = 2**20           # 1 GiB
MAX_ARGON2_TIME = 20
SALT_BYTES = 16
HASH_BYTES = 32
_MIN_SALT = 8
_HASH_LENGTHS = range(16, 65)

_ARGON2_TYPES = {"argon2id": "ID", "argon2i": "I", "argon2d": "D"}
_PARAM = re.compile(r"^([a-z]+)=(\d{1,10})$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _b64decode(text: str, what: str) -> bytes:
    """Standard alphabet, padding optional (passlib and argon2 omit it)."""
    if not text:
        raise ValueError(f"the {what} is empty")
    if not _B64.match(text):
        bad = next(c for c in text if not (c.isascii() and (c.isalnum() or c in "+/=")))
        raise ValueError(f"the {what} is not base64 (unexpected character {bad!r})")
    try:
        return base64.b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4),
                                validate=True)
    except binascii.Error:
        raise ValueError(f"the {what} is not base64 (wrong length {len(text)})") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _parse_params(text: str, expected: tuple[str, ...]) -> dict[str, int]:
    """'ln=14,r=8,p=1' -> {'ln': 14, 'r': 8, 'p': 1}, exactly the expected names."""
    params: dict[str, int] = {}
    for item in text.split(","):
        match = _PARAM.match(item)
        if not match:
            raise ValueError(f"parameter {item!r} is not name=number "
                             f"(expected {','.join(n + '=N' for n in expected)})")
        name, value = match.group(1), int(match.group(2))
        if name not in expected:
            raise ValueError(f"unknown parameter {name!r} (expected {', '.join(expected)})")
        if name in params:
            raise ValueError(f"parameter {name!r} is given twice")
        params[name] = value
    missing = [n for n in expected if n not in params]
    if missing:
        raise ValueError(f"missing parameter {', '.join(repr(n) for n in missing)}")
    return params


def _scrypt_memory(ln: int, r: int, p: int) -> int:
    return 128 * r * (2**ln + p + 2)


def _check_scrypt_params(ln: int, r: int, p: int) -> None:
    if not 1 <= ln <= 30:
        raise ValueError(f"scrypt ln={ln} is out of range (1..30; the default is 14)")
    if not 1 <= r <= 64:
        raise ValueError(f"scrypt r={r} is out of range (1..64; the default is 8)")
    if not 1 <= p <= 16:
        raise ValueError(f"scrypt p={p} is out of range (1..16; the default is 1)")
    memory = _scrypt_memory(ln, r, p)
    if memory > MAX_SCRYPT_MEMORY:
        raise ValueError(f"scrypt ln={ln},r={r} needs {memory // 2**20} MiB per verification; "
                         f"egen allows at most {MAX_SCRYPT_MEMORY // 2**20} MiB")


@dataclass(frozen=True)
class PasswordHash:
    """A parsed hash; `repr` shows the scheme and cost, never the salt or the hash."""

    scheme: str                                  # "scrypt", "argon2id", "argon2i", "argon2d"
    params: tuple[tuple[str, int], ...]
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    encoded: str = field(repr=False)             # the text it was parsed from

    def verify(self, password: str | bytes) -> bool:
        """Constant-time check. CPU-bound: call it via asyncio.to_thread.

        A str password is encoded as UTF-8 with surrogateescape, so bytes that a SASL
        layer decoded with surrogateescape come back as the bytes the client sent.
        """
        if isinstance(password, str):
            try:
                secret = password.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate no client could have sent
                return False
        else:
            secret = password
        if self.scheme == "scrypt":
            p = dict(self.params)
            derived = hashlib.scrypt(
                secret, salt=self.salt, n=2 ** p["ln"], r=p["r"], p=p["p"],
                maxmem=_scrypt_memory(p["ln"], p["r"], p["p"]) + 2**20, dklen=len(self.digest))
            return hmac.compare_digest(derived, self.digest)
        argon2 = _require_argon2()
        try:
            # libargon2 compares in constant time itself.
            return bool(argon2.verify_secret(self.encoded.encode("ascii"), secret,
                                             getattr(argon2.Type, _ARGON2_TYPES[self.scheme])))
        except argon2.VerificationError:  # includes VerifyMismatchError
            return False


def _require_argon2() -> Any:
    if _argon2 is None:
        raise ValueError("argon2 hashes need the argon2-cffi package, which is not installed: "
                         "install it (pip install argon2-cffi) or use a scrypt hash from "
                         "`egen user hash-password`")
    return _argon2


def hash_password(password: str, *, ln: int = 14, r: int = 8, p: int = 1) -> str:
    """A new scrypt hash with a random salt, for `egen user hash-password`.

    scrypt because it is in the standard library (OpenSSL), memory-hard, and readable by
    passlib; N=2^14, r=8, p=1 is the interactive-login cost from the scrypt paper.
    """
    if not password:
        raise ValueError("refusing to hash an empty password")
    _check_scrypt_params(ln, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8", "surrogateescape"), salt=salt, n=2**ln,
                            r=r, p=p, maxmem=_scrypt_memory(ln, r, p) + 2**20, dklen=HASH_BYTES)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64encode(salt)}${_b64encode(digest)}"


def parse_hash(text: str) -> PasswordHash:
    """Parse a configured hash; ValueError says exactly what is wrong with it."""
    text = text.strip()
    if not text:
        raise ValueError("the password hash is empty (use `egen user hash-password`)")
    if not text.startswith("$"):
        raise ValueError("this looks like a plaintext password, not a hash: egen stores only "
                         "hashes, use `egen user hash-password` to make one")
    parts = text.split("$")
    scheme = parts[1]
    if scheme == "scrypt":
        return _parse_scrypt(text, parts)
    if scheme in _ARGON2_TYPES:
        _require_argon2()
        return _parse_argon2(text, parts)
    raise ValueError(f"unknown hash scheme {scheme!r} (egen supports $scrypt$ and, with "
                     "argon2-cffi installed, $argon2id$)")


def _parse_scrypt(text: str, parts: list[str]) -> PasswordHash:
    if len(parts) != 5:
        raise ValueError("a scrypt hash has the form $scrypt$ln=14,r=8,p=1$<salt>$<hash>, "
                         f"this one has {len(parts) - 1} '$'-separated fields instead of 4")
    params = _parse_params(parts[2], ("ln", "r", "p"))
    _check_scrypt_params(params["ln"], params["r"], params["p"])
    salt = _b64decode(parts[3], "salt")
    digest = _b64decode(parts[4], "hash")
    _check_lengths(salt, digest)
    return PasswordHash("scrypt", (("ln", params["ln"]), ("r", params["r"]), ("p", params["p"])),
                        salt, digest, text)


def _parse_argon2(text: str, parts: list[str]) -> PasswordHash:
    scheme = parts[1]
    fields = parts[2:]
    version = 0x10  # argon2 hashes from before v1.3 omit v=
    if fields and fields[0].startswith("v="):
        version = _parse_params(fields[0], ("v",))["v"]
        if version not in (0x10, 0x13):
            raise ValueError(f"unknown argon2 version v={version} (expected 19 or 16)")
        fields = fields[1:]
    if len(fields) != 3:
        raise ValueError(f"an argon2 hash has the form ${scheme}$v=19$m=65536,t=3,p=4$<salt>$"
                         "<hash>; this one does not")
    params = _parse_params(fields[0], ("m", "t", "p"))
    if not 8 * params["p"] <= params["m"] <= MAX_ARGON2_MEMORY_KIB:
        raise ValueError(f"argon2 m={params['m']} is out of range "
                         f"({8 * params['p']}..{MAX_ARGON2_MEMORY_KIB} KiB)")
    if not 1 <= params["t"] <= MAX_ARGON2_TIME:
        raise ValueError(f"argon2 t={params['t']} is out of range (1..{MAX_ARGON2_TIME})")
    if not 1 <= params["p"] <= 64:
        raise ValueError(f"argon2 p={params['p']} is out of range (1..64)")
    salt = _b64decode(fields[1], "salt")
    digest = _b64decode(fields[2], "hash")
    _check_lengths(salt, digest)
    return PasswordHash(scheme, (("v", version), ("m", params["m"]), ("t", params["t"]),
                                 ("p", params["p"])), salt, digest, text)


def _check_lengths(salt: bytes, digest: bytes) -> None:
    if len(salt) < _MIN_SALT:
        raise ValueError(f"the salt is {len(salt)} bytes; at least {_MIN_SALT} are needed")
    if len(digest) not in _HASH_LENGTHS:
        raise ValueError(f"the hash is {len(digest)} bytes; expected "
                         f"{_HASH_LENGTHS.start}..{_HASH_LENGTHS.stop - 1}")
