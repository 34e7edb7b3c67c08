"""Read `graph.json`, check every field by hand and build the frozen `Graph` the runner uses.

Validation is hand-written rather than done with jsonschema: a 10,000-task graph must load in a few tens of
milliseconds on every (even no-op) build. schema.json describes the same format for editors and docs, and a test
keeps the two in agreement. Every problem is one `UserError` line: `<graph file>: <where>: <what>`.
"""

from __future__ import annotations

import gc
import marshal
import math
import os
import posixpath
import re
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gaffer import __version__
from gaffer.atomic import save_marshalled
from gaffer.config import TOML_NAME
from gaffer.digest import sha256
from gaffer.errors import UserError
from gaffer.graph.model import DEFAULT_PASS_ENV, Deps, Graph, Task, Tasks, did_you_mean, topological_order
from gaffer.units import parse_duration
from gaffer.workspace import workspace_root

TOP_FIELDS = ("tasks", "version", "env", "pass_env", "tools", "platform", "$schema")
TASK_FIELDS = ("command", "deps", "inputs", "outputs", "env", "pass_env", "tools", "timeout", "cache", "sandbox",
               "remote", "description")
FORMAT_VERSION = 1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"\s")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_RESERVED_DIRS = (".git", ".gaffer")  # gaffer's own state and git's: a task must not write there
_HOST_PROPERTIES = ("OSFamily", "ISA")  # always the executing machine's own (actions.host_properties)
_TASK_FIELD_SET = frozenset(TASK_FIELDS)
MAX_TIMEOUT_S = 365 * 24 * 3600  # a year: far beyond any build, well inside what clocks and REAPI's Duration hold
# The validated copy of the graph file: which layout of it this code reads (Task's fields are part of it).
_COPY_FORMAT = (3, __version__, Task._fields)


class _Bad(Exception):
    """A problem in one value; the caller, which knows where the value was, turns it into a UserError."""


def load_graph(path: str | os.PathLike[str], keep: bool = False,
               known: tuple[tuple[int, int, int, int], str] | None = None) -> Graph:
    """Load and validate a graph file; raises UserError (exit status 2) for every problem in it.

    A graph file whose bytes are those of the last one validated in this workspace is not parsed again: its
    validated copy (`.gaffer/graph`) is used, a few times faster at 10,000 tasks. `keep` writes that copy
    when there was none to use (`gaffer run`; commands that change nothing leave `.gaffer/` alone). `known`: a
    stat signature and the content digest the file had with it, vouched for by the caller (the no-op record,
    which keeps only a signature that was not racy): a file with that signature now is not read or hashed."""
    # Loading allocates a few hundred thousand objects and no reference cycles: the cyclic collector would
    # only walk them again and again (a fifth of the load time for 10,000 tasks), so it is off meanwhile.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return (known is not None and _load_known(path, *known)) or _load(path, keep)
    finally:
        if was_enabled:
            gc.enable()


def copy_path(root: str) -> str:
    return f"{root}/.gaffer/graph"


