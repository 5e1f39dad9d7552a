"""Stack traces that reach us as text, turned into Sentry `exception.values`.

Log shippers carry exceptions as whatever the runtime printed: a Python traceback, a Java
stack trace, a Node.js `err.stack`. Parsing that text into the structure sentry-sdk would
have sent lets one normalizer and one fingerprinter serve every source. The input is
untrusted and unbounded, so every pattern is anchored to one line and the scan is linear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_PY_HEADER = "Traceback (most recent call last):"
_PY_FRAME = re.compile(
    r'\s*File "(?P<path>[^"]*)", line (?P<lineno>\d{1,9})(?:, in (?P<function>.*))?')
_PY_REPEATED = re.compile(r"\[Previous line repeated \d+ more times?\]")
_PY_CHAIN = frozenset({
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
})
_EXC_LINE = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?:: ?(?P<value>.*)|[ \t]*)")
_PACKAGE_DIRS = ("/site-packages/", "/dist-packages/")
_PY_STDLIB = re.compile(r"/lib/(?:python|pypy)\d|/python\d+/lib/")

_JAVA_FRAME = re.compile(r"\s*at\s+(?P<qualified>[^\s(]+)\((?P<source>[^()]*)\)")
_JAVA_MORE = re.compile(r"\.\.\. (?P<count>\d{1,9}) (?:more|common frames omitted)")
_JAVA_HEADER = re.compile(
    r'(?:Exception in thread "[^"]*" )?'
    r"(?P<type>[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+)(?:: ?(?P<value>.*))?")
_JAVA_RUNTIME = ("java.", "javax.", "jdk.", "sun.", "com.sun.", "kotlin.", "kotlinx.", "scala.")
_JAVA_NO_FILE = frozenset({"", "Native Method", "Unknown Source"})

_NODE_LOCATION = re.compile(r"(?P<path>.+):(?P<lineno>\d{1,9}):(?P<colno>\d{1,9})")
_NODE_HEADER = re.compile(
    r"(?:Uncaught )?(?P<type>[A-Za-z_$][\w$.]*(?: \[[^\]]*\])?)(?:: ?(?P<value>.*))?")
_NODE_ERROR_NAME = re.compile(r"[\w$.]*(?:Error|Exception)(?: \[[^\]]*\])?")
_HEADER_LOOKBACK = 50
_MAX_CHAIN = 50
_MAX_FRAMES = 500


@dataclass(frozen=True, slots=True)
class ParsedTrace:
    """A parsed trace and the runtime that printed it ("python", "java" or "node"), which
    becomes the event's `platform`."""

    platform: str
    values: list[dict[str, Any]]


def parse_traceback(text: str) -> list[dict[str, Any]] | None:
    """Sentry `exception.values` (innermost cause first, frames oldest call first) for the
    first Python, Java or Node.js trace found in `text`, or None when it holds none. A trace
    cut off before its exception line keeps its frames under type "Error"; a chain keeps its
    50 outermost exceptions, a stack its 250 oldest and 250 newest frames. Never raises."""
    parsed = parse_trace(text)
    return parsed.values if parsed is not None else None


def parse_trace(text: str) -> ParsedTrace | None:
    """`parse_traceback` that also says which runtime printed the trace."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if _PY_HEADER in text:
        values = _parse_python(lines)
        if values:
            return ParsedTrace("python", values)
    for index, line in enumerate(lines):
        head = line.lstrip()
        if not (head.startswith("at ") or head.startswith("at\t")):
            continue
        if _java_frame(line) is not None:
            return ParsedTrace("java", _parse_java(lines, index))
        frame = _node_frame(line)
        if frame is not None and any(c in frame.get("abs_path", "") for c in "/\\."):
            return ParsedTrace("node", _parse_node(lines, index))
    return None


def split_type(name: str) -> tuple[str | None, str]:
    """('requests.exceptions', 'ConnectionError') for a dotted name, as sentry-sdk splits an
    exception's module from its type; (None, name) when there is nothing to split."""
    module, dot, short = name.rpartition(".")
    if not dot or not module or not short or " " in name:
        return None, name
    return module, short


def _exception(name: str, value: str, frames: list[dict[str, Any]]) -> dict[str, Any]:
    """One exception value; a huge stack keeps its oldest and newest frames, as Sentry trims
    them, and every frame is its own dict even where Java's "... N more" repeated one."""
    module, short = split_type(name)
    exception: dict[str, Any] = {"type": short, "value": value}
    if module is not None:
        exception["module"] = module
    if frames:
        half = _MAX_FRAMES // 2
        kept = frames if len(frames) <= _MAX_FRAMES else frames[:half] + frames[-half:]
        exception["stacktrace"] = {"frames": [dict(frame) for frame in kept]}
        if kept is not frames:
            exception["stacktrace"]["frames_omitted"] = [half, len(frames) - half]
    return exception


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _parse_python(lines: list[str]) -> list[dict[str, Any]]:
    """Every block of the first chain, in printed order: Python prints the innermost cause
    first, which is already Sentry's order."""
    start = next(i for i, line in enumerate(lines) if _PY_HEADER in line)
    values = _causes_without_traceback(lines, start)
    index: int | None = start
    while index is not None and index < len(lines):
        if _PY_HEADER in lines[index]:
            exception, index = _python_block(lines, index)
        else:
            exception, index = _python_exception_line(lines, index, _indent(lines[index]), [])
        if exception is not None:
            values.append(exception)
        index = _after_chain_separator(lines, index) if exception is not None else None
    return values[-_MAX_CHAIN:]


