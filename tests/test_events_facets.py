"""The tags and user an event contributes to its issue (daemon.events.pipeline.facets):
built-in tags from the event's fields, browser/os/device from contexts or, failing those,
the request's User-Agent (ua-parser), the top-level exception's mechanism, the URL without
its query, custom tags in either Sentry shape, the caps on count and length, and the user
identity including `{{auto}}` resolved from the sender's address.

Events reach facets() the way they do in the daemon: a payload through normalize_event().
Facets are computed for every accepted event and "nothing here raises", so property tests
feed both normalizable payloads and arbitrary payloads behind a valid Event.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.pipeline.facets import (
    MAX_KEY,
    MAX_TAGS,
    MAX_USER_FIELD,
    MAX_VALUE,
    Facets,
    UserIdentity,
    facets,
    user_identity,
)
from daemon.events.pipeline.model import Event, InvalidEvent
from daemon.events.pipeline.normalize import normalize_event

RECEIVED = 1_768_478_500.0
CORPUS = Path(__file__).parent / "data" / "sentry_events"
CHROME_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
SAFARI_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X) AppleWebKit/605.1.15 "
              "(KHTML, like Gecko) Version/17.1 Safari/605.1.15")


def event(data: dict[str, Any]) -> Event:
    return normalize_event(data, received=RECEIVED)


def tags(data: dict[str, Any], client_ip: str | None = None) -> dict[str, str]:
    result = facets(event(data), client_ip).tags
    assert len({key for key, _ in result}) == len(result)   # no key twice
    return dict(result)


def user(data: dict[str, Any], client_ip: str | None = None) -> UserIdentity | None:
    return facets(event(data), client_ip).user


def with_agent(agent: str, **data: Any) -> dict[str, Any]:
    return {"request": {"headers": {"User-Agent": agent}}, **data}


# --- built-in tags -------------------------------------------------------------------------

def test_level_is_always_the_first_tag() -> None:
    assert facets(event({})).tags == (("level", "error"),)
    assert facets(event({"level": "warn"})).tags[0] == ("level", "warning")


def test_event_fields_become_tags() -> None:
    found = tags({"environment": "production", "release": "shop@1.4.2",
                  "server_name": " web-1 ", "logger": "shop.cart",
                  "transaction": "POST /orders/{id}/checkout"})
    assert found == {"level": "error", "environment": "production", "release": "shop@1.4.2",
                     "server_name": "web-1", "logger": "shop.cart",
                     "transaction": "POST /orders/{id}/checkout"}


def test_non_string_event_fields_are_spelled_as_json() -> None:
    found = tags({"environment": 5, "release": True, "server_name": 1.5})
    assert (found["environment"], found["release"], found["server_name"]) == ("5", "true", "1.5")


def test_blank_fields_are_left_out() -> None:
    assert set(tags({"environment": "  ", "release": ""})) == {"level"}


def test_url_drops_query_and_fragment() -> None:
    found = tags({"request": {"url": "https://shop.example/cart?token=s3cr3t#pay"}})
    assert found["url"] == "https://shop.example/cart"


@pytest.mark.parametrize("url", ["http://[broken", "", "  ", None, {"href": "x"}, ["x"]])
def test_unreadable_url_is_left_out(url: Any) -> None:
    assert "url" not in tags({"request": {"url": url}})


def test_long_url_is_cut_to_the_tag_limit() -> None:
    found = tags({"request": {"url": "https://shop.example/" + "p" * 1000}})
    assert len(found["url"]) == MAX_VALUE and found["url"].endswith("…")


def test_corpus_event_tags() -> None:
    data = json.loads((CORPUS / "tags_release_a.json").read_text(encoding="utf-8"))
    found = tags(data)
    assert found["environment"] == data["environment"]
    assert found["release"] == data["release"]
    assert found["server_name"] == data["server_name"]
    for key, value in data["tags"].items():
        assert found[key] == value
    assert found["runtime.name"] == data["contexts"]["runtime"]["name"]


# --- mechanism -----------------------------------------------------------------------------

def test_mechanism_of_the_top_level_exception() -> None:
    found = tags({"exception": {"values": [
        {"type": "KeyError", "mechanism": {"type": "chained", "handled": True}},
        {"type": "ConfigError", "mechanism": {"type": "logging", "handled": False}},
    ]}})
    assert (found["handled"], found["mechanism"]) == ("no", "logging")


def test_mechanism_in_a_bare_exception_list() -> None:
    found = tags({"exception": [{"type": "E", "mechanism": {"type": "generic",
                                                            "handled": True}}]})
    assert (found["handled"], found["mechanism"]) == ("yes", "generic")


def test_no_mechanism_no_tags() -> None:
    found = tags({"exception": {"values": [{"type": "E", "mechanism": {"type": ""}}]}})
    assert "handled" not in found and "mechanism" not in found


def test_mechanism_of_a_message_event_is_ignored() -> None:
    found = tags({"message": "m", "exception": {"values": []}})
    assert "handled" not in found


def test_mechanism_of_a_single_bare_exception_object() -> None:
    found = tags({"exception": {"type": "E", "value": "x",
                                "mechanism": {"type": "generic", "handled": False}}})
    assert (found.get("handled"), found.get("mechanism")) == ("no", "generic")


# --- browser, os, runtime, device ----------------------------------------------------------

def test_browser_and_os_from_the_user_agent() -> None:
    found = tags(with_agent(CHROME_WINDOWS))
    assert found["browser"].startswith("Chrome 120")
    assert found["browser.name"] == "Chrome"
    assert found["os"].startswith("Windows")
    assert found["os.name"] == "Windows"


def test_user_agent_header_in_pairs_and_any_case() -> None:
    data = {"request": {"headers": [["Accept", "*/*"], ["user-agent", FIREFOX_LINUX]]}}
    found = tags(data)
    assert found["browser.name"] == "Firefox" and found["os"] == "Linux"


def test_device_from_the_user_agent() -> None:
    agent = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/120.0 Mobile Safari/537.36")
    found = tags(with_agent(agent))
    assert found["device"] == "Pixel 8" and found["os.name"] == "Android"
    assert "device.name" not in found


@pytest.mark.parametrize("agent", ["garbage", "", "x" * 2000])
def test_unknown_or_oversized_agent_adds_nothing(agent: str) -> None:
    assert set(tags(with_agent(agent))) == {"level"}


def test_oversized_agent_is_not_parsed() -> None:
    assert "browser" not in tags(with_agent(CHROME_WINDOWS + " " * 1024))


def test_contexts_win_over_the_user_agent() -> None:
    found = tags(with_agent(CHROME_WINDOWS, contexts={
        "browser": {"name": "Edge", "version": "121"}, "os": {"name": "Windows", "version": 11}}))
    assert (found["browser"], found["browser.name"]) == ("Edge 121", "Edge")
    assert (found["os"], found["os.name"]) == ("Windows 11", "Windows")


def test_user_agent_fills_only_what_contexts_lack() -> None:
    found = tags(with_agent(FIREFOX_LINUX, contexts={"os": {"name": "NixOS"}}))
    assert found["os"] == "NixOS"
    assert found["browser.name"] == "Firefox"


def test_client_os_stands_in_for_os() -> None:
    found = tags({"contexts": {"client_os": {"name": "macOS", "version": "14.2"}}})
    assert (found["os"], found["os.name"]) == ("macOS 14.2", "macOS")


def test_runtime_and_device_contexts() -> None:
    found = tags({"contexts": {"runtime": {"name": "CPython", "version": "3.11.7"},
                               "device": {"family": "Desktop"}}})
    assert (found["runtime"], found["runtime.name"]) == ("CPython 3.11.7", "CPython")
    assert found["device"] == "Desktop"
    assert tags({"contexts": {"device": {"model": "iPhone15,2", "family": "iOS"}}})[
        "device"] == "iPhone15,2"


@pytest.mark.parametrize("contexts", [None, "linux", [], {"os": "Linux"},
                                      {"browser": {"version": "1"}}, {"os": {"name": ["x"]}}])
def test_missing_or_odd_contexts_add_nothing(contexts: Any) -> None:
    assert set(tags({"contexts": contexts})) == {"level"}


def test_context_names_and_versions_are_cut() -> None:
    found = tags({"contexts": {"runtime": {"name": "n" * 300, "version": "1"}}})
    assert len(found["runtime"]) == MAX_VALUE and len(found["runtime.name"]) == MAX_VALUE


def test_os_name_of_a_versionless_multi_word_family() -> None:
    found = tags(with_agent(SAFARI_MAC))
    assert found["os.name"] == found["os"] == "Mac OS X"


# --- custom tags ---------------------------------------------------------------------------

def test_custom_tags_as_object_or_pairs_are_the_same() -> None:
    as_object = tags({"tags": {"region": "eu-west-1", "tenant": "acme"}})
    as_pairs = tags({"tags": [["region", "eu-west-1"], ["tenant", "acme"]]})
    assert as_object == as_pairs
    assert as_object["region"] == "eu-west-1" and as_object["tenant"] == "acme"


def test_custom_tags_follow_the_built_in_ones_in_order() -> None:
    result = facets(event({"environment": "prod", "tags": [["b", "1"], ["a", "2"]]})).tags
    assert [key for key, _ in result] == ["level", "environment", "b", "a"]


def test_custom_tags_do_not_override_built_in_ones() -> None:
    found = tags({"environment": "prod", "level": "info",
                  "tags": {"environment": "fake", "level": "fatal", "release": "r1"}})
    assert (found["environment"], found["level"]) == ("prod", "info")
    assert found["release"] == "r1"      # no release of its own: the custom tag shows


def test_custom_tag_values_of_other_types() -> None:
    found = tags({"tags": {"n": 3, "ok": False, "pi": 3.5, "none": None}})
    assert (found["n"], found["ok"], found["pi"]) == ("3", "false", "3.5")
    assert "none" not in found


def test_custom_tags_with_nul_or_blank_are_left_out() -> None:
    found = tags({"tags": {"nul": "a\x00b", "blank": "  ", "ke\x00y": "v", "  ": "v"}})
    assert set(found) == {"level"}


def test_long_custom_tags_are_cut() -> None:
    found = tags({"tags": {"k" * 100: "v" * 300}})
    ((key, value),) = [(k, v) for k, v in found.items() if k != "level"]
    assert len(key) == MAX_KEY and key.endswith("…") and key.startswith("k" * 10)
    assert len(value) == MAX_VALUE and value.endswith("…")


def test_tag_count_is_capped() -> None:
    custom = {f"t{n:03d}": str(n) for n in range(200)}
    result = facets(event({"environment": "prod", "tags": custom})).tags
    assert len(result) == MAX_TAGS
    assert result[:2] == (("level", "error"), ("environment", "prod"))
    assert [key for key, _ in result[2:]] == list(custom)[:MAX_TAGS - 2]


def test_invalid_tags_reject_the_event_before_facets() -> None:
    with pytest.raises(InvalidEvent):
        event({"tags": [["only-one"]]})
    with pytest.raises(InvalidEvent):
        event({"tags": "a=b"})


# --- user ----------------------------------------------------------------------------------

def test_user_key_is_the_first_field_present() -> None:
    full = user({"user": {"id": "u-1", "username": "ann", "email": "ann@example.com",
                          "ip_address": "10.0.0.1"}})
    assert full == UserIdentity("id:u-1", "u-1", "ann@example.com", "ann", "10.0.0.1")
    assert user({"user": {"username": "ann", "email": "a@x"}}).key == "username:ann"
    assert user({"user": {"email": "a@x", "ip_address": "::1"}}).key == "email:a@x"
    assert user({"user": {"ip_address": "::1"}}).key == "ip:::1"


def test_numeric_user_id() -> None:
    identity = user({"user": {"id": 42}})
    assert identity is not None and (identity.key, identity.id) == ("id:42", "42")


def test_auto_ip_is_the_senders_address() -> None:
    identity = user({"user": {"ip_address": "{{auto}}"}}, client_ip="203.0.113.9")
    assert identity == UserIdentity("ip:203.0.113.9", None, None, None, "203.0.113.9")


def test_auto_ip_without_a_sender_address_names_no_one() -> None:
    assert user({"user": {"ip_address": "{{auto}}"}}) is None
    identity = user({"user": {"email": "a@x", "ip_address": "{{auto}}"}})
    assert identity is not None and identity.ip_address is None


def test_literal_ip_is_kept_even_with_a_sender_address() -> None:
    identity = user({"user": {"ip_address": "10.0.0.1"}}, client_ip="203.0.113.9")
    assert identity is not None and identity.ip_address == "10.0.0.1"


@pytest.mark.parametrize("value", [None, "ann", [], {}, {"id": ""}, {"id": {"x": 1}},
                                   {"name": "Ann"}, {"email": "a\x00b"}])
def test_no_user(value: Any) -> None:
    assert user({"user": value}) is None


def test_long_user_fields_are_cut() -> None:
    identity = user({"user": {"email": "e" * 1000}})
    assert identity is not None and identity.email is not None
    assert len(identity.email) == MAX_USER_FIELD
    assert len(identity.key) == MAX_USER_FIELD and identity.key.startswith("email:eee")


def test_user_identity_reads_a_payload_directly() -> None:
    identity = user_identity({"user": {"username": " ann "}})
    assert identity is not None and identity.username == "ann"


# --- properties ----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
AGENTS = st.sampled_from([CHROME_WINDOWS, FIREFOX_LINUX, SAFARI_MAC, "curl/8.4.0"]) | st.text()
NAMED = st.fixed_dictionaries({}, optional={"name": JSON | st.text(max_size=5),
                                            "version": JSON, "model": JSON, "family": JSON})
SHAPED = st.fixed_dictionaries({}, optional={
    "request": JSON | st.fixed_dictionaries({}, optional={
        "url": JSON | st.text(), "headers": JSON
        | st.dictionaries(st.sampled_from(["User-Agent", "user-agent", "Accept"]), AGENTS)
        | st.lists(st.tuples(st.sampled_from(["User-Agent", "X"]), AGENTS).map(list))}),
    "contexts": JSON | st.dictionaries(
        st.sampled_from(["browser", "os", "client_os", "runtime", "device"]), NAMED | JSON),
    "user": JSON | st.fixed_dictionaries({}, optional={
        key: JSON | st.just("{{auto}}") for key in ("id", "username", "email", "ip_address")}),
    "exception": JSON | st.fixed_dictionaries({"values": st.lists(st.fixed_dictionaries(
        {"type": st.just("E")}, optional={"mechanism": JSON | st.fixed_dictionaries(
            {}, optional={"type": JSON, "handled": JSON})}) | JSON, max_size=3)}),
    "tags": JSON | st.dictionaries(st.text(max_size=80), JSON)
    | st.lists(st.tuples(st.text(max_size=80), JSON).map(list)),
    **{key: JSON for key in ("environment", "release", "server_name", "logger",
                             "transaction", "level")},
})
CLIENT_IPS = st.none() | st.sampled_from(["203.0.113.9", "::1"]) | st.text(max_size=10)


def _well_formed(result: Facets) -> None:
    assert isinstance(result, Facets)
    assert len(result.tags) <= MAX_TAGS
    assert result.tags[0][0] == "level"
    assert len({key for key, _ in result.tags}) == len(result.tags)
    for key, value in result.tags:
        assert isinstance(key, str) and isinstance(value, str)
        assert 0 < len(key) <= MAX_KEY and 0 < len(value) <= MAX_VALUE
        assert "\x00" not in key + value
    if result.user is not None:
        assert 0 < len(result.user.key) <= MAX_USER_FIELD


@settings(max_examples=200, deadline=None)
@given(SHAPED, CLIENT_IPS)
def test_facets_of_any_accepted_event_are_well_formed(data: dict[str, Any],
                                                      client_ip: str | None) -> None:
    try:
        accepted = event(data)
    except InvalidEvent:
        return
    _well_formed(facets(accepted, client_ip))


BASE = event({"exception": {"values": [{"type": "E", "value": "x"}]}, "tags": {"a": "b"}})


@settings(max_examples=200, deadline=None)
@given(SHAPED | st.dictionaries(st.text(max_size=10), JSON, max_size=6), CLIENT_IPS)
def test_facets_never_raise_on_any_payload(payload: dict[str, Any],
                                           client_ip: str | None) -> None:
    # The payload behind an Event is the raw JSON; facets() must read any of it.
    _well_formed(facets(dataclasses.replace(BASE, payload=payload), client_ip))


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("ab:/?#[]@.\t\n%é1"), max_size=40))
def test_url_tag_matches_the_split_url(url: str) -> None:
    from urllib.parse import urlsplit

    try:
        urlsplit(url)
    except ValueError:
        expected = None
    else:
        without = "".join(c for c in url if c not in "\t\r\n")
        expected = re.split("[?#]", without, maxsplit=1)[0].strip() or None
    assert tags({"request": {"url": url}}).get("url") == expected