def _load_known(path: str | os.PathLike[str], signature: tuple[int, int, int, int], digest: str) -> Graph | None:
    """The graph from its validated copy without reading the file, if its signature is still `signature`
    (then its content is still the one `digest` names); None to load it as usual."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) != signature:
        return None
    root = workspace_root(path)
    copy = _read_copy(root, digest)
    return None if copy is None else _graph(path, root, signature, digest, copy)


def _graph(path: str | os.PathLike[str], root: str, signature: tuple[int, int, int, int], digest: str,
           copy: _Copy) -> Graph:
    tasks, platform, deps, groups, outputs, env, sandboxed = copy
    own = os.path.basename(path)
    # Removed before its task runs: the graph it was building from, or the settings it was read with, would be gone.
    for file, what in ((own, "this graph file"), (TOML_NAME, "the settings file beside this graph")):
        if file in outputs:
            name = next(n for n in tasks if file in tasks[n].outputs)
            raise UserError(f"{os.fspath(path)}: task {name!r}: output {file!r} is {what}, which gaffer would "
                            "delete before the task runs")
    return Graph(path=Path(os.path.abspath(path)), root=Path(root), tasks=tasks, platform=platform,
                 signature=signature, digest=digest, deps=deps, groups=groups, outputs=outputs, env=env,
                 sandboxed=sandboxed)


def _load(path: str | os.PathLike[str], keep: bool) -> Graph:
    shown = os.fspath(path)  # messages name the file as the user typed it
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())  # before reading: an edit made after it changes what the no-op record saw
            data = f.read()
    except OSError as e:
        raise UserError(f"{shown}: cannot read: {e.strerror or e}") from None
    root = workspace_root(path)
    signature = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    digest = sha256(data).hexdigest()
    copy = _read_copy(root, digest)
    if copy is None:
        tasks, platform = _validate(data, shown)
        if keep:
            _write_copy(root, digest, tasks, platform)
        copy = _facts(tasks, platform)
    return _graph(path, root, signature, digest, copy)


_Copy = tuple[Tasks, dict[str, str], Mapping[str, tuple[str, ...]], frozenset[str], frozenset[str], tuple[str, ...],
              bool]


def _facts(tasks: dict[str, Task], platform: dict[str, str]) -> _Copy:
    """What a Graph holds besides its tasks, read from them."""
    return (Tasks(tasks), platform, {name: t.deps for name, t in tasks.items()},
            frozenset(name for name, t in tasks.items() if t.is_group),
            frozenset(out for t in tasks.values() for out in t.outputs),
            tuple(sorted({name for t in tasks.values() for name in t.env})), any(t.sandbox for t in tasks.values()))


def _read_copy(root: str, digest: str) -> _Copy | None:
    """The validated copy of a graph file with this content digest; None (validate again) when there is none,
    or it is of another graph, another layout, or unreadable: a damaged copy (its checksum covers everything
    read later, each task when first asked for) is only a miss."""
    try:
        with open(copy_path(root), "rb") as f:
            fmt, copied, crc, body = marshal.loads(f.read())
        if fmt != _COPY_FORMAT or copied != digest or type(body) is not bytes or zlib.crc32(body) != crc:
            return None
        platform, stored, deps, groups, outputs, env, sandboxed = marshal.loads(body)
        if type(deps) is not bytes:
            return None
        tasks = Tasks({}, stored)
        return tasks, platform, Deps(tasks, deps), frozenset(groups), frozenset(outputs), env, sandboxed
    except (OSError, EOFError, ValueError, TypeError):
        return None


def _write_copy(root: str, digest: str, tasks: dict[str, Task], platform: dict[str, str]) -> None:
    """Keep the validated graph for the next load of the same bytes; failing to is no error (only slower).
    Each task is marshalled on its own (bytes: compact, made a Task only when asked for); so is the map of
    every task's deps (read only when walked whole: model.Deps), whose deps are the tasks' own names, which
    marshal then writes once and loads as one object each."""
    names = {name: name for name in tasks}
    _tasks, _platform, deps, groups, outputs, env, sandboxed = _facts(tasks, platform)
    body = marshal.dumps((platform, {name: marshal.dumps(tuple(t))
                                     for name, t in tasks.items()},
                          marshal.dumps({name: tuple(names[dep] for dep in d) for name, d in deps.items()}),
                          tuple(groups), tuple(outputs), env, sandboxed))
    try:
        save_marshalled(copy_path(root), (_COPY_FORMAT, digest, zlib.crc32(body), body))
    except OSError:
        pass


def _validate(data: bytes, shown: str) -> tuple[dict[str, Task], dict[str, str]]:
    """Parse and check every field of a graph file's bytes: its tasks (in file order) and platform."""
    doc = _parse_json(data, shown)
    if type(doc) is not dict:
        raise UserError(f"{shown}: must be a JSON object (task name -> task, or {{\"tasks\": ...}}), got {_kind(doc)}")

    structured = "tasks" in doc
    try:
        if structured:
            raw_tasks, graph_env, graph_pass, graph_tools, platform = _settings(doc)
        else:
            raw_tasks, graph_env, graph_pass, graph_tools, platform = dict(doc), (), (), (), {}
            if type(raw_tasks.get("$schema")) is str:  # editors' convention; harmless in the bare form too
                del raw_tasks["$schema"]
    except _Bad as e:
        raise UserError(f"{shown}: {e}") from None

    tasks: dict[str, Task] = {}
    for name, raw in raw_tasks.items():
        try:
            tasks[name] = _task(name, raw, graph_env, graph_pass, graph_tools, raw_tasks)
        except _Bad as e:
            hint = ""
            if not structured and name in TOP_FIELDS:
                hint = f" ({name!r} is a top-level setting only beside a \"tasks\" object)"
            raise UserError(f"{shown}: task {name!r}: {e}{hint}") from None

    owner = _check_outputs(tasks, shown)
    topological_order({name: t.deps for name, t in tasks.items()}, tasks, shown)  # raises on a cycle
    if owner:
        _check_inputs_against_outputs(tasks, owner, shown)
    return tasks, platform


