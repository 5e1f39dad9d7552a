"""The systemd unit, users and directories as systemd itself reads them: the unit
verifies, its exposure score stays in systemd's "OK" range or better, and the install
script lays everything out (idempotently) under a scratch root."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "egen.service"
EGEN = ROOT / ".venv" / "bin" / "egen"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's egen (verify wants it to exist)."""
    path = tmp_path / "egen.service"
    path.write_text(UNIT.read_text().replace("/opt/egen/venv/bin/egen", str(EGEN)))
    return path


def test_the_unit_says_what_the_daemon_does() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=",
                 "User=egen", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "SystemCallFilter=@system-service", "StateDirectory=egen",
                 "Wants=network-online.target"):
        assert line in text, line


@needs_systemd
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(unit_for_here(tmp_path))],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@needs_systemd
def test_exposure_is_ok_or_better(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true",
                             str(unit_for_here(tmp_path))],
                            check=False, capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    assert match[2] in ("PERFECT", "SAFE", "OK"), match[0]
    assert float(match[1]) <= 2.0


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None
                    or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers / systemd-tmpfiles are not installed")
def test_install_lays_out_user_unit_and_directories_idempotently(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for _ in range(2):
        result = subprocess.run([str(ROOT / "scripts" / "install"), "--root", str(root),
                                 "--skip-venv"], check=False, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
    assert (root / "etc/systemd/system/egen.service").read_text() == UNIT.read_text()
    passwd = (root / "etc/passwd").read_text()
    assert len(re.findall(r"^egen:", passwd, re.MULTILINE)) == 1
    assert "/usr/sbin/nologin" in passwd.split("egen:", 1)[1].splitlines()[0]
    assert (root / "var/lib/egen").stat().st_mode & 0o777 == 0o750
    assert (root / "var/lib/egen/dkim").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/egen/egen.toml").stat().st_mode & 0o777 == 0o640
    # An operator's edited config survives a reinstall.
    (root / "etc/egen/egen.toml").write_text("# edited\n")
    subprocess.run([str(ROOT / "scripts" / "install"), "--root", str(root), "--skip-venv"],
                   check=True, capture_output=True, timeout=120)
    assert (root / "etc/egen/egen.toml").read_text() == "# edited\n"
