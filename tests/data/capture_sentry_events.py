"""Capture real sentry-sdk event payloads into tests/data/sentry_events/ for the grouping tests.

Hand-written payloads drift from what the SDK actually sends; these come out of the installed
sentry-sdk through a recording transport, exactly as they would go over the wire. The code
that fails is a small fictional shop compiled from source held here, with fixed file names
under /srv, so stack frames do not depend on where this repository is checked out. Only the
values that change on every run (event ids, clocks, trace ids) and the checkout path are
pinned afterwards, so a rerun with the same SDK reproduces the files byte for byte.

    .venv/bin/python tests/data/capture_sentry_events.py            # rewrite the corpus
    .venv/bin/python tests/data/capture_sentry_events.py --print zero_division
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import linecache
import logging
import re
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.modules import ModulesIntegration
from sentry_sdk.transport import Transport

CORPUS = Path(__file__).resolve().parent / "sentry_events"
DSN = "http://key@127.0.0.1:9/1"
APP_ROOT = "/srv/app"
SITE_PACKAGES = "/srv/app/.venv/lib/python3.11/site-packages"
CHECKOUT = str(Path(__file__).resolve().parents[2])
PINNED_CLOCK = "2026-01-15T12:00:00.000000Z"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

SOURCES: dict[str, str] = {  # in import order
    "payclient.http": """
        class PaymentDeclined(Exception):
            pass

        def _raise_for_status(status, body):
            if status == 402:
                raise PaymentDeclined(f"card declined for order {body['order']}")

        def post(path, body):
            return _raise_for_status(402, body)
        """,
    "shop.views": """
        import sentry_sdk

        def dispatch(handler, *args):
            try:
                return handler(*args)
            except Exception as exc:
                sentry_sdk.capture_exception(exc)
                return None
        """,
    "shop.orders": """
        def total_per_item(total, count):
            return total / count

        def checkout(order):
            return total_per_item(order["total"], order["count"])
        """,
    "shop.inventory": """
        def parse_quantity(text):
            return int(text)

        def restock(form):
            return parse_quantity(form["quantity"])

        def lookup_price(prices, sku):
            return prices[sku]

        def lookup_stock(stock, sku):
            return stock[sku]
        """,
    "shop.config": """
        from shop.inventory import parse_quantity

        class ConfigError(Exception):
            pass

        def load_limit(text):
            try:
                return parse_quantity(text)
            except ValueError as exc:
                raise ConfigError(f"limit must be a number, got {text!r}") from exc
        """,
    "shop.recovery": """
        from shop.orders import checkout

        def checkout_or_refund(order, refunds):
            try:
                return checkout(order)
            except ZeroDivisionError:
                return refunds[order["id"]]
        """,
    "shop.payments": """
        from payclient.http import post

        def charge(order):
            return post("/charges", {"order": order["id"], "amount": order["total"]})
        """,
    "shop.batch": """
        def validate_all(orders):
            errors = [ValueError(f"order {o} has no lines") for o in orders]
            raise ExceptionGroup("validation failed", errors)
        """,
    "shop.reports": """
        import sentry_sdk

        def send_nightly(count):
            sentry_sdk.capture_message(f"Nightly report sent to {count} recipients")
        """,
}
CART_SOURCE = """
    def apply_coupon(cart, code):
        discount = cart["coupons"][code]
        return cart["total"] - discount
    """


class RecordingTransport(Transport):
    """Keeps the JSON of every `event` item instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            if item.type == "event":
                self.events.append(json.loads(item.get_bytes()))


@contextlib.contextmanager
def app_modules(root: str = APP_ROOT, padding: int = 0) -> Iterator[dict[str, types.ModuleType]]:
    """Import the fictional shop from source: real module objects, real file names for the
    SDK, source lines served from linecache so frames carry context lines."""
    created: dict[str, types.ModuleType] = {}
    saved = dict(sys.modules)
    try:
        for package, base in (("shop", root), ("payclient", SITE_PACKAGES)):
            pkg = types.ModuleType(package)
            pkg.__file__ = f"{base}/{package}/__init__.py"
            pkg.__path__ = []
            sys.modules[package] = pkg
        sources = dict(SOURCES, **{"shop.cart": CART_SOURCE})
        for name, source in sources.items():
            base = SITE_PACKAGES if name.startswith("payclient.") else root
            text = "\n" * padding + textwrap.dedent(source).lstrip("\n")
            filename = f"{base}/{name.replace('.', '/')}.py"
            linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
            module = types.ModuleType(name)
            module.__file__ = filename
            sys.modules[name] = module
            exec(compile(text, filename, "exec"), module.__dict__)
            created[name] = module
        yield created
    finally:
        for name in list(sys.modules):
            if name not in saved:
                del sys.modules[name]
        sys.modules.update(saved)
        for module in created.values():
            linecache.cache.pop(module.__file__ or "", None)


