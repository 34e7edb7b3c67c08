"""The keys of a compile, and the manifest that turns a direct key into a result key.

Direct mode (as ccache's): the direct key is what is known before compiling - the compiler's identity, the
arguments (paths under the base directory made relative), the environment the compiler reads, the source's
content and any other named input. It does not know the headers, so it names a *manifest*: the header sets
seen by earlier compiles with that key, each with every file's digest and the key of the result they gave. A
compile is a hit when one entry's files all still have those digests; the result key is then that entry's.

Preprocessor mode: the key of the preprocessed text (`-E`) instead of the headers; used when direct mode cannot
decide (no manifest entry matches, or a file uses __DATE__/__TIME__).

The working directory is in the key when the object records it (debug info, coverage) or records an absolute
path under the base directory, unless a -ffile-prefix-map (-fdebug-prefix-map, -fmacro-prefix-map) maps it away:
two checkouts then share entries only when their objects are byte-identical.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from gaffer.cc.args import Compile
from gaffer.cc.basedir import localise, normalise
from gaffer.digest import Digest, digest_bytes

KEY_FORMAT = "gaffer-cc-v2"
# what gcc and clang read from the environment that can change an object or a diagnostic
ENV_READ = ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "OBJCPLUS_INCLUDE_PATH",
            "SOURCE_DATE_EPOCH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "GCC_COLORS", "GCC_URLS",
            "TERM_URLS", "COMPILER_PATH", "GCC_EXEC_PREFIX", "LIBRARY_PATH", "CCC_OVERRIDE_OPTIONS",
            "GCC_EXTRA_DIAGNOSTIC_OUTPUT")
MAX_ENTRIES = 16  # header sets kept per manifest, newest first
_TIME_MACROS = re.compile(rb"__(?:DATE|TIME|TIMESTAMP)__")
_ASSEMBLER_READS = re.compile(rb'\.incbin\b|\.include\s+\\?"')
_DEBUG_MAPS = ("-ffile-prefix-map", "-fdebug-prefix-map")
_MACRO_MAPS = ("-ffile-prefix-map", "-fmacro-prefix-map")

DepList = list[tuple[str, str, int]]  # (key-form path, sha256, size)


def key_digest(parts: Iterable[str]) -> Digest:
    return digest_bytes("\n".join((KEY_FORMAT, *parts)).encode("utf-8", "surrogateescape"))


def mapped(c: Compile, path: str, kinds: Sequence[str]) -> str | None:
    """`path` as the object records it through the prefix maps of `kinds`: the last one given whose OLD begins
    it (a plain prefix, as gcc compares them) replaced by its NEW; None if none applies."""
    for opt, old, new in reversed(c.prefix_maps):
        if opt in kinds and old and path.startswith(old):
            return new + path[len(old):]
    return None


def recorded_directory(cwd: str, env: Mapping[str, str]) -> str:
    """The working directory as gcc (and clang) writes it into debug info: $PWD when it names this directory
    (the shell keeps a path through a symlink there), else the physical one."""
    pwd = env.get("PWD", "")
    if pwd.startswith("/") and pwd != cwd:
        try:
            here, there = os.stat(cwd), os.stat(pwd)
        except OSError:
            return cwd
        if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
            return pwd
    return cwd


def recorded_paths(c: Compile, cwd: str, base_dir: str | None,
                   pwd: str | None = None) -> Iterator[tuple[str, str, Sequence[str]]]:
    """The paths the object may record that the key's text does not hold as they are: the working directory
    (debug info: `pwd`, as `recorded_directory` gives it), absolute paths under the base directory (__FILE__,
    debug info); as (what, path, map kinds)."""
    if c.debug:
        yield "the working directory", pwd or cwd, _DEBUG_MAPS
    if base_dir:
        for prefix, path, _ in c.key_args:
            if path.startswith("/") and normalise(path, cwd, base_dir) != path and prefix not in ("-MF", "-o"):
                yield path, path, _MACRO_MAPS
                if c.debug:
                    yield path, path, _DEBUG_MAPS


def mapped_parts(c: Compile, cwd: str, base_dir: str | None, pwd: str | None = None) -> list[str]:
    """What the prefix maps leave of the recorded paths (`cwd_reason` found a map for each): the rest of a path
    below a map's OLD is in the object, so it is in the key."""
    return [f"mapped {mapped(c, path, kinds)}" for _, path, kinds in recorded_paths(c, cwd, base_dir, pwd)]


