"""Maps parsed TOML onto frozen dataclasses, collecting precise errors.

Hand-written because the errors are the product here: every problem must name the file,
the dotted key (`smtp.listeners[1].listen`) and what is wrong, unknown keys must be
errors, and secrets may come inline, from the environment or from a file. Validation
libraries either word their errors for developers or pull in a large dependency for what
is a ~200-line walk over type hints.

Field types understood: str, int, float, bool, Path, Literal[...], list[T], dict[str, T],
T | None, nested dataclasses, Secret, and Annotated[float, DURATION] / Annotated[int, SIZE]
/ HostPort for the value syntaxes in `daemon.units`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import orjson

from daemon.units import HostPort, parse_duration, parse_host_port, parse_size

T = TypeVar("T")

DURATION = "duration"
SIZE = "size"


class Secret:
    """A secret string that never shows up in logs, reprs or `check-config` output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True)
class Issue:
    key: str
    message: str


class Invalid(Exception):
    """Raised by a dataclass's `check()` hook: the key (relative to it) and the problem."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def caught(check: Callable[..., None], *args: Any) -> typing.Iterator[Invalid]:
    """The problem a raising check finds, for a `check()` that yields every problem."""
    try:
        check(*args)
    except Invalid as err:
        yield err


def show(value: Any) -> str:
    """A value as the operator wrote it in TOML, for error messages."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return repr(value)