@contextlib.contextmanager
def sdk(root: str = APP_ROOT, **options: Any) -> Iterator[RecordingTransport]:
    """A live sentry-sdk client for one scenario, deployed at `root` as a real app would be
    (its working directory is the project root, so its own frames are in-app). Breadcrumbs
    and tags stay inside the scenario; the previous global client is restored."""
    transport = RecordingTransport()
    previous = sentry_sdk.get_global_scope().client
    options.setdefault("release", "shop@1.4.1")  # else the SDK reads the git HEAD of the cwd
    options.setdefault("integrations", [LoggingIntegration(level=logging.INFO,
                                                           event_level=logging.ERROR)])
    sentry_sdk.init(
        dsn=DSN, transport=transport, server_name="web-1", project_root=root,
        auto_enabling_integrations=False, disabled_integrations=[ModulesIntegration()],
        custom_repr=_stable_repr, **options)
    try:
        with sentry_sdk.isolation_scope():
            yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(previous)


def _stable_repr(value: Any) -> str | None:
    """Local variables as the SDK shows them, minus the memory addresses."""
    text = repr(value)
    return _ADDRESS.sub("", text) if " at 0x" in text else None


def _dispatch(mods: dict[str, types.ModuleType], module: str, function: str,
              *args: Any) -> None:
    mods["shop.views"].dispatch(getattr(mods[module], function), *args)


def _exception(module: str, function: str, *args: Any, root: str = APP_ROOT, padding: int = 0,
               **options: Any) -> Callable[[], list[dict[str, Any]]]:
    def run() -> list[dict[str, Any]]:
        with app_modules(root, padding) as mods, sdk(root, **options) as transport:
            _dispatch(mods, module, function, *args)
        return transport.events
    return run


def _custom_fingerprint() -> list[dict[str, Any]]:
    with app_modules() as mods, sdk() as transport, sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["{{ default }}", "tenant-a"]
        _dispatch(mods, "shop.orders", "checkout", {"total": 10, "count": 0})
    return transport.events


def _tagged(release: str) -> Callable[[], list[dict[str, Any]]]:
    def run() -> list[dict[str, Any]]:
        with (app_modules() as mods,
              sdk(release=release, environment="staging") as transport,
              sentry_sdk.new_scope() as scope):
            scope.set_tag("tenant", "acme")
            scope.set_tag("region", "eu-west-1")
            scope.set_transaction_name("POST /orders/{id}/checkout")
            _dispatch(mods, "shop.orders", "checkout", {"total": 10, "count": 0})
        return transport.events
    return run


def _breadcrumbs() -> list[dict[str, Any]]:
    shop_logger = logging.getLogger("shop")
    level = shop_logger.level
    shop_logger.setLevel(logging.INFO)  # as an app's logging config would; breadcrumbs need it
    with app_modules() as mods, sdk() as transport:
        sentry_sdk.add_breadcrumb(category="auth", message="User 17 logged in", level="info")
        logging.getLogger("shop.cart").info("Cart %s has %d lines", "c-9", 3)
        sentry_sdk.add_breadcrumb(type="http", category="httplib",
                                  data={"url": "http://pay.example/charges", "method": "POST",
                                        "status_code": 402})
        _dispatch(mods, "shop.inventory", "lookup_price", {"sku-1": 5}, "sku-17")
    shop_logger.setLevel(level)
    return transport.events


def _message(text: str) -> Callable[[], list[dict[str, Any]]]:
    def run() -> list[dict[str, Any]]:
        with sdk() as transport:
            sentry_sdk.capture_message(text)
        return transport.events
    return run


def _logged(job: str, attempts: int) -> Callable[[], list[dict[str, Any]]]:
    def run() -> list[dict[str, Any]]:
        with sdk() as transport:
            logging.getLogger("shop.jobs").error("Job %s failed after %d attempts", job, attempts)
        return transport.events
    return run