def _causes_without_traceback(lines: list[str], start: int) -> list[dict[str, Any]]:
    """A cause that was never raised is printed as a bare exception line above the first
    traceback, joined to it by a chain separator."""
    causes: list[dict[str, Any]] = []
    index = start - 1
    while True:
        while index >= 0 and not lines[index].strip():
            index -= 1
        if index < 0 or lines[index].strip() not in _PY_CHAIN:
            return causes
        index -= 1
        while index >= 0 and not lines[index].strip():
            index -= 1
        match = _EXC_LINE.fullmatch(lines[index].lstrip()) if index >= 0 else None
        if match is None:
            return causes
        causes.insert(0, _exception(match["type"], match["value"] or "", []))
        index -= 1


def _python_block(lines: list[str], start: int) -> tuple[dict[str, Any] | None, int]:
    header = lines[start]
    base = _indent(header) if header.strip() == _PY_HEADER else 0
    frames: list[dict[str, Any]] = []
    index = start + 1
    while index < len(lines):
        line = lines[index]
        match = _PY_FRAME.fullmatch(line)
        if match is not None:
            frames.append(_python_frame(match["path"], int(match["lineno"]), match["function"]))
            index += 1
            if index < len(lines) and _is_source_line(lines[index], base):
                frames[-1]["context_line"] = lines[index].strip()
                index += 1
            continue
        stripped = line.strip()
        if stripped and _indent(line) <= base:
            break
        index += 1
    exception, index = _python_exception_line(lines, index, base, frames)
    if exception is None and frames:
        exception = _exception("Error", "", frames)
    return exception, index


def _is_source_line(line: str, base: int) -> bool:
    stripped = line.strip()
    return (bool(stripped) and _indent(line) > base and _PY_FRAME.fullmatch(line) is None
            and not _is_caret_line(stripped) and _PY_REPEATED.fullmatch(stripped) is None)


def _is_caret_line(stripped: str) -> bool:
    return not stripped.strip("^~ ")


def _python_exception_line(lines: list[str], index: int, base: int,
                           frames: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, int]:
    if index >= len(lines):
        return None, index
    match = _EXC_LINE.fullmatch(lines[index].lstrip())
    if match is None or _indent(lines[index]) > base:
        return None, index
    value = [match["value"] or ""]
    index += 1
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped or stripped in _PY_CHAIN or _PY_HEADER in stripped:
            break
        value.append(lines[index])
        index += 1
    return _exception(match["type"], "\n".join(value), frames), index


def _after_chain_separator(lines: list[str], index: int) -> int | None:
    """Index of the next block of a chain, or None when the chain ends here."""
    index = _skip_blank(lines, index)
    if index >= len(lines) or lines[index].strip() not in _PY_CHAIN:
        return None
    index = _skip_blank(lines, index + 1)
    return index if index < len(lines) else None


def _skip_blank(lines: list[str], index: int) -> int:
    while index < len(lines) and not lines[index].strip():
        index += 1
    return index


def _python_frame(path: str, lineno: int, function: str | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"filename": path, "abs_path": path,
                             "function": (function or "").strip() or "?", "lineno": lineno}
    normalized = path.replace("\\", "/")
    cut = max(normalized.rfind(marker) for marker in _PACKAGE_DIRS)
    if cut >= 0:
        module = _module_from_path(normalized[cut + len(_PACKAGE_DIRS[0]):])
        if module is not None:
            frame["module"] = module
    frame["in_app"] = not (cut >= 0 or path.startswith("<frozen ")
                           or _PY_STDLIB.search(normalized.lower()) is not None)
    return frame


def _module_from_path(relative: str) -> str | None:
    parts = relative.split("/")
    parts[-1] = parts[-1].partition(".")[0]
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    return ".".join(parts)


def _header_exception(lines: list[str], first_frame: int, pattern: re.Pattern[str],
                      preferred: re.Pattern[str] | None = None,
                      lookback: int = _HEADER_LOOKBACK) -> tuple[str, str] | None:
    """Type and message of the exception line above the first frame: the nearest line
    (within a bounded window) that looks like one; lines between it and the frames
    continue its message."""
    for index in range(first_frame - 1, max(-1, first_frame - 1 - lookback), -1):
        match = pattern.fullmatch(lines[index].strip())
        if match is not None and (preferred is None
                                  or preferred.fullmatch(match["type"]) is not None):
            rest = [line.strip() for line in lines[index + 1:first_frame]]
            return match["type"], "\n".join([match["value"] or "", *rest])
    return None


