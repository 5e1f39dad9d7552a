"""Charts as inline SVG, drawn on the server: a 24-hour sparkline per issue row, bar
charts of events over time, and the bars of tag distributions.

Hand-written because they are a few rectangles each: a chart library would mean
JavaScript in the browser or a large dependency for what the page needs. SVG sizes go
in attributes, never in `style`, so the pages' Content-Security-Policy can forbid inline
styles. Every text is escaped (markupsafe), as in the templates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape


def _svg(width: float, height: float, label: str, body: list[str], css: str) -> Markup:
    return Markup(
        f'<svg class="{css}" viewBox="0 0 {width:g} {height:g}" role="img" '
        f'aria-label="{escape(label)}" preserveAspectRatio="none">{"".join(body)}</svg>')


def _height(count: int, peak: int, room: float) -> float:
    if count <= 0 or peak <= 0:
        return 0.0
    return max(1.0, room * count / peak)       # a single event still shows


def sparkline(counts: Sequence[int], *, label: str = "events per hour, last 24 hours"
              ) -> Markup:
    """One bar per value, scaled to the largest; an empty series draws a baseline."""
    width, height, gap = 4.0, 24.0, 1.0
    peak = max(counts, default=0)
    body = [f'<rect class="base" x="0" y="{height - 1:g}" width="{width * len(counts):g}" '
            'height="1"></rect>']
    for n, count in enumerate(counts):
        h = _height(count, peak, height - 1)
        if h:
            body.append(f'<rect x="{n * width:g}" y="{height - 1 - h:.2f}" '
                        f'width="{width - gap:g}" height="{h:.2f}"></rect>')
    return _svg(width * max(len(counts), 1), height, f"{label}: at most {peak}", body,
                "spark")


def bar_chart(buckets: Sequence[dict[str, object]], *, unit: str, noun: str = "event"
              ) -> Markup:
    """Counts per bucket ({"start": ISO time, "count": n}), oldest first, with a tooltip
    per bar; `unit` ("hour" or "day") and `noun` (what is counted) word the tooltips."""
    width, height = 600.0, 120.0
    slot = width / max(len(buckets), 1)
    counts = [int(b["count"]) for b in buckets]  # type: ignore[call-overload]
    peak = max(counts, default=0)
    body = [f'<rect class="base" x="0" y="{height - 1:g}" width="{width:g}" height="1">'
            '</rect>']
    for n, (bucket, count) in enumerate(zip(buckets, counts, strict=True)):
        start = datetime.fromisoformat(str(bucket["start"]))
        when = start.strftime("%Y-%m-%d %H:00 UTC" if unit == "hour" else "%Y-%m-%d")
        h = _height(count, peak, height - 12)
        # The whole column is the tooltip's target, so a thin bar is easy to point at.
        body.append(f'<g><title>{escape(when)}: {count} {noun}{"" if count == 1 else "s"}'
                    f'</title><rect class="hit" x="{n * slot:.2f}" y="0" width="{slot:.2f}" '
                    f'height="{height:g}"></rect>')
        if h:
            body.append(f'<rect x="{n * slot + slot * 0.1:.2f}" y="{height - 1 - h:.2f}" '
                        f'width="{slot * 0.8:.2f}" height="{h:.2f}"></rect>')
        body.append("</g>")
    label = f"{noun}s per {unit}: at most {peak}"
    return _svg(width, height, label, body, "bars")


def share_bar(share: float) -> Markup:
    """A horizontal bar filled to `share` (0..1) of its width."""
    filled = max(0.0, min(1.0, share)) * 100
    return Markup(f'<svg class="share" viewBox="0 0 100 6" preserveAspectRatio="none" '
                  f'aria-hidden="true"><rect class="base" width="100" height="6"></rect>'
                  f'<rect width="{filled:.1f}" height="6"></rect></svg>')