def cwd_reason(c: Compile, cwd: str, base_dir: str | None, pwd: str | None = None) -> str | None:
    """Why the working directory must be in the key (None: it need not be; `mapped_parts` then keys what the
    prefix maps leave of the paths the object records)."""
    def covered(path: str, kinds: Sequence[str]) -> bool:
        return mapped(c, path, kinds) is not None

    if c.coverage:
        return "coverage data records the working directory"
    if c.debug and not covered(pwd or cwd, _DEBUG_MAPS):
        return "debug info records the working directory (no -ffile-prefix-map for it)"
    if base_dir:
        for prefix, path, _ in c.key_args:
            if not path.startswith("/") or normalise(path, cwd, base_dir) == path or prefix == "-MF":
                continue
            if prefix == "-o":
                if c.debug and "dwo" in c.extra_outputs:
                    return "the object records the absolute path of its .dwo (no prefix map changes it)"
                continue
            if c.records_switches:
                return "-frecord-gcc-switches records the absolute paths"
            if not covered(path, _MACRO_MAPS) or (c.debug and not covered(path, _DEBUG_MAPS)):
                return f"the object may record the absolute path {path} (no -ffile-prefix-map for it)"
    return None


def args_text(c: Compile, cwd: str, base_dir: str | None) -> list[str]:
    return ["arg " + prefix + normalise(path, cwd, base_dir) + suffix for prefix, path, suffix in c.key_args]


def common_parts(c: Compile, identity: str, env: Mapping[str, str], cwd: str, base_dir: str | None,
                 platform: Mapping[str, str], cpu: Callable[[], str]) -> list[str]:
    """What every key of this compile holds: compiler, platform, arguments, environment, maybe the directory."""
    parts = [f"compiler {identity}", *(f"platform {k}={v}" for k, v in sorted(platform.items())),
             f"language {c.language}", *args_text(c, cwd, base_dir)]
    if c.native:
        parts.append(f"cpu {cpu()}")
    parts.extend(f"env {name}={env[name]}" for name in ENV_READ if name in env)
    pwd = recorded_directory(cwd, env) if c.debug or c.coverage else cwd  # what they record
    if cwd_reason(c, cwd, base_dir, pwd) is not None:
        parts.append(f"cwd {cwd}" if pwd == cwd else f"cwd {cwd} as {pwd}")
    else:
        parts.extend(mapped_parts(c, cwd, base_dir, pwd))
    return parts


def has_time_macros(data: bytes) -> bool:
    """ccache's rule: a file using __DATE__, __TIME__ or __TIMESTAMP__ is not cached in direct mode (its result
    depends on when it is compiled)."""
    return _TIME_MACROS.search(data) is not None


def has_assembler_reads(data: bytes) -> bool:
    """ccache's rule, widened: the assembler reads the file an `.incbin` (or `.include`) names, and gcc's
    dependency file does not name it, so a compile whose source or header has one cannot be keyed."""
    return _ASSEMBLER_READS.search(data) is not None


@dataclass
class Entry:
    deps: DepList
    result: Digest
    absent: list[str]  # key-form paths that must still not exist (shadow.py)
    cwd: str | None = None  # the one working directory it holds in: its diagnostics name that checkout's paths


def result_key(direct: Digest, deps: DepList, cwd: str | None = None) -> Digest:
    return key_digest(["direct-result", str(direct), *(f"dep {p} {h} {n}" for p, h, n in deps),
                       *([f"cwd {cwd}"] if cwd is not None else [])])


@dataclass
class Manifest:
    entries: list[Entry]
    preprocess: bool = False  # a compile with this key used __DATE__/__TIME__: preprocessor mode decides


def encode_manifest(m: Manifest) -> bytes:
    return json.dumps({"format": 1, "preprocess": m.preprocess, "entries": [
        {"deps": e.deps, "result": [e.result.hash, e.result.size_bytes], "absent": e.absent,
         **({"cwd": e.cwd} if e.cwd is not None else {})}
        for e in m.entries[:MAX_ENTRIES]]},
        separators=(",", ":")).encode()


def decode_manifest(data: bytes) -> Manifest:
    """A manifest from any tier; a damaged one is empty (a miss, never an error)."""
    try:
        doc = json.loads(data)
        return Manifest([Entry([(str(p), str(h), int(n)) for p, h, n in e["deps"]],
                               Digest(str(e["result"][0]), int(e["result"][1])), [str(p) for p in e["absent"]],
                               str(e["cwd"]) if e.get("cwd") is not None else None)
                         for e in doc["entries"]], doc.get("preprocess") is True)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Manifest([])


def first_mismatch(entry: Entry, cwd: str, digest: Callable[[str], Digest | None]) -> str | None:
    """None if every file of `entry` still has its digest here and none of its absent paths exists, else what
    differs ("header foo.h changed"). On every hit: kept to plain string work."""
    if entry.cwd is not None and entry.cwd != cwd:
        return "its diagnostics name the paths of another working directory"
    here = cwd.rstrip("/") + "/"
    for path, h, size in entry.deps:
        local = localise(path, cwd)
        found = None if local is None else digest(local if local.startswith("/") else here + local)
        if found is None:
            return f"{local or path} is gone"
        if found.hash != h or found.size_bytes != size:
            return f"{local} changed"
    for path in entry.absent:
        local = localise(path, cwd)
        if local is None or os.path.lexists(local if local.startswith("/") else here + local):
            return f"{local or path} appeared"
    return None
