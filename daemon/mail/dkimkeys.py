"""DKIM keys: loading, generating and writing private keys, and the DNS TXT records that
publish them.

Kept apart from the signer (dkim.py) because the operator verbs (`egen dkim keygen`,
`egen dkim record`) and the DNS setup scripts need keys and records but never sign, and the
signer needs a loaded key but never touches files or DNS syntax.

Key files are what operators already have: PEM PKCS#1 ("RSA PRIVATE KEY", what
opendkim-genkey writes), PEM PKCS#8 (what we write) and, for Ed25519, the bare base64
32-byte seed that dkimpy's dknewkey writes. Problems are reported as DkimError naming the
file, the domain and the selector, so a bad key stops the daemon with a message an operator
can act on, before it listens.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: Below this, receivers (and RFC 8301) treat an RSA signature as no signature at all.
MIN_RSA_BITS = 1024
#: RFC 8301 says signers SHOULD use at least 2048; smaller keys load but are `weak`.
RECOMMENDED_RSA_BITS = 2048
#: A TXT record is a list of character-strings, each at most 255 octets (RFC 1035 3.3).
TXT_STRING_MAX = 255

# Selectors may have dots (RFC 6376 3.1 allows sub-selectors); labels are LDH.
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")


class DkimError(Exception):
    """A DKIM key or signing problem; the message names the domain, selector or file."""


def _check_name(kind: str, name: str) -> str:
    """Lowercase and check a domain or selector, so d=/s= and the DNS name are well formed."""
    norm = name.strip().rstrip(".").lower()
    if not norm.isascii():
        try:
            norm = norm.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise DkimError(f"DKIM {kind} {name!r} is not a valid DNS name: {exc}") from None
    if len(norm) > 253 or not _NAME_RE.fullmatch(norm):
        raise DkimError(f"DKIM {kind} {name!r} is not a valid DNS name")
    return norm


@dataclass(frozen=True)
class DkimKey:
    """One signing key: who it signs for (d=, s=) and the private key itself."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: object
    path: Path | None = None
    #: The key file is readable or writable by "other" (group access is allowed: the usual
    #: root:egen 0640); the daemon warns about it rather than refusing to start.
    loose_permissions: bool = False

    def __post_init__(self) -> None:
        """Normalize names and refuse an algorithm that does not match the key object."""
        object.__setattr__(self, "domain", _check_name("domain", self.domain))
        object.__setattr__(self, "selector", _check_name("selector", self.selector))
        expected = {"rsa": rsa.RSAPrivateKey, "ed25519": ed25519.Ed25519PrivateKey}.get(
            self.algorithm)
        if expected is None or not isinstance(self.private_key, expected):
            raise DkimError(
                f"DKIM key {self.selector}._domainkey.{self.domain}: algorithm "
                f"{self.algorithm!r} does not match key {type(self.private_key).__name__}")

    @property
    def key_bits(self) -> int:
        """Key size in bits (256 for Ed25519), so the daemon can log and warn about it."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.key_size
        return 256

    @property
    def weak(self) -> bool:
        """An RSA key under 2048 bits: still verifies, but the daemon should warn."""
        return self.algorithm == "rsa" and self.key_bits < RECOMMENDED_RSA_BITS

    def describe(self) -> str:
        """Short identification for error messages and logs."""
        where = f" from {self.path}" if self.path else ""
        return f"{self.algorithm} key {self.selector}._domainkey.{self.domain}{where}"

    def dns_name(self) -> str:
        """The owner name of the TXT record that publishes this key."""
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_value(self) -> str:
        """The TXT record value: SubjectPublicKeyInfo for RSA, the raw key for Ed25519."""
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            der = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            der = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:  # unreachable: __post_init__ checked the type
            raise DkimError(f"{self.describe()}: unsupported key object")
        return f"v=DKIM1; k={self.algorithm}; p={base64.b64encode(der).decode('ascii')}"


def _algorithm_of(key: object, what: str) -> Algorithm:
    """Infer the algorithm from the key object; other key types are a configuration error."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimError(f"{what}: RSA key has {key.key_size} bits; DKIM needs at least "
                            f"{MIN_RSA_BITS} (2048 recommended)")
        return "rsa"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise DkimError(f"{what}: unsupported key type {type(key).__name__} "
                    "(DKIM keys are RSA or Ed25519)")


def _parse_private_key(data: bytes, what: str) -> object:
    """Parse PEM (PKCS#1 or PKCS#8) or a bare base64 Ed25519 seed."""
    if b"-----BEGIN" in data:
        try:
            return serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise DkimError(f"{what}: the private key is encrypted; "
                            "DKIM keys must be stored unencrypted (mode 0600)") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DkimError(f"{what}: not a usable PEM private key ({exc})") from None
    try:
        seed = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) == 32:
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    raise DkimError(f"{what}: not a PEM private key nor a base64 32-byte Ed25519 seed")


def load_key(path: Path, *, domain: str, selector: str) -> DkimKey:
    """Load a private key file for (domain, selector); any problem is a DkimError."""
    path = Path(path)
    what = f"DKIM key for {selector}._domainkey.{domain} ({path})"
    try:
        # O_NONBLOCK: a FIFO in place of the key must not hang the daemon's start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise DkimError(f"{what}: not a regular file")
            data = f.read(1 << 20)
    except OSError as exc:
        raise DkimError(f"{what}: cannot read: {exc.strerror or exc}") from None
    key = _parse_private_key(data, what)
    return DkimKey(domain=domain, selector=selector, algorithm=_algorithm_of(key, what),
                   private_key=key, path=path, loose_permissions=bool(mode & 0o007))


def generate_key(algorithm: Algorithm, *, bits: int = RECOMMENDED_RSA_BITS) -> object:
    """A new private key for `egen dkim keygen` and the dev config's first start."""
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise DkimError(f"RSA key size {bits} is below the DKIM minimum of {MIN_RSA_BITS}")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise DkimError(f"unknown DKIM key algorithm {algorithm!r} (use rsa or ed25519)")


def write_private_key(key: object, path: Path) -> None:
    """Write PEM PKCS#8 with mode 0600, created that way (never briefly readable by others);
    an existing file is never overwritten, because it may be the key that DNS publishes."""
    path = Path(path)
    _algorithm_of(key, f"DKIM key for {path}")
    assert isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise DkimError(f"{path}: already exists; refusing to overwrite a DKIM key") from None
    except OSError as exc:
        raise DkimError(f"{path}: cannot create: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise DkimError(f"{path}: cannot write: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # make the new name durable too; best effort
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def txt_record_strings(value: str) -> list[str]:
    """Split a TXT value into character-strings of at most 255 octets (one record; the
    resolver concatenates them). Never splits inside a UTF-8 sequence."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for ch in value:
        n = len(ch.encode("utf-8"))
        if size + n > TXT_STRING_MAX:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += n
    chunks.append("".join(current))
    return chunks


def zone_line(key: DkimKey) -> str:
    """The record in BIND zone-file syntax, ready to paste."""
    quoted = " ".join(
        '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for s in txt_record_strings(key.dns_value()))
    return f"{key.dns_name()}. IN TXT ( {quoted} )"
