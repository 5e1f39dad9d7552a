"""The Prometheus registry every component registers its metrics on.

One registry per App (not the library's global one), so several Apps can run in one
test process and `/metrics` shows exactly what this daemon owns.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from daemon import __version__

__all__ = ["CONTENT_TYPE_LATEST", "new_registry", "render"]


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("egen_build", "egen version", registry=registry).info({"version": __version__})
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