def _message_with_stacktrace() -> list[dict[str, Any]]:
    with app_modules() as mods, sdk(attach_stacktrace=True,
                                    include_local_variables=False) as transport:
        mods["shop.reports"].send_nightly(12)
    return transport.events


def _excepthook() -> list[dict[str, Any]]:
    with app_modules() as mods, sdk() as transport:
        try:
            mods["shop.orders"].checkout({"total": 3, "count": 0})
        except ZeroDivisionError:
            sys.excepthook(*sys.exc_info())  # what the interpreter does for an uncaught error
    return transport.events


ZERO = {"total": 10, "count": 0}
SCENARIOS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "zero_division": _exception("shop.orders", "checkout", ZERO),
    "zero_division_unhandled": _excepthook,
    "value_error_abc": _exception("shop.inventory", "restock", {"quantity": "abc"}),
    "value_error_xyz": _exception("shop.inventory", "restock", {"quantity": "xyz"}),
    "key_error_price_a": _exception("shop.inventory", "lookup_price", {"sku-1": 5}, "sku-17"),
    "key_error_price_b": _exception("shop.inventory", "lookup_price", {"sku-1": 5}, "sku-42"),
    "key_error_stock": _exception("shop.inventory", "lookup_stock", {"sku-1": 5}, "sku-17"),
    "chained_explicit": _exception("shop.config", "load_limit", "ten"),
    "chained_implicit": _exception("shop.recovery", "checkout_or_refund",
                                   {"id": "o-7", "total": 1, "count": 0}, {}),
    "exception_group": _exception("shop.batch", "validate_all", ["o-1", "o-2"]),
    "library_declined_a": _exception("shop.payments", "charge", {"id": 17, "total": 30}),
    "library_declined_b": _exception("shop.payments", "charge", {"id": 42, "total": 12}),
    "line_shift_v1": _exception("shop.cart", "apply_coupon", {"coupons": {}}, "SPRING",
                                root="/srv/app-v1"),
    "line_shift_v2": _exception("shop.cart", "apply_coupon", {"coupons": {}}, "SPRING",
                                root="/srv/app-v2", padding=4),
    "message_plain": _message("Nightly report sent"),
    "message_numbers_a": _message("Processed 17 items in 3.2s"),
    "message_numbers_b": _message("Processed 5 items in 0.7s"),
    "message_with_stacktrace": _message_with_stacktrace,
    "logging_template_a": _logged("reindex", 3),
    "logging_template_b": _logged("sync", 5),
    "custom_fingerprint": _custom_fingerprint,
    "breadcrumbs": _breadcrumbs,
    "tags_release_a": _tagged("shop@1.4.2"),
    "tags_release_b": _tagged("shop@1.4.3"),
}


def _pin(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(CHECKOUT, "/src/egen")
    if isinstance(value, list):
        return [_pin(item) for item in value]
    if isinstance(value, dict):
        return {key: _pin(item) for key, item in value.items()}
    return value


def stabilize(name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Pin what differs on every run: ids derived from the scenario name, one clock."""
    digest = hashlib.md5(name.encode()).hexdigest()
    event["event_id"] = digest
    event["timestamp"] = PINNED_CLOCK
    trace = event.get("contexts", {}).get("trace")
    if trace:
        trace.update(trace_id=hashlib.md5(digest.encode()).hexdigest(), span_id=digest[:16])
    for crumb in event.get("breadcrumbs", {}).get("values", []):
        crumb["timestamp"] = PINNED_CLOCK
    if "sys.argv" in event.get("extra", {}):
        event["extra"]["sys.argv"] = ["tests/data/capture_sentry_events.py"]
    return _pin(event)


def capture(name: str) -> dict[str, Any]:
    """Run one scenario against the installed SDK and return its (stabilized) event."""
    events = SCENARIOS[name]()
    if len(events) != 1:
        raise RuntimeError(f"{name}: expected one event, the SDK sent {len(events)}")
    return stabilize(name, events[0])


def dump(event: dict[str, Any]) -> str:
    return json.dumps(event, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", dest="show", metavar="NAME", choices=sorted(SCENARIOS),
                        help="print one scenario's event instead of writing the corpus")
    args = parser.parse_args()
    if args.show:
        sys.stdout.write(dump(capture(args.show)))
        return
    CORPUS.mkdir(exist_ok=True)
    for name in SCENARIOS:
        (CORPUS / f"{name}.json").write_text(dump(capture(name)), encoding="utf-8")
        print(f"wrote {name}.json")


if __name__ == "__main__":
    main()