def _with_graph_level(value: Any, parse: Callable[[Any], tuple[str, ...]], graph_level: tuple[str, ...]
                      ) -> tuple[str, ...]:
    """A task's list field (`env`, `tools`) parsed, plus the graph's top-level list of the same field."""
    if value is None:
        return graph_level
    names = parse(value)
    return tuple(sorted(set(names).union(graph_level))) if graph_level else names


def _parse_json(data: bytes, shown: str) -> Any:
    import json  # the graph file itself is parsed only when its validated copy is missing or stale

    try:
        doc = json.loads(data)
        if _SURROGATE_ESCAPE.search(data):  # rare: only then look for a lone one, which is no character at all
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        return doc
    except UnicodeEncodeError:
        message = "a \\u escape names half of a surrogate pair, not a character"
        raise UserError(f"{shown}: not valid JSON: {message}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{shown}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)  # in bytes
        raise UserError(f"{shown}:{line}:{column}: not valid JSON: not UTF-8 text") from None
    except RecursionError:
        raise UserError(f"{shown}: not valid JSON: nested too deeply") from None


def _settings(
    doc: dict[str, Any],
) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...], tuple[str, ...], dict[str, str]]:
    """The structured form's top-level settings: (raw tasks, graph-level env names, graph-level pass-through
    names, graph-level tools, platform)."""
    for key in doc:
        if key not in TOP_FIELDS:
            raise _Bad(f"unknown top-level field {key!r}{did_you_mean(key, TOP_FIELDS)}")
    raw_tasks = doc["tasks"]
    if type(raw_tasks) is not dict:
        raise _Bad(f"field 'tasks' must be an object (task name -> task), got {_kind(raw_tasks)}")
    version = doc.get("version", FORMAT_VERSION)
    if type(version) is not int:
        raise _Bad(f"field 'version' must be an integer, got {_kind(version)}")
    if version != FORMAT_VERSION:
        raise _Bad(f"unsupported version {version} (this gaffer reads version {FORMAT_VERSION})")
    if "$schema" in doc and type(doc["$schema"]) is not str:
        raise _Bad(f"field '$schema' must be a string, got {_kind(doc['$schema'])}")
    graph_env = _env_names(doc.get("env"))
    graph_pass = _env_names(doc.get("pass_env"), "pass_env")
    graph_tools = _tools(doc.get("tools"))
    platform = doc.get("platform")
    if platform is None:
        platform = {}
    elif type(platform) is not dict:
        raise _Bad(f"field 'platform' must be an object of strings, got {_kind(platform)}")
    for key, value in platform.items():
        if not key:
            raise _Bad("field 'platform' has an empty property name")
        if type(value) is not str:
            raise _Bad(f"field 'platform': property {key!r} must be a string, got {_kind(value)}")
        if key in _HOST_PROPERTIES:
            raise _Bad(f"field 'platform': property {key!r} is always the machine that runs the task, which gaffer"
                       " adds itself; remove it")
    return raw_tasks, graph_env, graph_pass, graph_tools, dict(sorted(platform.items()))


