"""Paths under the base directory, made relative to the working directory so two checkouts share cache entries.

An absolute path under the base directory (`GAFFER_CC_BASEDIR`) is keyed as MARK + its path relative to the
working directory, computed on the text (`/b/x/src/../inc` from `/b/x/build` is `../src/../inc`), and turned
back into an absolute path in the other checkout the same way: a restored dependency file names the local
checkout's files, byte for byte as the compiler there would have written them. The MARK keeps a path given
absolute apart from the same path given relative: the compiler sees different text (`__FILE__`, the dependency
file), so they are different compiles.

The working directory must be the physical one (getcwd), so `..` from it means what the kernel makes of it.
"""

from __future__ import annotations

MARK = "\0"  # no path contains it
_ESCAPED = frozenset(" \t#$\\:%*?[]\n")  # characters a make dependency file escapes or cannot hold


def usable(base_dir: str | None, cwd: str) -> bool:
    """Rewriting is used only with a base directory set, and a working directory and base directory whose text
    a dependency file holds as is (else the rewriting of escaped text would not be exact: gaffer keys the full paths instead)."""
    return (bool(base_dir) and cwd.startswith("/") and not _ESCAPED.intersection(cwd)
            and not _ESCAPED.intersection(base_dir or ""))


def under(path: str, base_dir: str) -> bool:
    return path == base_dir or path.startswith(base_dir.rstrip("/") + "/")


def relative(path: str, cwd: str) -> str:
    """`path` (absolute) relative to `cwd` on the text: up to the last common component, then down."""
    parts = path.split("/")
    here = _components(cwd)
    common = 0
    while common < min(len(parts), len(here)) and parts[common] == here[common]:
        common += 1
    return "/".join([".."] * (len(here) - common) + parts[common:]) or "."


def absolute(rel: str, cwd: str) -> str | None:
    """The inverse of `relative` in the working directory `cwd`; None if it climbs above the root."""
    if rel == ".":
        return cwd
    here = _components(cwd)
    segments = rel.split("/")
    ups = 0
    while ups < len(segments) and segments[ups] == "..":
        ups += 1
    if ups >= len(here):
        return None
    base = "/".join(here[: len(here) - ups]) or "/"
    rest = segments[ups:]
    return f"{base.rstrip('/')}/{'/'.join(rest)}" if rest else base


def _components(cwd: str) -> list[str]:
    return cwd.rstrip("/").split("/") if cwd != "/" else [""]


def normalise(path: str, cwd: str, base_dir: str | None) -> str:
    """The key's form of a path: MARK + relative if it is absolute under the base directory, else as given."""
    if base_dir and path.startswith("/") and under(path, base_dir):
        return MARK + relative(path, cwd)
    return path


def localise(path: str, cwd: str) -> str | None:
    """A key-form path as a path in this working directory (None if it cannot be one here)."""
    if path.startswith(MARK):
        return absolute(path[1:], cwd)
    return path
