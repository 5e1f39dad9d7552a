"""Config loading: every broken config in tests/bad_configs fails with exactly its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import config
from daemon.typedtoml import Secret
from daemon.units import HostPort

HERE = Path(__file__).parent
BAD = sorted(p for p in (HERE / "bad_configs").iterdir() if p.is_dir())
REPO = HERE.parent


@pytest.mark.parametrize("case", BAD, ids=[p.name for p in BAD])
def test_bad_config_fails_with_its_line(case: Path) -> None:
    path = case / "egen.toml"
    expected = (case / "error.txt").read_text().strip().replace("{dir}", str(case.resolve()))
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    assert caught.value.lines() == [f"{path}: {expected}"]


def test_shipped_configs_are_valid() -> None:
    dev = config.load(REPO / "config" / "dev.toml", environ={})
    assert dev.state_dir == (REPO / ".egen-state").resolve()
    assert dev.http.listen == [HostPort("127.0.0.1", 8800)]
    assert dev.database.url is None
    # Every GELF transport a shipper may pick has a listener for the dev project.
    gelf = {(kind, str(listener.listen)) for kind, listeners in
            (("udp", dev.ingest.udp), ("tcp", dev.ingest.tcp)) for listener in listeners
            if listener.project == "dev" and "gelf" in listener.formats}
    assert gelf == {("udp", "127.0.0.1:12201"), ("tcp", "127.0.0.1:12201")}
    assert dev.web.users["dev"].admin
    prod = config.load(REPO / "config" / "egen.toml", environ={})
    assert prod.state_dir == Path("/var/lib/egen")


def test_defaults_apply_when_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "egen.toml"
    path.write_text("")
    settings = config.load(path, environ={})
    assert settings.journal.max_size == 2**30
    assert settings.drain_timeout == 30.0
    assert settings.source == path


def test_every_problem_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "egen.toml"
    path.write_text('drain_timeout = "x"\n[log]\nlevel = "loud"\nformat = "xml"\n[htp]\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    keys = [line.split(": ")[1] for line in caught.value.lines()]
    assert sorted(keys) == ["drain_timeout", "htp", "log.format", "log.level"]


def test_secret_from_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "db-url").write_text("postgresql://egen:s3cret@db/egen\n")
    path = tmp_path / "egen.toml"
    path.write_text('[database]\nurl_file = "db-url"\n')
    from_file = config.load(path, environ={})
    assert from_file.database.url == Secret("postgresql://egen:s3cret@db/egen")
    assert "s3cret" not in repr(from_file)
    path.write_text('[database]\nurl_env = "DB"\n')
    from_env = config.load(path, environ={"DB": "postgresql://egen:other@db/egen"})
    assert from_env.database.url is not None
    assert from_env.database.url.reveal() == "postgresql://egen:other@db/egen"
    shown = dict(config.summary(from_env))["database"]
    assert "other" not in shown and "***" in shown


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path / "nope.toml")
    assert caught.value.lines() == [f"{tmp_path / 'nope.toml'}: does not exist"]


def test_config_path_precedence() -> None:
    assert config.resolve_path("a.toml", {"EGEN_CONFIG": "b.toml"}) == Path("a.toml")
    assert config.resolve_path(None, {"EGEN_CONFIG": "b.toml"}) == Path("b.toml")
    assert config.resolve_path(None, {}) == Path("/etc/egen/egen.toml")


@given(st.text(max_size=200))
def test_any_toml_text_loads_or_fails_cleanly(text: str) -> None:
    try:
        settings = config.loads(text, source=Path("fuzz.toml"), environ={})
    except config.ConfigError as err:
        assert err.lines()
        assert all(line.startswith("fuzz.toml: ") for line in err.lines())
    else:
        assert isinstance(settings, config.Settings)


def test_problems_of_every_kind_are_reported_together(tmp_path: Path) -> None:
    """Checks across fields run for the good parts of a table with bad ones, and a table's
    check reports each of its problems, not only the first."""
    path = tmp_path / "egen.toml"
    path.write_text("""
drain_timeout = "0s"
[[projects]]
id = 0
name = "Shop"
keys = ["abcdef0123456789", "x"]
rate_limit = -1
[[routes]]
domains = ["example.org"]
transport = "maildir"
path = "/tmp/m"
[alerts]
max_attempts = 0
sender = "not an address"
[[alerts.channels]]
name = "ops"
type = "email"
to = ["ops@example.com"]
[[alerts.rules]]
project = "shop"
on = ["new"]
channels = ["oncall"]
""")
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    keys = [line.split(": ")[1] for line in caught.value.lines()]
    assert sorted(keys) == sorted([
        "drain_timeout", "routes", "projects[0].name", "projects[0].id",
        "projects[0].keys[1]", "projects[0].rate_limit", "alerts.sender",
        "alerts.max_attempts", "alerts.rules[0].channels[0]"])


def test_a_bad_section_does_not_hide_its_neighbours_but_is_not_reported_twice(
        tmp_path: Path) -> None:
    path = tmp_path / "egen.toml"
    path.write_text('drain_timeout = "0s"\n[[projects]]\nid = 1\nname = "a"\n'
                    'keys = ["abcdef0123456789"]\n[[projects]]\nid = 1\nname = "B"\n'
                    'keys = ["abcdef0123456789"]\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    # The duplicate id and key of projects[1] need a readable projects list: they wait.
    assert [line.split(": ")[1] for line in caught.value.lines()] == [
        "projects[1].name", "drain_timeout"]


def test_a_rule_naming_a_broken_channel_is_not_said_to_name_a_missing_one(
        tmp_path: Path) -> None:
    path = tmp_path / "egen.toml"
    path.write_text('[alerts]\nsender = "x"\n[[alerts.channels]]\nname = "ops"\n'
                    'type = "email"\nto = []\n[[alerts.rules]]\nproject = "*"\n'
                    'on = ["new"]\nchannels = ["ops"]\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, environ={})
    assert [line.split(": ")[1] for line in caught.value.lines()] == [
        "alerts.channels[0].to", "alerts.sender"]
