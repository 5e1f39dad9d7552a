"""Which rules a trigger matches, and which touched issues are critical or spiking.

Pure functions over the settings, so the matching can be tested without a database and
reads the same on every node. New and regressed triggers match by kind; spike and critical
triggers carry the key of the rule parameters that made them (in `dedup`), so a rule with
a higher threshold is not woken by a lower one's spike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from daemon.alerts.settings import RuleSettings
from daemon.alerts.store import Trigger
from daemon.events.storage.writer import IssueChange
from daemon.units import format_duration

# (project_id, issue_id, kind, dedup, detail): a row of alert_triggers.
TriggerRow = tuple[int, int, str, str, str]


def rules_for(rules: Sequence[RuleSettings], project: str, kind: str
              ) -> list[RuleSettings]:
    return [r for r in rules if kind in r.on and r.applies_to(project)]


def channels_for(rules: Sequence[RuleSettings], trigger: Trigger) -> list[str]:
    """The channels to notify of a trigger, each once, in the order the rules name them."""
    found: list[str] = []
    for rule in rules_for(rules, trigger.project, trigger.kind):
        if trigger.kind == "spike" and not trigger.dedup.startswith(rule.spike_key + "@"):
            continue
        if trigger.kind == "critical" and (
                not trigger.dedup.startswith(rule.critical_key + "@")
                or not rule.is_critical(trigger.level, trigger.title)):
            continue
        found.extend(c for c in rule.channels if c not in found)
    return found


def critical_triggers(rules: Sequence[RuleSettings], changes: Iterable[IssueChange],
                      project_name: Callable[[int], str | None], now: float
                      ) -> list[TriggerRow]:
    """A trigger per critical issue the batch touched and rule, once per repeat period."""
    rows: list[TriggerRow] = []
    for change in changes:
        project = project_name(change.project_id)
        if project is None:
            continue
        for rule in rules_for(rules, project, "critical"):
            if rule.is_critical(change.level, change.title):
                period = math.floor(now / rule.critical_repeat)
                rows.append((change.project_id, change.id, "critical",
                             f"{rule.critical_key}@{period}",
                             f"level {change.level}; alerted again at most every "
                             f"{format_duration(rule.critical_repeat)} while it goes on"))
    return rows


@dataclass(frozen=True)
class SpikeCheck:
    """Issues whose recent counts one spike rule wants to see."""

    rule: RuleSettings
    issues: list[IssueChange]


def spike_checks(rules: Sequence[RuleSettings], changes: Iterable[IssueChange],
                 project_name: Callable[[int], str | None]) -> list[SpikeCheck]:
    checks = []
    changes = list(changes)
    for rule in (r for r in rules if "spike" in r.on):
        touched = [c for c in changes if (name := project_name(c.project_id)) is not None
                   and rule.applies_to(name)]
        if touched:
            checks.append(SpikeCheck(rule, touched))
    return checks


def spike_triggers(check: SpikeCheck, counts: dict[int, int], now: float
                   ) -> list[TriggerRow]:
    """More than `spike_events` in the window: one trigger per issue per window length of
    time (a spike that goes on is alerted again in the next window, not at every batch)."""
    rule = check.rule
    period = math.floor(now / rule.spike_window)
    return [(c.project_id, c.id, "spike", f"{rule.spike_key}@{period}",
             f"{counts[c.id]} events in the last {format_duration(rule.spike_window)} "
             f"(more than {rule.spike_events})")
            for c in check.issues if counts.get(c.id, 0) > rule.spike_events]
