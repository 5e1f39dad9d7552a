"""The [alerts] section: each kind of mistake is refused with the key that holds it, and
rule matching (which channels a trigger reaches, what counts as critical)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config
from daemon.alerts.rules import channels_for, critical_triggers
from daemon.alerts.settings import RuleSettings
from daemon.alerts.store import Trigger
from daemon.events.storage.writer import IssueChange

CHANNELS = """
[[alerts.channels]]
name = "team"
type = "email"
to = ["team@example.com"]

[[alerts.channels]]
name = "hook"
type = "webhook"
url = "https://hooks.example.com/egen"
"""


def load(text: str) -> config.Settings:
    return config.loads(text, source=Path("egen.toml"), environ={})


@pytest.mark.parametrize(("text", "problem"), [
    ('[[alerts.channels]]\nname = "x"\ntype = "email"\n',
     "alerts.channels[0].to: an email channel needs at least one recipient"),
    ('[[alerts.channels]]\nname = "x"\ntype = "email"\nto = ["nobody"]\n',
     "alerts.channels[0].to[0]: 'nobody' is not a mail address"),
    ('[[alerts.channels]]\nname = "x"\ntype = "webhook"\n',
     "alerts.channels[0].url: a webhook channel needs a url"),
    ('[[alerts.channels]]\nname = "x"\ntype = "webhook"\nurl = "ftp://x"\n',
     "alerts.channels[0].url: must be an http:// or https:// URL"),
    ('[[alerts.channels]]\nname = "x"\ntype = "sms"\n', "alerts.channels[0].type"),
    ('[[alerts.channels]]\nname = "x"\ntype = "email"\nto = ["a@b.c"]\nmax_per_hour = 0\n',
     "alerts.channels[0].max_per_hour: must be at least 1"),
    (CHANNELS + CHANNELS.replace('"hook"', '"hook2"'),
     "alerts.channels[2].name: 'team' is used twice"),
    (CHANNELS + '[[alerts.rules]]\nproject = "shop"\non = ["new"]\nchannels = ["pager"]\n',
     "alerts.rules[0].channels[0]: no channel named 'pager' (channels: hook, team)"),
    (CHANNELS + '[[alerts.rules]]\nproject = "shop"\non = ["spike"]\nchannels = ["team"]\n',
     "alerts.rules[0].spike_events: a spike rule needs spike_events of 1 or more"),
    (CHANNELS + '[[alerts.rules]]\nproject = "shop"\non = ["spike"]\nspike_events = 5\n'
                'spike_window = "90s"\nchannels = ["team"]\n',
     "alerts.rules[0].spike_window: must be whole minutes, from 1m to 24h (got 90s)"),
    (CHANNELS + '[[alerts.rules]]\nproject = "shop"\non = ["critical"]\nchannels = ["team"]\n',
     "alerts.rules[0].critical_level: a critical rule needs critical_level or "
     "critical_types"),
    (CHANNELS + '[[alerts.rules]]\nproject = "shop"\non = ["new"]\n'
                'critical_types = ["X"]\nchannels = ["team"]\n',
     'alerts.rules[0].critical_level: is for rules with "critical" in on'),
    (CHANNELS + '[[alerts.rules]]\nproject = "Shop!"\non = ["new"]\nchannels = ["team"]\n',
     "alerts.rules[0].project: 'Shop!' is neither a project name nor \"*\""),
    (CHANNELS + '[[alerts.rules]]\nproject = "shop"\non = []\nchannels = ["team"]\n',
     "alerts.rules[0].on: needs at least one of new, regressed, spike, critical"),
    (CHANNELS + '[[alerts.rules]]\nproject = "shop"\non = ["new", "new"]\n'
                'channels = ["team"]\n', "alerts.rules[0].on: lists a kind twice"),
    ('[alerts]\nsender = "me"\n', "alerts.sender: 'me' is not a mail address"),
    ('[alerts]\nretry_first = "1m"\nretry_max = "10s"\n', "alerts.retry_max"),
    ('[alerts]\nrelay_project = "Relay Project"\n', "alerts.relay_project"),
])
def test_bad_alert_settings_are_refused_with_their_key(text: str, problem: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        load(text)
    assert any(problem in line for line in caught.value.lines()), caught.value.lines()


def rule(**values: object) -> RuleSettings:
    return RuleSettings(**{"project": "shop", "on": ["critical"], "channels": ["team"],
                           **values})  # type: ignore[arg-type]


def trigger(kind: str, dedup: str = "", *, project: str = "shop", level: str = "error",
            title: str = "ValueError: x") -> Trigger:
    return Trigger(id=1, project_id=1, project=project, issue_id=7, kind=kind, dedup=dedup,
                   detail="", level=level, title=title, status="unresolved")


def test_channels_for_matches_project_kind_and_rule_parameters() -> None:
    rules = [RuleSettings(project="*", on=["new"], channels=["team", "hook"]),
             RuleSettings(project="shop", on=["new", "regressed"], channels=["hook", "pager"]),
             RuleSettings(project="shop", on=["spike"], spike_events=10, channels=["chat"]),
             RuleSettings(project="shop", on=["spike"], spike_events=99, channels=["pager"])]
    assert channels_for(rules, trigger("new")) == ["team", "hook", "pager"]
    assert channels_for(rules, trigger("new", project="web")) == ["team", "hook"]
    assert channels_for(rules, trigger("regressed", project="web")) == []
    assert channels_for(rules, trigger("spike", f"{rules[2].spike_key}@5")) == ["chat"]


@pytest.mark.parametrize(("settings", "level", "title", "critical"), [
    ({"critical_types": ["DatabaseError"]}, "error", "DatabaseError: gone", True),
    ({"critical_types": ["DatabaseError"]}, "error", "psycopg.DatabaseError: gone", True),
    ({"critical_types": ["DatabaseError"]}, "error", "MyDatabaseError: gone", False),
    ({"critical_types": ["DatabaseError"]}, "error", "Saw DatabaseError in logs", False),
    ({"critical_level": "error"}, "fatal", "anything", True),
    ({"critical_level": "error"}, "warning", "anything", False),
])
def test_what_is_critical(settings: dict[str, object], level: str, title: str,
                          critical: bool) -> None:
    assert rule(**settings).is_critical(level, title) is critical


def test_critical_triggers_repeat_once_per_period() -> None:
    r = rule(critical_level="fatal", critical_repeat=3600.0)
    change = IssueChange(id=7, project_id=1, title="Boom", level="fatal", event_count=3,
                         created=False, regressed=False)
    first = critical_triggers([r], [change], lambda _: "shop", 7200.0)
    same_hour = critical_triggers([r], [change], lambda _: "shop", 7200.0 + 3599)
    next_hour = critical_triggers([r], [change], lambda _: "shop", 7200.0 + 3600)
    assert first == same_hour and first != next_hour
    assert critical_triggers([r], [change], lambda _: "web", 7200.0) == []
    assert channels_for([r], trigger("critical", first[0][3], level="fatal")) == ["team"]
