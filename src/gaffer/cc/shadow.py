"""Headers that are not there yet: where a file a compile read could have been found earlier.

A manifest entry lists the files a compile read; a header created later in a directory searched before the one
the file was found in would be read instead, with every listed file unchanged (ccache's direct mode misses this
case). So an entry also lists, for each file read, the same name in every project directory of the search -
the directories of the files read (quoted includes look beside the includer first), -iquote, -I, -isystem,
-idirafter and the CPATH family - wherever no file exists: one appearing there is a miss. A file created among
the compiler's own system directories shadowing another system header is not tracked, nor a name that existed
nowhere (`__has_include`).

Precompiled headers: gcc reads `foo.h.gch` instead of `foo.h` when it finds one, and its dependency file then
names neither. So a compile is not stored while a `.gch` is in a project directory, and a `.gch` appearing
beside any name read is a miss.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from gaffer.cc.args import Compile

SEARCH_OPTIONS = ("-iquote", "-I", "-isystem", "-idirafter")
SEARCH_ENV = ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "OBJCPLUS_INCLUDE_PATH")


def explicit_dirs(c: Compile, env: Mapping[str, str]) -> list[str]:
    """The include directories the command line and the environment add, as written; the working directory
    first when -include or -imacros name a file by a relative path (gcc looks for it there first)."""
    dirs = [path for prefix, path, _ in c.key_args if prefix in SEARCH_OPTIONS and path]
    if any(prefix in ("-include", "-imacros") and path and not path.startswith("/") for prefix, path, _ in c.key_args):
        dirs.insert(0, ".")
    for name in SEARCH_ENV:
        value = env.get(name)
        if value:
            dirs.extend(d or "." for d in value.split(":"))
    return dirs


def absent_candidates(read: Sequence[str], explicit: Iterable[str], system: Sequence[str],
                      cwd: str) -> list[str] | str:
    """Paths (written relative to the working directory when their directory was) where a file named like one
    that was read (or its precompiled `.gch`), in a project directory, does not exist; or why the compile must
    not be stored."""
    def full(p: str) -> str:
        return os.path.normpath(os.path.join(cwd, p))

    system_full = [os.path.normpath(d) for d in system]

    def is_system(path: str) -> bool:
        return any(path.startswith(d.rstrip("/") + "/") for d in system_full)

    project = list(dict.fromkeys([*explicit, *(os.path.dirname(p) or "." for p in read if not is_system(full(p)))]))
    project_full = [(d, full(d)) for d in project]
    for written, df in project_full:
        pch = _precompiled(df)
        if pch:
            return f"a precompiled header is in the search path ({os.path.join(written, pch)})"
    search_full = [df for _, df in project_full] + system_full
    found = {full(p) for p in read}
    absent: dict[str, None] = {}
    checked: set[str] = set()
    for p in read:
        path = full(p)
        names = {path[len(d.rstrip("/")) + 1:] for d in search_full if path.startswith(d.rstrip("/") + "/")}
        for name in names:
            for written, df in project_full:
                for suffix in ("", ".gch"):
                    candidate = f"{df.rstrip('/')}/{name}{suffix}"
                    if candidate in found or candidate in checked:
                        continue
                    checked.add(candidate)
                    if not os.path.lexists(candidate):
                        absent[os.path.join(written, name + suffix)] = None
    return list(absent)


def _precompiled(directory: str) -> str | None:
    """The name of a precompiled header (file or directory) in `directory`, if any."""
    try:
        with os.scandir(directory) as entries:
            return next((e.name for e in entries if e.name.endswith(".gch")), None)
    except OSError:
        return None


def system_dirs(output: str) -> list[str]:
    """The `#include <...>` directories in the output of `cc -E -v` (those of the compiler itself)."""
    dirs: list[str] = []
    inside = False
    for line in output.splitlines():
        if line.startswith("#include <...> search starts here"):
            inside = True
        elif line.startswith("End of search list"):
            break
        elif inside and line.startswith(" "):
            dirs.append(line.strip().removesuffix(" (framework directory)"))
    return dirs
