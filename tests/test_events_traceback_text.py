"""Stack traces as text: Python, Java and Node.js, parsed into Sentry exception values."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.formats.traceback_text import parse_trace, parse_traceback, split_type

PY_CARETS = '''\
Traceback (most recent call last):
  File "/srv/app/handlers.py", line 41, in handle
    result = client.fetch(url)
             ^^^^^^^^^^^^^^^^^
  File "/srv/venv/lib/python3.11/site-packages/requests/api.py", line 73, in get
    return request("get", url, params=params, **kwargs)
           ~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/json/decoder.py", line 337, in decode
    obj, end = self.raw_decode(s, idx=_w(s, 0).end())
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.example.com', port=443)
'''

PY_CAUSE = '''\
Traceback (most recent call last):
  File "/srv/app/store.py", line 10, in load
    return cache[key]
KeyError: 'user:42'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/srv/app/main.py", line 5, in <module>
    run()
  File "/srv/app/store.py", line 12, in load
    raise LookupError("no such user") from exc
LookupError: no such user
'''

PY_CONTEXT = '''\
Traceback (most recent call last):
  File "/srv/app/db.py", line 3, in connect
    sock.connect(addr)
ConnectionRefusedError: [Errno 111] Connection refused

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/srv/app/db.py", line 7, in connect
    log.error("down")
  File "/usr/local/lib/python3.12/logging/__init__.py", line 1568, in error
    self._log(ERROR, msg, args, **kwargs)
OSError: logging failed
'''


def frames(exception: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(f.get("filename"), f.get("function"), f.get("lineno"), f.get("in_app"))
            for f in exception["stacktrace"]["frames"]]


def test_python_single_with_carets_and_dotted_type() -> None:
    parsed = parse_trace(PY_CARETS)
    assert parsed is not None and parsed.platform == "python"
    [exception] = parsed.values
    assert exception["type"] == "ConnectionError"
    assert exception["module"] == "requests.exceptions"
    assert exception["value"] == "HTTPSConnectionPool(host='api.example.com', port=443)"
    assert exception["stacktrace"]["frames"] == [
        {"filename": "/srv/app/handlers.py", "abs_path": "/srv/app/handlers.py",
         "function": "handle", "lineno": 41, "in_app": True,
         "context_line": "result = client.fetch(url)"},
        {"filename": "/srv/venv/lib/python3.11/site-packages/requests/api.py",
         "abs_path": "/srv/venv/lib/python3.11/site-packages/requests/api.py",
         "function": "get", "lineno": 73, "module": "requests.api", "in_app": False,
         "context_line": 'return request("get", url, params=params, **kwargs)'},
        {"filename": "/usr/lib/python3.11/json/decoder.py",
         "abs_path": "/usr/lib/python3.11/json/decoder.py",
         "function": "decode", "lineno": 337, "in_app": False,
         "context_line": "obj, end = self.raw_decode(s, idx=_w(s, 0).end())"},
    ]


def test_python_direct_cause_chain_is_innermost_first() -> None:
    values = parse_traceback(PY_CAUSE)
    assert values is not None
    assert [(v["type"], v["value"]) for v in values] == [
        ("KeyError", "'user:42'"), ("LookupError", "no such user")]
    assert frames(values[0]) == [("/srv/app/store.py", "load", 10, True)]
    assert frames(values[1]) == [("/srv/app/main.py", "<module>", 5, True),
                                 ("/srv/app/store.py", "load", 12, True)]


def test_python_during_handling_chain() -> None:
    values = parse_traceback(PY_CONTEXT)
    assert values is not None
    assert [v["type"] for v in values] == ["ConnectionRefusedError", "OSError"]
    assert values[0]["value"] == "[Errno 111] Connection refused"
    assert frames(values[1]) == [
        ("/srv/app/db.py", "connect", 7, True),
        ("/usr/local/lib/python3.12/logging/__init__.py", "error", 1568, False)]
    assert "module" not in values[1]["stacktrace"]["frames"][1]


def test_python_embedded_in_log_lines() -> None:
    text = "2024-05-01 12:00:00 ERROR worker: job 17 failed\ncontext: retry 3\n" + PY_CAUSE
    values = parse_traceback(text)
    assert values is not None
    assert [v["type"] for v in values] == ["KeyError", "LookupError"]


def test_python_value_without_message_and_repeated_frames() -> None:
    text = ('Traceback (most recent call last):\n'
            '  File "/app/r.py", line 2, in f\n'
            '    return f()\n'
            '           ^^^\n'
            '  [Previous line repeated 996 more times]\n'
            '  File "/app/r.py", line 9, in g\n'
            'KeyboardInterrupt\n')
    [exception] = parse_traceback(text) or []
    assert exception["type"] == "KeyboardInterrupt"
    assert exception["value"] == ""
    assert frames(exception) == [("/app/r.py", "f", 2, True), ("/app/r.py", "g", 9, True)]
    assert exception["stacktrace"]["frames"][0]["context_line"] == "return f()"
    assert "context_line" not in exception["stacktrace"]["frames"][1]


def test_python_multiline_value_stops_at_blank_line() -> None:
    text = ('Traceback (most recent call last):\n'
            '  File "/app/q.py", line 4, in run\n'
            'psycopg.errors.UndefinedTable: relation "x" does not exist\n'
            'LINE 1: SELECT * FROM x\n'
            '                      ^\n'
            '\n'
            'INFO next request\n')
    [exception] = parse_traceback(text) or []
    assert exception["type"] == "UndefinedTable"
    assert exception["module"] == "psycopg.errors"
    assert exception["value"] == ('relation "x" does not exist\nLINE 1: SELECT * FROM x\n'
                                  '                      ^')


def test_python_cause_without_traceback_and_syntax_error_frame() -> None:
    text = ('ValueError: bad input\n'
            '\n'
            'The above exception was the direct cause of the following exception:\n'
            '\n'
            'Traceback (most recent call last):\n'
            '  File "/app/m.py", line 1, in <module>\n'
            '  File "/app/broken.py", line 3\n'
            '    def (\n'
            '        ^\n'
            'SyntaxError: invalid syntax\n')
    values = parse_traceback("log line\nzzz.ZeroError\n\nDuring handling of the above "
                             "exception, another exception occurred:\n\n" + text)
    assert values is not None
    assert [(v["type"], v["value"], "stacktrace" in v) for v in values] == [
        ("ZeroError", "", False), ("ValueError", "bad input", False),
        ("SyntaxError", "invalid syntax", True)]
    assert frames(values[2]) == [("/app/m.py", "<module>", 1, True),
                                 ("/app/broken.py", "?", 3, True)]
    assert values[2]["stacktrace"]["frames"][1]["context_line"] == "def ("


def test_python_chained_cause_without_frames() -> None:
    text = ('Traceback (most recent call last):\n'
            '  File "/app/a.py", line 1, in f\n'
            'KeyError: 1\n'
            '\n'
            'The above exception was the direct cause of the following exception:\n'
            '\n'
            'RuntimeError: wrapped\n')
    values = parse_traceback(text)
    assert values is not None
    assert [(v["type"], "stacktrace" in v) for v in values] == [
        ("KeyError", True), ("RuntimeError", False)]


def test_python_indented_and_truncated() -> None:
    indented = "".join("    " + line + "\n" for line in PY_CAUSE.splitlines())
    values = parse_traceback(indented)
    assert values is not None and [v["type"] for v in values] == ["KeyError", "LookupError"]
    truncated = 'Traceback (most recent call last):\n  File "/app/a.py", line 3, in f\n'
    [exception] = parse_traceback(truncated) or []
    assert (exception["type"], exception["value"]) == ("Error", "")
    assert frames(exception) == [("/app/a.py", "f", 3, True)]


@pytest.mark.parametrize(("path", "module", "in_app"), [
    ("/usr/lib/python3/dist-packages/yaml/__init__.py", "yaml", False),
    ("C:\\venv\\Lib\\site-packages\\django\\db\\models.py", "django.db.models", False),
    ("/opt/site-packages/foo-1.0.egg/x.py", None, False),
    ("<frozen importlib._bootstrap>", None, False),
    ("/usr/local/lib/pypy3.10/os.py", None, False),
    ("<stdin>", None, True),
    ("app/views.py", None, True),
])
def test_python_frame_module_and_in_app(path: str, module: str | None, in_app: bool) -> None:
    text = f'Traceback (most recent call last):\n  File "{path}", line 1, in f\nE: x\n'
    [exception] = parse_traceback(text) or []
    [frame] = exception["stacktrace"]["frames"]
    assert frame.get("module") == module
    assert frame["in_app"] is in_app


JAVA = '''\
2024-05-01 12:00:00.123 ERROR 1 --- [main] o.s.boot.SpringApplication : Application run failed
java.lang.IllegalStateException: Failed to execute CommandLineRunner
\tat org.springframework.boot.SpringApplication.callRunner(SpringApplication.java:798) ~[sb.jar]
\tat com.example.App.main(App.java:12) [app.jar:1.0]
Caused by: com.example.store.StoreException: cannot load user
 id=42
\tat com.example.store.Store.load(Store.java:55)
\tat com.example.App.run(App.java:30)
\tat org.springframework.boot.SpringApplication.callRunner(SpringApplication.java:795)
\t... 1 more
\tSuppressed: java.io.IOException: close failed
\t\tat com.example.store.Store.close(Store.java:70)
\t\t... 2 more
Caused by: java.net.ConnectException: Connection refused
\tat java.base/sun.nio.ch.Net.connect0(Native Method)
\tat com.example.store.Store.load(Store.java:50)
\t... 3 more

2024-05-01 12:00:01.000 INFO 1 --- [main] next line
'''


def test_java_caused_by_chain_reversed_with_more_frames_restored() -> None:
    parsed = parse_trace(JAVA)
    assert parsed is not None and parsed.platform == "java"
    values = parsed.values
    assert [(v.get("module"), v["type"], v["value"]) for v in values] == [
        ("java.net", "ConnectException", "Connection refused"),
        ("com.example.store", "StoreException", "cannot load user\nid=42"),
        ("java.lang", "IllegalStateException", "Failed to execute CommandLineRunner"),
    ]
    main = ("com.example.App", "main", "App.java", 12, True)
    callrunner = ("org.springframework.boot.SpringApplication", "callRunner",
                  "SpringApplication.java")

    def java_frames(exception: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(f["module"], f["function"], f.get("filename"), f.get("lineno"), f["in_app"])
                for f in exception["stacktrace"]["frames"]]

    assert java_frames(values[2]) == [main, (*callrunner, 798, True)]
    assert java_frames(values[1]) == [main, (*callrunner, 795, True),
                                      ("com.example.App", "run", "App.java", 30, True),
                                      ("com.example.store.Store", "load", "Store.java", 55, True)]
    assert java_frames(values[0]) == [main, (*callrunner, 795, True),
                                      ("com.example.App", "run", "App.java", 30, True),
                                      ("com.example.store.Store", "load", "Store.java", 50, True),
                                      ("sun.nio.ch.Net", "connect0", None, None, False)]


def test_java_thread_prefix_and_sources() -> None:
    text = ('Exception in thread "main" java.lang.NullPointerException\n'
            '\tat java.base/java.util.Objects.requireNonNull(Objects.java:209)\n'
            '\tat com.example.Outer$Inner.lambda$run$0(Unknown Source)\n'
            '\tat com.example.Gen.<init>(Gen.kt)\n')
    [exception] = parse_traceback(text) or []
    assert (exception["module"], exception["type"], exception["value"]) == (
        "java.lang", "NullPointerException", "")
    assert exception["stacktrace"]["frames"] == [
        {"module": "com.example.Gen", "function": "<init>", "filename": "Gen.kt",
         "in_app": True},
        {"module": "com.example.Outer$Inner", "function": "lambda$run$0", "in_app": True},
        {"module": "java.util.Objects", "function": "requireNonNull",
         "filename": "Objects.java", "lineno": 209, "in_app": False},
    ]


NODE = '''\
[12:00:00] error: request failed
TypeError: Cannot read properties of undefined (reading 'id')
    at getUser (/app/src/users.js:10:5)
    at async Promise.all (index 0)
    at Layer.handle [as handle_request] (/app/node_modules/express/lib/router/layer.js:95:5)
    at /app/src/server.js:3:1
    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)
{ code: 'E_USER' }
'''


def test_node_most_recent_first_is_reversed() -> None:
    parsed = parse_trace(NODE)
    assert parsed is not None and parsed.platform == "node"
    [exception] = parsed.values
    assert (exception["type"], exception["value"]) == (
        "TypeError", "Cannot read properties of undefined (reading 'id')")
    assert [(f.get("abs_path"), f["function"], f.get("lineno"), f.get("colno"), f["in_app"])
            for f in exception["stacktrace"]["frames"]] == [
        ("node:internal/process/task_queues", "process.processTicksAndRejections", 95, 5, False),
        ("/app/src/server.js", "?", 3, 1, True),
        ("/app/node_modules/express/lib/router/layer.js", "Layer.handle [as handle_request]",
         95, 5, False),
        (None, "Promise.all", None, None, False),
        ("/app/src/users.js", "getUser", 10, 5, True),
    ]


def test_node_error_code_and_multiline_message() -> None:
    text = ('Error [ERR_INVALID_ARG_TYPE]: The "path" argument must be of type string\n'
            'Received undefined\n'
            '    at new NodeError (node:internal/errors:405:5)\n'
            '    at Array.map (<anonymous>)\n')
    [exception] = parse_traceback(text) or []
    assert exception["type"] == "Error [ERR_INVALID_ARG_TYPE]"
    assert "module" not in exception
    assert exception["value"] == ('The "path" argument must be of type string\n'
                                  'Received undefined')
    assert [f["function"] for f in exception["stacktrace"]["frames"]] == [
        "Array.map", "new NodeError"]
    assert exception["stacktrace"]["frames"][0]["filename"] == "<anonymous>"


def test_node_without_recognizable_header() -> None:
    [exception] = parse_traceback("something odd happened\n    at f (/a/b.js:1:2)\n") or []
    assert (exception["type"], exception["value"]) == ("Error", "something odd happened")


@pytest.mark.parametrize("text", [
    "", "hello", "\n\n\n", "Traceback (most recent call last):",
    "Traceback (most recent call last):\nnot a frame here\n",
    "we met at 10:20:30\n  at 10:20:30\n", "look at this (thing)",
    "ValueError: looks like an exception but has no trace",
    "  | ExceptionGroup: eg\n", "at\n",
])
def test_no_trace(text: str) -> None:
    assert parse_traceback(text) is None


@pytest.mark.parametrize("text", [
    'File "' * 100_000,
    'Traceback (most recent call last):\n' + 'File "' * 100_000,
    'Traceback (most recent call last):\n  File "' + "x" * 1_000_000,
    "  at " * 200_000,
    "\tat a." * 100_000 + "(",
    "at " + "1:" * 500_000,
    "a." * 500_000 + ": x\n\tat a.b(c)",
    "Error: " + "x" * 1_000_000 + "\n    at f (/a.js:1:1)",
    ("\n" + " " * 9) * 100_000 + "\n    at " + "(" * 500_000,
    "Caused by: " * 100_000,
    "x.y:" * 250_000 + "\n\tat x.y(z)\n" + "... 1 more\n" * 10,
    "a.X: y\n\tat a.b(c)\nCaused by: a.B: c\n" + "x\n" * 500_000,
    "a.X: y\n\tat a.b(c)\n" + "Caused by: a.B: c\n\t... 99999999 more\n" * 50_000,
    ("E: x\n\nThe above exception was the direct cause of the following exception:\n\n"
     * 20_000 + "Traceback (most recent call last):\n"),
])
def test_adversarial_megabyte_inputs_return(text: str) -> None:
    result = parse_traceback(text)
    assert result is None or isinstance(result, list)


def test_huge_stacks_keep_oldest_and_newest_frames() -> None:
    frames_text = "".join(f'  File "/app/x.py", line {n}, in f\n    f()\n' for n in range(20_000))
    [exception] = parse_traceback(
        "Traceback (most recent call last):\n" + frames_text + "RecursionError: deep\n") or []
    stacktrace = exception["stacktrace"]
    assert len(stacktrace["frames"]) == 500
    assert stacktrace["frames_omitted"] == [250, 19_750]
    assert [f["lineno"] for f in stacktrace["frames"][249:251]] == [249, 19_750]


def test_long_java_chains_are_bounded() -> None:
    top = "java.lang.X: top\n" + "\tat a.B.c(B.java:1)\n" * 5_000
    causes = "Caused by: a.Y: cause\n\tat a.B.d(B.java:2)\n\t... 5000 more\n" * 1_000
    values = parse_traceback(top + causes)
    assert values is not None and len(values) == 50
    assert values[-1]["value"] == "top"
    assert [len(v["stacktrace"]["frames"]) for v in values] == [500] * 50
    frames = values[0]["stacktrace"]["frames"]
    assert len({id(frame) for frame in frames}) == 500
    assert frames[-1]["function"] == "d"


@pytest.mark.parametrize(("name", "expected"), [
    ("requests.exceptions.ConnectionError", ("requests.exceptions", "ConnectionError")),
    ("ValueError", (None, "ValueError")),
    ("Error [ERR_X.Y]", (None, "Error [ERR_X.Y]")),
    (".x", (None, ".x")),
    ("x.", (None, "x.")),
])
def test_split_type(name: str, expected: tuple[str | None, str]) -> None:
    assert split_type(name) == expected


FRAGMENTS = st.sampled_from([
    "Traceback (most recent call last):\n", '  File "/a.py", line 3, in f\n', "    x()\n",
    "    ^^^^\n", "ValueError: v\n", "\n", "The above exception was the direct cause of the "
    "following exception:\n", "During handling of the above exception, another exception "
    "occurred:\n", "\tat a.B.c(B.java:1)\n", "Caused by: x.Y: z\n", "\t... 3 more\n",
    "\tSuppressed: x.Z\n", "    at f (/a.js:1:2)\n", "    at /b.js:3:4\n", "TypeError: t\n",
    "  [Previous line repeated 3 more times]\n", "at ", "(", ")", ":", '"', "\r\n", "...",
])


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(FRAGMENTS, st.text(max_size=5))).map("".join)))
def test_never_raises(text: str) -> None:
    result = parse_traceback(text)
    assert result is None or (result and all(isinstance(v["type"], str) for v in result))


SOURCE = st.text(string.ascii_letters + string.digits + " ()=+.,_'", min_size=1).filter(
    lambda s: s.strip() != "")
FRAME = st.tuples(
    st.text(string.ascii_letters + string.digits + "/_.-", min_size=1),
    st.integers(0, 10**9 - 1),
    st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
              st.sampled_from(["<module>", "<lambda>", "<listcomp>"])),
    st.one_of(st.none(), SOURCE),
)
TYPE = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}(\.[A-Za-z_][A-Za-z0-9_]{0,10}){0,3}",
                     fullmatch=True)
VALUE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")))


@settings(max_examples=200, deadline=None)
@given(st.lists(FRAME, min_size=1, max_size=8), TYPE, VALUE)
def test_python_round_trip(generated: list[tuple[str, int, str, str | None]], name: str,
                           value: str) -> None:
    lines = ["Traceback (most recent call last):"]
    for path, lineno, function, source in generated:
        lines.append(f'  File "{path}", line {lineno}, in {function}')
        if source is not None:
            lines.append(f"    {source.strip()}")
    lines.append(f"{name}: {value}" if value else name)
    [exception] = parse_traceback("\n".join(lines) + "\n") or []
    module = exception.get("module")
    assert (f"{module}.{exception['type']}" if module else exception["type"]) == name
    assert exception["value"] == value
    assert [(f["filename"], f["lineno"], f["function"], f.get("context_line"))
            for f in exception["stacktrace"]["frames"]] == [
        (path, lineno, function, source.strip() if source else None)
        for path, lineno, function, source in generated]