def _task(name: str, raw: Any, graph_env: tuple[str, ...], graph_pass: tuple[str, ...], graph_tools: tuple[str, ...],
          known: dict[str, Any]) -> Task:
    if not name or not name.isprintable():
        raise _Bad("a task name must be non-empty and printable")
    if type(raw) is not dict:
        raise _Bad(f"must be an object, got {_kind(raw)}")
    if not _TASK_FIELD_SET.issuperset(raw):
        key = next(k for k in raw if k not in _TASK_FIELD_SET)
        raise _Bad(f"unknown field {key!r}{did_you_mean(key, TASK_FIELDS)}")
    get = raw.get

    # The fields' common shapes are accepted inline or by a quick loop (this runs 10,000 times on every build,
    # a no-op one included); anything else goes to a helper that normalizes it or says what is wrong.
    deps = get("deps")
    if deps is None:
        deps = ()
    else:
        for dep in _strings(deps, "deps"):
            if dep not in known:
                raise _Bad(f"unknown dependency {dep!r}{did_you_mean(dep, known)}")
        deps = tuple(dict.fromkeys(deps)) if len(deps) > 1 else tuple(deps)

    env = _with_graph_level(get("env"), _env_names, graph_env)

    pass_env = get("pass_env")
    if pass_env is None and not graph_pass:
        pass_env = tuple(n for n in DEFAULT_PASS_ENV if n not in env)
    else:
        explicit = set(_env_names(pass_env, "pass_env")).union(graph_pass)
        both = explicit.intersection(env)
        if both:
            raise _Bad(f"variable {min(both)!r} is in both 'env' (keyed) and 'pass_env' (not keyed); keep it in one")
        pass_env = tuple(sorted(explicit.union(n for n in DEFAULT_PASS_ENV if n not in env)))

    tools = _with_graph_level(get("tools"), _tools, graph_tools)

    cache, sandbox = _flag(get("cache"), "cache", True), _flag(get("sandbox"), "sandbox", False)
    remote = _flag(get("remote"), "remote", True)
    description = get("description")
    if description is None:
        description = ""
    elif type(description) is not str:
        raise _Bad(f"field 'description' must be a string, got {_kind(description)}")

    command = get("command")
    if type(command) is str and command and not command.isspace() and "\0" not in command:
        commands: tuple[tuple[str, ...], ...] = (("sh", "-c", command),)
    else:
        commands = _commands(command)
    timeout = get("timeout")
    if timeout is not None:
        timeout = _timeout(timeout)

    inputs, outputs = _inputs(get("inputs")), _outputs(get("outputs"))
    # Positional: measurably cheaper than keywords at 10,000 tasks. The order is Task's field order.
    return Task(name, commands, deps, inputs, outputs, env, timeout, cache, description, tools, pass_env, sandbox,
                remote)


def _flag(value: object, field: str, default: bool) -> bool:
    """A boolean field: true, false, or null/absent for its default."""
    if value is None:
        return default
    if type(value) is not bool:
        raise _Bad(f"field '{field}' must be true or false, got {_kind(value)}")
    return value


def _strings(value: Any, field: str) -> list[str]:
    """A list of strings (null = absent = empty)."""
    if type(value) is list:
        for item in value:
            if type(item) is not str:
                break
        else:
            return value
    if value is None:
        return []
    if type(value) is not list:
        raise _Bad(f"field {field!r} must be a list of strings, got {_kind(value)}")
    i, item = next((i, item) for i, item in enumerate(value) if type(item) is not str)
    raise _Bad(f"field {field!r} must be a list of strings, but item {i} is {_kind(item)}")


def _env_names(value: Any, field: str = "env") -> tuple[str, ...]:
    names = _strings(value, field)
    for n in names:
        if not _ENV_NAME.fullmatch(n):
            raise _Bad(f"{field} name {n!r} is not a variable name (letters, digits and _, not starting with a digit)")
    return tuple(sorted(set(names)))


