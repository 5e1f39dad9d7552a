"""The issue search language of the list page and `?q=` of the operator API, as Sentry's
users type it: free words match the title and culprit, `key:value` filters by a tag
(`browser:"Chrome 120"`, `server_name:web-1`), by the user (`user.email:`, `user.id:`,
`user.username:`, `user.ip:`), by `release:`, `environment:`, `level:`, and `is:`
picks a state (unresolved, resolved, ignored, regressed, new). A leading `!` negates a
filter; double quotes keep spaces and colons in a value or a phrase (`\\"` for a quote).

Hand-written because it is a few lines of scanning no library does in this shape;
parse() is pure and raises SearchError naming the position of what it cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IS_VALUES = ("unresolved", "resolved", "ignored", "regressed", "new")
USER_FIELDS = {"user.id": "user_id", "user.email": "email", "user.username": "username",
               "user.ip": "ip_address", "user.ip_address": "ip_address"}
# Keys that mean an issue column or the users table rather than a tag.
SPECIAL_KEYS = frozenset({"is", "level", "release", "environment", *USER_FIELDS})
MAX_QUERY = 1000
MAX_TERMS = 20
MAX_KEY = 64


class SearchError(ValueError):
    """The search text cannot be read; the message says where."""


@dataclass(frozen=True)
class Filter:
    key: str
    value: str
    negated: bool = False


@dataclass(frozen=True)
class Search:
    words: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = field(default_factory=tuple)

    def values(self, key: str) -> list[str]:
        return [f.value for f in self.filters if f.key == key and not f.negated]


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The quoted string starting at text[start] == '"'; (value, index after it)."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise SearchError(f"q: unterminated quote starting at position {start + 1}")


def _token(text: str, start: int) -> tuple[str, int]:
    """A bare word or a quoted string starting at `start`; (value, index after it)."""
    if text[start] == '"':
        return _quoted(text, start)
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end], end


def _check_filter(item: Filter, position: int) -> None:
    where = f"position {position}"
    if not item.key or len(item.key) > MAX_KEY or any(c.isspace() or c == '"'
                                                      for c in item.key):
        raise SearchError(f"q: {item.key!r} at {where} is not a tag name")
    if item.value == "":
        raise SearchError(f"q: {item.key}: needs a value at {where} "
                          f"(quote it to search for spaces: {item.key}:\"a b\")")
    if item.key == "is" and item.value not in IS_VALUES:
        raise SearchError(f"q: is:{item.value} at {where}: is: takes one of "
                          f"{', '.join(IS_VALUES)}")


def parse(text: str) -> Search:
    if len(text) > MAX_QUERY:
        raise SearchError(f"q: longer than {MAX_QUERY} characters")
    words: list[str] = []
    filters: list[Filter] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        start = i
        negated = text[i] == "!" and i + 1 < len(text) and not text[i + 1].isspace()
        if negated:
            i += 1
        if text[i] == '"':
            value, i = _quoted(text, i)
            if negated:
                raise SearchError(f"q: '!' at position {start + 1} negates filters "
                                  "(!key:value), not words")
            if value.strip():
                words.append(value)
            _check_terms(words, filters)
            continue
        end = i
        while end < len(text) and not text[end].isspace() and text[end] not in ':"':
            end += 1
        if end < len(text) and text[end] == ":" and end > i:
            key = text[i:end].lower()
            value, i = _token(text, end + 1) if end + 1 < len(text) else ("", end + 1)
            item = Filter(key, value.strip().lower() if key == "is" else value, negated)
            _check_filter(item, start + 1)
            filters.append(item)
        else:
            word, i = _token(text, start)
            words.append(word)
        _check_terms(words, filters)
    return Search(tuple(words), tuple(filters))


def _check_terms(words: list[str], filters: list[Filter]) -> None:
    if len(words) + len(filters) > MAX_TERMS:
        raise SearchError(f"q: more than {MAX_TERMS} terms")


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in '":' for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unparse(search: Search) -> str:
    """Text that parses back to `search` (for links that add or remove a filter)."""
    parts = [f"{'!' if f.negated else ''}{f.key}:{_quote(f.value)}" for f in search.filters]
    parts += [_quote(word) if word.startswith("!") or any(c.isspace() or c in ':"'
                                                          for c in word) else word
              for word in search.words]
    return " ".join(parts)
