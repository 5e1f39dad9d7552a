"""The mail relay's operator verbs as an operator runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson

from daemon.mail.dkimkeys import load_key
from daemon.passwords import parse_hash


def egen(*args: str, stdin: str = "", cwd: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_hash_password_prints_a_hash_that_verifies() -> None:
    result = egen("user", "hash-password", stdin="correct horse\n")
    assert result.returncode == 0, result.stderr
    hashed = parse_hash(result.stdout.strip())
    assert hashed.verify("correct horse") and not hashed.verify("wrong horse")
    assert "correct horse" not in result.stdout


def test_hash_password_refuses_empty_input() -> None:
    result = egen("user", "hash-password", stdin="\n")
    assert result.returncode == 1 and "empty password" in result.stderr


def test_dkim_keygen_writes_a_private_key_and_prints_its_record(tmp_path: Path) -> None:
    out = tmp_path / "sel.pem"
    result = egen("dkim", "keygen", "--domain", "example.com", "--selector", "sel",
                  "--algorithm", "ed25519", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    record = orjson.loads(result.stdout)
    key = load_key(out, domain="example.com", selector="sel")
    assert record == {"name": "sel._domainkey.example.com", "type": "TXT",
                      "value": key.dns_value()}
    assert out.stat().st_mode & 0o777 == 0o600
    again = egen("dkim", "keygen", "--domain", "example.com", "--selector", "sel",
                 "--out", str(out))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert load_key(out, domain="example.com", selector="sel").dns_value() == key.dns_value()


def test_dkim_record_prints_the_configured_keys(tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.pem"
    assert egen("dkim", "keygen", "--domain", "example.com", "--selector", "r",
                "--out", str(rsa)).returncode == 0
    config = tmp_path / "egen.toml"
    config.write_text(f'[[dkim.keys]]\ndomain = "example.com"\nselector = "r"\n'
                      f'key_file = "{rsa}"\n')
    result = egen("dkim", "record", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    [record] = orjson.loads(result.stdout)
    assert record["name"] == "r._domainkey.example.com"
    assert record["value"].startswith("v=DKIM1; k=rsa; p=")
    zone = egen("dkim", "record", "--config", str(config))
    assert zone.stdout.startswith('r._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa;')
    strings = re.findall(r'"([^"]*)"', zone.stdout)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == record["value"]