def _top(key: str) -> str:
    """The field a problem's key starts with: 'projects' for 'projects[1].id'."""
    return key.split(".", 1)[0].split("[", 1)[0]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Loader:
    """Walks one TOML document; `issues` holds every problem found, in document order."""

    def __init__(self, base_dir: Path, environ: typing.Mapping[str, str] | None = None) -> None:
        self.base_dir = base_dir
        self.environ = os.environ if environ is None else environ
        self.issues: list[Issue] = []

    def load(self, cls: type[T], data: Any, path: str = "") -> T | None:
        return self._dataclass(cls, data, path)

    def _fail(self, key: str, message: str) -> None:
        self.issues.append(Issue(key, message))

    def _dataclass(self, cls: type[T], data: Any, path: str) -> T | None:
        if not isinstance(data, dict):
            self._fail(path, f"expected a table, got {show(data)}")
            return None
        hints = get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        secret_keys = {
            f"{name}{suffix}": name
            for name in fields if _is_secret(hints[name]) for suffix in ("_env", "_file")
        }
        for key in data:
            if key not in fields and key not in secret_keys:
                hint = _close_match(key, [*fields, *secret_keys])
                suggestion = f" (did you mean {hint!r}?)" if hint else ""
                self._fail(_join(path, key), f"unknown key{suggestion}")
        values: dict[str, Any] = {}
        ok = True
        for name, field in fields.items():
            key = _join(path, name)
            if _is_secret(hints[name]):
                value = self._secret(data, name, path)
                if value is not None:
                    values[name] = value
                continue
            if name not in data:
                required = (field.default is dataclasses.MISSING
                            and field.default_factory is dataclasses.MISSING)
                if required:
                    self._fail(key, "is required")
                    ok = False
                continue
            before = len(self.issues)
            value = self._value(hints[name], data[name], key)
            if len(self.issues) > before:
                ok = False
            else:
                values[name] = value
        if not ok:
            self._partial_check(cls, values, data, path)
            return None
        obj = cls(**values)
        return obj if self._check(obj, path) else None

    def _check(self, obj: Any, path: str, *, skip: frozenset[str] = frozenset()) -> bool:
        """Run the dataclass's `check()`, which raises one Invalid or yields each problem;
        problems under a key in `skip` are not reported. True when it found none."""
        check = getattr(obj, "check", None)
        if check is None:
            return True
        found: list[Invalid] = []
        try:
            result = check()
            if result is not None:
                found.extend(result)
        except Invalid as err:
            found.append(err)
        for err in found:
            if _top(err.key) not in skip:
                self._fail(_join(path, err.key), err.message)
        return not found

    def _partial_check(self, cls: type[Any], values: dict[str, Any], data: dict[str, Any],
                       path: str) -> None:
        """A table with bad fields still gets the checks of its good ones, when its class
        says each problem its `check()` finds concerns only the field it names
        (`partial_check = True`), or names the other fields a field's problems depend on
        (`partial_check = {"rules": ("channels",)}`): the bad fields take their defaults
        for the run, and problems about them (reported already) or depending on them
        are left out."""
        partial = getattr(cls, "partial_check", False)
        if not partial:
            return
        fields = {f.name: f for f in dataclasses.fields(cls)}
        failed = frozenset(name for name in fields if name in data and name not in values)
        depends = partial if isinstance(partial, dict) else {}
        skip = failed | {name for name, on in depends.items() if failed.intersection(on)}
        for name in failed:
            field = fields[name]
            if field.default is not dataclasses.MISSING:
                values[name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                values[name] = field.default_factory()
            else:
                return
        try:
            obj = cls(**values)
        except (TypeError, ValueError):
            return
        self._check(obj, path, skip=frozenset(skip))

    def _secret(self, data: dict[str, Any], name: str, path: str) -> Secret | None:
        given = [k for k in (name, f"{name}_env", f"{name}_file") if k in data]
        if len(given) > 1:
            self._fail(_join(path, given[1]), f"give only one of {', '.join(given)}")
            return None
        if not given:
            return None
        key = given[0]
        raw = data[key]
        where = _join(path, key)
        if not isinstance(raw, str):
            self._fail(where, f"expected a string, got {show(raw)}")
            return None
        if key.endswith("_env"):
            if raw not in self.environ:
                self._fail(where, f"environment variable {raw} is not set")
                return None
            return Secret(self.environ[raw])
        if key.endswith("_file"):
            file = self._path(raw)
            try:
                return Secret(file.read_text().strip())
            except OSError as err:
                self._fail(where, f"cannot read {file}: {err.strerror}")
                return None
        return Secret(raw)

    def _path(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def _value(self, hint: Any, raw: Any, key: str) -> Any:
        origin = get_origin(hint)
        args = get_args(hint)
        if origin is typing.Annotated:
            return self._annotated(args[0], args[1], raw, key)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            return self._value(inner[0], raw, key)
        if origin is Literal:
            if raw not in args:
                self._fail(key, f"{show(raw)} is not one of {', '.join(show(a) for a in args)}")
            return raw
        if origin is list:
            if not isinstance(raw, list):
                self._fail(key, f"expected a list, got {show(raw)}")
                return None
            return [self._value(args[0], item, f"{key}[{i}]") for i, item in enumerate(raw)]
        if origin is dict:
            if not isinstance(raw, dict):
                self._fail(key, f"expected a table, got {show(raw)}")
                return None
            return {k: self._value(args[1], v, _join(key, k)) for k, v in raw.items()}
        if dataclasses.is_dataclass(hint) and hint is not HostPort:
            return self._dataclass(hint, raw, key)  # type: ignore[arg-type]
        return self._scalar(hint, raw, key)

    def _annotated(self, base: Any, kind: str, raw: Any, key: str) -> Any:
        parsers: dict[str, Callable[[str], Any]] = {DURATION: parse_duration, SIZE: parse_size}
        if kind == SIZE and isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return raw
        if not isinstance(raw, str):
            example = '"30s"' if kind == DURATION else '"25MB"'
            self._fail(key, f"expected a {kind} string like {example}, got {show(raw)}")
            return None
        try:
            return base(parsers[kind](raw))
        except ValueError as err:
            self._fail(key, str(err).replace(repr(raw), show(raw)))
            return None

    def _scalar(self, hint: Any, raw: Any, key: str) -> Any:
        if hint is HostPort:
            if not isinstance(raw, str):
                self._fail(key, f"expected \"host:port\", got {show(raw)}")
                return None
            try:
                return parse_host_port(raw)
            except ValueError:
                self._fail(key, f"{show(raw)} is not a valid host:port")
                return None
        if hint is Path:
            if not isinstance(raw, str) or not raw:
                self._fail(key, f"expected a path, got {show(raw)}")
                return None
            return self._path(raw)
        expected = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        wrong = not isinstance(raw, hint) or (hint is int and isinstance(raw, bool))
        if hint in expected and wrong:
            self._fail(key, f"expected {expected[hint]}, got {show(raw)}")
            return None
        return raw


def _is_secret(hint: Any) -> bool:
    if hint is Secret:
        return True
    return get_origin(hint) in (typing.Union, types.UnionType) and Secret in get_args(hint)


def _close_match(key: str, options: list[str]) -> str | None:
    found = difflib.get_close_matches(key, options, n=1, cutoff=0.75)
    return found[0] if found else None