def _tools(value: Any) -> tuple[str, ...]:
    """Tool names (looked up on PATH) or paths, normalized: a relative path keeps a leading "./" so that it
    stays a path ("./gen" is the workspace's gen, "gen" a program on PATH)."""
    tools = set()
    for tool in _strings(value, "tools"):
        if not tool or "\0" in tool:
            raise _Bad(f"tool {tool!r} must be a non-empty name or path without NUL characters")
        if "/" not in tool:
            if _SPACE.search(tool):
                raise _Bad(f"tool {tool!r} contains whitespace (a tool is a program name or a path, not a command)")
            tools.add(tool)
        else:
            tools.add(tool_path(tool))
    return tuple(sorted(tools))


def tool_path(path: str) -> str:
    """A tool given by path, normalized: absolute as is, relative (to the workspace) with a leading "./"."""
    norm = posixpath.normpath(path)
    return norm if norm.startswith(("/", "../")) else f"./{norm}"


def _commands(value: Any) -> tuple[tuple[str, ...], ...]:
    """A string, an argv list, or a list of those; a list is a list of commands only if it holds a list."""
    if value is None:
        return ()
    if type(value) is str:
        return (_shell(value, ""),)
    if type(value) is not list:
        raise _Bad(f"field 'command' must be a string, an argv list or a list of commands, got {_kind(value)}")
    if not any(type(item) is list for item in value):
        return (_argv(value, ""),) if value else ()
    commands = []
    for i, item in enumerate(value):
        where = f": command {i}"
        if type(item) is str:
            commands.append(_shell(item, where))
        elif type(item) is list:
            commands.append(_argv(item, where))
        else:
            raise _Bad(f"field 'command'{where} must be a string or an argv list, got {_kind(item)}")
    return tuple(commands)


def _shell(text: str, where: str) -> tuple[str, ...]:
    if not text.strip():
        raise _Bad(f"field 'command'{where} is an empty string (leave 'command' out for a group task)")
    if "\0" in text:
        raise _Bad(f"field 'command'{where} contains a NUL character")
    return ("sh", "-c", text)


def _argv(items: list[Any], where: str) -> tuple[str, ...]:
    if not items:
        raise _Bad(f"field 'command'{where} is an empty argv list")
    for i, arg in enumerate(items):
        if type(arg) is not str:
            raise _Bad(f"field 'command'{where}: argument {i} must be a string, got {_kind(arg)}")
        if "\0" in arg:
            raise _Bad(f"field 'command'{where}: argument {i} contains a NUL character")
    if not items[0]:
        raise _Bad(f"field 'command'{where}: the program name (argument 0) is empty")
    if _SPACE.search(items[0]):  # ["mkdir -p out", "make"] reads like two shell commands but is one argv
        raise _Bad(
            f"field 'command'{where}: program name {items[0]!r} contains whitespace; a list of strings is one"
            " argv (for several shell commands write one string with &&, or make one of them an argv list)"
        )
    return tuple(items)


def _inputs(value: Any) -> tuple[str, ...]:
    if type(value) is list:
        for p in value:  # already normal: no rewriting needed (the common case)
            if type(p) is not str or not p or p[0] in "/." or p[-1] == "/" or "//" in p or "/." in p or "\0" in p:
                break
        else:
            return tuple(dict.fromkeys(value)) if len(value) > 1 else tuple(value)
    paths = [_path(p, "input") for p in _strings(value, "inputs")]
    return tuple(dict.fromkeys(paths))


def _outputs(value: Any) -> tuple[str, ...]:
    if type(value) is list:
        for p in value:  # already normal and plainly literal (the common case)
            if (
                type(p) is not str or not p or p[0] in "/." or p[-1] == "/" or "//" in p or "/." in p or "\0" in p
                or "*" in p or "?" in p or "[" in p
            ):
                break
        else:
            return tuple(dict.fromkeys(value)) if len(value) > 1 else tuple(value)
    normal = []
    for path in _strings(value, "outputs"):
        norm = _path(path, "output")
        if "*" in norm or "?" in norm or "[" in norm:
            raise _Bad(f"output {path!r} is a pattern; outputs are literal paths")
        top = norm.split("/", 1)[0]
        if top == ".":
            raise _Bad(f"output {path!r} is the whole workspace")
        if top in _RESERVED_DIRS:
            raise _Bad(f"output {path!r} is inside {top!r}, which a task must not write to")
        normal.append(norm)
    return tuple(dict.fromkeys(normal))