def _unnamed(lines: list[str], first_frame: int) -> tuple[str, str]:
    """Frames with no recognizable exception line above them: the line above is the message."""
    return "Error", lines[first_frame - 1].strip() if first_frame > 0 else ""


def _java_frame(line: str) -> dict[str, Any] | None:
    match = _JAVA_FRAME.match(line)
    if match is None:
        return None
    owner, dot, method = match["qualified"].rpartition(".")
    if not dot or not owner or not method:
        return None
    module = owner.rpartition("/")[2]
    frame: dict[str, Any] = {"module": module, "function": method}
    source = match["source"].strip()
    filename, colon, lineno = source.rpartition(":")
    if colon and lineno.isdigit() and len(lineno) <= 9:
        frame["filename"] = filename
        frame["lineno"] = int(lineno)
    elif source not in _JAVA_NO_FILE:
        frame["filename"] = source
    frame["in_app"] = not module.startswith(_JAVA_RUNTIME)
    return frame


def _parse_java(lines: list[str], first_frame: int) -> list[dict[str, Any]]:
    """Java prints the top-level exception first and each frame list most recent call first;
    both are reversed for Sentry. "... N more" stands for the enclosing trace's last N frames,
    which are restored so every exception carries its whole stack."""
    name, value = (_header_exception(lines, first_frame, _JAVA_HEADER)
                   or _unnamed(lines, first_frame))
    blocks: list[tuple[str, list[str], list[dict[str, Any]]]] = [(name, [value], [])]
    suppressed = False
    for line in lines[first_frame:]:
        stripped = line.strip()
        frame = _java_frame(line)
        more = _JAVA_MORE.fullmatch(stripped)
        if stripped.startswith("Caused by:") and not (suppressed and line[:1].isspace()):
            if len(blocks) == _MAX_CHAIN:
                break
            suppressed = False
            cause = stripped[len("Caused by:"):].strip()
            match = _JAVA_HEADER.fullmatch(cause) or _EXC_LINE.fullmatch(cause)
            blocks.append((match["type"], [match["value"] or ""], []) if match
                          else ("Error", [cause], []))
        elif stripped.startswith("Suppressed:"):
            suppressed = True
        elif suppressed and line[:1].isspace():
            continue
        elif suppressed:
            break
        elif frame is not None:
            blocks[-1][2].append(frame)
        elif more is not None and len(blocks) > 1:
            enclosing = blocks[-2][2]
            count = min(int(more["count"]), len(enclosing))
            blocks[-1][2].extend(enclosing[len(enclosing) - count:])
        elif more is None and blocks[-1][2]:
            break
        elif more is None and stripped:
            blocks[-1][1].append(stripped)
    return [_exception(name, "\n".join(value), frames[::-1])
            for name, value, frames in reversed(blocks)]


def _node_frame(line: str) -> dict[str, Any] | None:
    stripped = line.strip()
    if not stripped.startswith("at ") and not stripped.startswith("at\t"):
        return None
    rest = stripped[3:].strip()
    function = ""
    location = rest
    if rest.endswith(")"):
        head, sep, inner = rest[:-1].partition(" (")
        if sep:
            function, location = head.strip(), inner
    match = _NODE_LOCATION.fullmatch(location)
    frame: dict[str, Any] = {}
    if match is not None:
        path = match["path"]
        frame = {"filename": path, "abs_path": path, "lineno": int(match["lineno"]),
                 "colno": int(match["colno"])}
    elif function and location in ("<anonymous>", "native"):
        frame = {"filename": location}
    elif not (function and location.startswith("index ")):
        return None
    if function.startswith("async "):
        function = function[len("async "):].strip()
    path = frame.get("abs_path", "")
    frame["function"] = function or "?"
    frame["in_app"] = bool(path) and not ("node_modules" in path or path.startswith("node:")
                                          or path.startswith("internal/"))
    return frame


def _parse_node(lines: list[str], first_frame: int) -> list[dict[str, Any]]:
    """V8 prints the most recent call first; Sentry wants it last."""
    name, value = (_header_exception(lines, first_frame, _NODE_HEADER, _NODE_ERROR_NAME)
                   or _header_exception(lines, first_frame, _NODE_HEADER, lookback=1)
                   or _unnamed(lines, first_frame))
    frames: list[dict[str, Any]] = []
    for line in lines[first_frame:]:
        frame = _node_frame(line)
        if frame is None:
            break
        frames.append(frame)
    return [_exception(name, value, frames[::-1])]