def _path(path: str, what: str) -> str:
    """A workspace path as a normalized posix relative path ("." for the root); `..` may not leave the root."""
    if not path:
        raise _Bad(f"{what} '' is empty")
    if path[0] == "/":
        raise _Bad(f"{what} {path!r} is outside the workspace (an absolute path)")
    if "\0" in path:
        raise _Bad(f"{what} {path!r} contains a NUL character")
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                raise _Bad(f"{what} {path!r} is outside the workspace")
            parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/".join(parts) or "."


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) is str:
        try:
            seconds = parse_duration(value, "field 'timeout'")
        except UserError as e:
            raise _Bad(str(e)) from None
    elif type(value) is int or type(value) is float:
        seconds = float(value)
    else:
        raise _Bad(f"field 'timeout' must be a number of seconds or a duration like \"90s\", got {_kind(value)}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise _Bad(f"field 'timeout' must be a positive duration, got {value!r}")
    if seconds > MAX_TIMEOUT_S:
        raise _Bad(f"field 'timeout' must be at most a year ({MAX_TIMEOUT_S}s, or leave it out), got {value!r}")
    return seconds


def _check_outputs(tasks: dict[str, Task], shown: str) -> dict[str, str]:
    """No path is written by two tasks: no shared output, and no output inside another output directory.
    Returns each output's task."""
    owner: dict[str, str] = {}
    for name, task in tasks.items():
        for out in task.outputs:
            other = owner.setdefault(out, name)
            if other != name:
                raise UserError(f"{shown}: output {out!r} is declared by both {other!r} and {name!r}")
    for out, name in owner.items():
        cut = out.rfind("/")
        while cut > 0:
            parent = out[:cut]
            holder = owner.get(parent)
            if holder == name:
                raise UserError(f"{shown}: task {name!r}: output {out!r} is inside its other output {parent!r}")
            if holder is not None:
                raise UserError(f"{shown}: output {out!r} of {name!r} is inside output {parent!r} of {holder!r}")
            cut = out.rfind("/", 0, cut)
    return owner


def _check_inputs_against_outputs(tasks: dict[str, Task], owner: dict[str, str], shown: str) -> None:
    """A literal input at or under a declared output is one of two mistakes, both refused: the task's own output
    (gaffer removes outputs before a task runs, so the input would be deleted), or another task's output read
    without depending on that task (the file is not there yet, or is stale, when this task runs). Globs are not
    checked: they skip every declared output, as documented."""
    tops = {out.partition("/")[0] for out in owner}  # one set lookup clears most inputs (10,000s of them)
    for name, task in tasks.items():
        for path in task.inputs:
            if path.partition("/")[0] not in tops or "*" in path or "?" in path or "[" in path:
                continue
            out, cut = path, len(path)
            while cut > 0:
                out = path[:cut]
                holder = owner.get(out)
                if holder is not None:
                    break
                cut = path.rfind("/", 0, cut)
            else:
                continue
            where = f"input {path!r} is output {out!r}" if out == path else f"input {path!r} is inside output {out!r}"
            if holder == name:
                raise UserError(f"{shown}: task {name!r}: {where} of the same task, which gaffer removes before the "
                                "task runs (a task must not write over its own inputs)")
            if not _depends_on(name, holder, tasks):
                raise UserError(f"{shown}: task {name!r}: {where} of task {holder!r}, but {name!r} does not depend "
                                f"on {holder!r} (add it to 'deps')")


def _depends_on(name: str, target: str, tasks: dict[str, Task]) -> bool:
    """Does `name` depend on `target`, directly or not? (Iterative: a chain may be 10,000 tasks long.)"""
    seen: set[str] = set()
    stack = [name]
    while stack:
        for dep in tasks[stack.pop()].deps:
            if dep == target:
                return True
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return False


def _kind(value: Any) -> str:
    """How JSON calls a value's type, for messages ("got a number")."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) is int or type(value) is float:
        return "a number"
    if type(value) is str:
        return "a string"
    if type(value) is list:
        return "a list"
    return "an object"
