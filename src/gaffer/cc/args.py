"""The gcc/clang command-line classifier: is this one cacheable compile, and of what?

A command is cacheable only if gaffer knows every option in it and what each does to the outputs: one source,
`-c`, one object out (plus the dependency file, `.dwo` or `.gcno` it asked for), nothing read but the source,
the headers and the files named here (a `.gcda` for `-fprofile-use`). Anything else - several sources, `-E`,
`-M`, stdin, `-save-temps`, `-fprofile-generate`, an option gaffer does not know - is `Uncacheable`: the real
compiler runs it unchanged. `@file` response files are expanded first, with gcc's quoting rules.

Each argument of a cacheable compile is also kept as (prefix, path, suffix) pieces, so the key can rewrite the
path part under a base directory (basedir.py) without knowing the option again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

KeyArg = tuple[str, str, str]  # (text before the path, the path or "", text after it)

SOURCE_LANGUAGES = {
    ".c": "c", ".i": "cpp-output", ".ii": "c++-cpp-output", ".cc": "c++", ".cp": "c++", ".cxx": "c++",
    ".cpp": "c++", ".CPP": "c++", ".c++": "c++", ".C": "c++", ".m": "objective-c", ".mi": "objective-c",
    ".mm": "objective-c++", ".M": "objective-c++", ".s": "assembler", ".S": "assembler-with-cpp",
    ".sx": "assembler-with-cpp",
}
LANGUAGES = frozenset(SOURCE_LANGUAGES.values())

# options followed by a path, in both forms (`-I dir`, `-Idir`): their path is rewritten under the base dir
_PATH_OPTIONS = ("-isystem", "-isysroot", "-iquote", "-idirafter", "-include", "-imacros", "-iprefix",
                 "-iwithprefixbefore", "-iwithprefix", "--sysroot", "-I", "-L")
# options followed by a value that is not a path
_VALUE_OPTIONS = ("-D", "-U", "-Xlinker", "-u", "-z", "-target", "-arch", "--param", "-A", "-l")
# single-token options that change the output only through their text (which is in the key)
_FLAG_PREFIXES = ("-f", "-m", "-W", "-O", "-g", "-std=", "--std=", "-pedantic", "-stdlib=", "--target=", "--param=",
                  "-D", "-U", "-l", "-L")
_FLAGS = frozenset({"-ansi", "-w", "-pipe", "-pthread", "-P", "-C", "-CC", "-nostdinc", "-nostdinc++", "-nostdlib",
                    "-nodefaultlibs", "-nostartfiles", "-static", "-shared", "-rdynamic", "-trigraphs", "-undef",
                    "-traditional", "-traditional-cpp", "-pie", "-no-pie", "--coverage"})
# prefixes of options that make the compiler do something other than one object from one source, or read or
# write files gaffer does not account for: their reason, shown by `--show-stats`
_UNCACHEABLE = (
    ("-E", "preprocessing only (-E)"), ("-S", "assembly output (-S)"), ("-save-temps", "-save-temps"),
    ("-fprofile-generate", "-fprofile-generate"), ("-fprofile-dir", "-fprofile-dir"),
    ("-fprofile-use=", "-fprofile-use=PATH"), ("-fauto-profile", "-fauto-profile"),
    ("-fprofile-sample-use", "profile input"), ("-fprofile-instr", "profile input"), ("-fdump-", "dump files"),
    ("-fstack-usage", "-fstack-usage"), ("-fcallgraph-info", "-fcallgraph-info"), ("-fplugin", "compiler plugin"),
    ("-fsyntax-only", "-fsyntax-only"), ("-fcompare-debug", "-fcompare-debug"),
    ("-fsave-optimization-record", "optimization record"), ("-fmodule", "modules"), ("-fdeps-", "modules"),
    ("-fsanitize-blacklist", "sanitizer list input"), ("-fsanitize-ignorelist", "sanitizer list input"),
    ("-fcrash-diagnostics", "crash diagnostics"), ("-fdiagnostics-format=sarif-file", "diagnostics to a file"),
    ("-fdiagnostics-format=json-file", "diagnostics to a file"), ("-fdiagnostics-add-output", "diagnostics to a file"),
    ("-fdiagnostics-set-output", "diagnostics to a file"), ("-ftime-trace", "-ftime-trace"), ("-B", "-B (tool prefix)"),
    ("-fproc-stat-report", "-fproc-stat-report"),
    *((o, "an input file no dependency file names") for o in (  # clang's: an edit of the file would be a stale hit
        "-fprofile-list=", "-fprofile-remapping-file", "-fsanitize-coverage-allowlist",
        "-fsanitize-coverage-ignorelist", "-fsanitize-coverage-blocklist", "-fsanitize-coverage-whitelist",
        "-fsanitize-coverage-blacklist", "-fxray-attr-list", "-fxray-always-instrument", "-fxray-never-instrument",
        "-fthinlto-index", "-fbasic-block-sections=list", "-fmemory-profile-use", "-fpass-plugin")),
    ("-specs", "-specs"), ("-wrapper", "-wrapper"), ("-dumpbase", "-dumpbase"), ("-dumpdir", "-dumpdir"),
    ("-aux-info", "-aux-info"), ("-###", "-### (dry run)"), ("-Xpreprocessor", "-Xpreprocessor"),
    ("-Xassembler", "-Xassembler"), ("-Xclang", "-Xclang"), ("-mllvm", "-mllvm"), ("-print-", "query"),
    ("-dump", "query"), ("--help", "query"), ("--version", "query"), ("-time", "-time"),
)
_UNCACHEABLE_EXACT = {"-v": "-v (verbose)", "-H": "-H (header list)", "-Q": "-Q", "-M": "-M (dependencies only)",
                      "-MM": "-MM (dependencies only)", "-MG": "-MG", "-dM": "-dM", "-dD": "-dD", "-dN": "-dN",
                      "-dI": "-dI", "-dU": "-dU"}
_NATIVE = ("-march=native", "-mcpu=native", "-mtune=native")
_PREFIX_MAPS = ("-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-prefix-map=")


@dataclass(frozen=True)
class Uncacheable:
    """Run the real compiler unchanged. `reason` groups the stats; `detail` names the argument."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail and self.detail not in self.reason else self.reason


@dataclass
class Compile:
    """One cacheable compile, as the compiler will see it (response files expanded)."""

    args: list[str]  # after argv[0]: what runs
    source: str  # as given (relative to the working directory, or absolute)
    language: str
    output: str  # the object, as given or gcc's default
    key_args: list[KeyArg]  # every argument, its path part apart
    cpp_args: list[str]  # `args` without -c, -o and the dependency options: what a -E or -M pass runs
    dep_file: str | None = None  # the dependency file asked for (-MD/-MMD, -MF, -Wp,-MD,FILE)
    dep_system: bool = True  # False for -MMD: the file leaves system headers out
    extra_outputs: dict[str, str] = field(default_factory=dict)  # "dwo"/"gcno" -> path
    extra_inputs: list[str] = field(default_factory=list)  # a .gcda read by -fprofile-use
    debug: bool = False  # debug info: it records the working directory
    coverage: bool = False  # the object records the absolute .gcda path
    native: bool = False  # -march=native and friends: the host CPU is an input
    prefix_maps: list[tuple[str, str, str]] = field(default_factory=list)  # (option, OLD, NEW): -f*-prefix-map
    records_switches: bool = False  # -frecord-gcc-switches: the object holds the arguments' text

    def stem(self) -> str:
        """The output without its suffix: where gcc puts `.d`, `.dwo`, `.gcno` and looks for `.gcda`."""
        return os.path.splitext(self.output)[0]


class ResponseFileError(Exception):
    pass


def expand_response_files(args: Sequence[str], cwd: str, depth: int = 0) -> list[str]:
    """`@file` arguments replaced by the file's arguments (recursively), as gcc (libiberty) reads them: split on
    whitespace, with '...' and "..." quoting and backslash escapes."""
    out: list[str] = []
    for arg in args:
        if not arg.startswith("@") or len(arg) == 1:
            out.append(arg)
            continue
        if depth > 20:
            raise ResponseFileError(f"{arg}: response files nested too deep")
        try:
            with open(os.path.join(cwd, arg[1:]), encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            raise ResponseFileError(f"{arg}: {e.strerror}") from None
        out.extend(expand_response_files(split_response(text), cwd, depth + 1))
    return out


def split_response(text: str) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    started = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            word.append(text[i + 1])
            started = True
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                word.append(c)
        elif c in "'\"":
            quote = c
            started = True
        elif c.isspace():
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(c)
            started = True
        i += 1
    if started:
        words.append("".join(word))
    return words


def _uncacheable_reason(arg: str) -> str | None:
    exact = _UNCACHEABLE_EXACT.get(arg)
    if exact is not None:
        return exact
    if arg.startswith("-fopt-info") and "=" in arg:  # -fopt-info[-KINDS]=FILE writes FILE; without it, stderr
        return "-fopt-info=FILE"
    return next((reason for prefix, reason in _UNCACHEABLE if arg.startswith(prefix)), None)


def _path_option(arg: str) -> str | None:
    """The path option `arg` starts with (longest first: -isystem before -I)."""
    return next((o for o in _PATH_OPTIONS if arg.startswith(o)), None)


def classify(argv: Sequence[str], cwd: str) -> Compile | Uncacheable:
    """Classify the compiler's arguments (`argv` without the compiler itself)."""
    try:
        args = expand_response_files(argv, cwd)
    except ResponseFileError as e:
        return Uncacheable("unreadable response file", str(e))
    key: list[KeyArg] = []
    cpp: list[str] = []
    sources: list[tuple[str, str]] = []
    language: str | None = None
    compile_only = False
    output: str | None = None
    dep_mode = ""  # "MD" or "MMD"
    dep_file: str | None = None
    c = Compile(args=args, source="", language="", output="", key_args=key, cpp_args=cpp)
    i = 0
    while i < len(args):
        arg = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        i += 1
        if arg == "-c":
            compile_only = True
            key.append((arg, "", ""))
            continue
        if arg == "-" or not arg.startswith("-"):
            if arg == "-":
                return Uncacheable("stdin source")
            lang = language or SOURCE_LANGUAGES.get(os.path.splitext(arg)[1])
            if lang is None:
                return Uncacheable("not a source file", arg)
            if lang not in LANGUAGES:
                return Uncacheable("unsupported language", lang)
            sources.append((arg, lang))
            key.append(("", arg, ""))
            cpp.append(arg)
            continue
        reason = _uncacheable_reason(arg)
        if reason is not None:
            return Uncacheable(reason, arg)
        if arg.startswith("-o"):
            if output is not None:
                return Uncacheable("several -o")
            if arg == "-o":
                if nxt is None:
                    return Uncacheable("missing argument", arg)
                output, i = nxt, i + 1
            else:
                output = arg[2:]
            if output == "-":
                return Uncacheable("output to stdout")
            key.append(("-o", output, ""))
            continue
        if arg in ("-MD", "-MMD"):
            dep_mode = arg[1:]
            key.append((arg, "", ""))
            continue
        if arg.startswith(("-MF", "-MT", "-MQ")):
            value = arg[3:]
            if not value:
                if nxt is None:
                    return Uncacheable("missing argument", arg)
                value, i = nxt, i + 1
            if arg.startswith("-MF"):
                dep_file = value
                key.append(("-MF", value, ""))
            else:
                key.append((arg[:3], "", value))
            continue
        if arg == "-MP":
            key.append((arg, "", ""))
            continue
        if arg.startswith("-Wp,"):
            parts = arg[4:].split(",")
            if parts[0] in ("-MD", "-MMD") and len(parts) == 2:
                dep_mode, dep_file = parts[0][1:], parts[1]
                key.append((f"-Wp,{parts[0]},", parts[1], ""))
                continue
            if any(p.startswith("-M") for p in parts):
                return Uncacheable("dependency option in -Wp", arg)
        if arg.startswith("-Wa,") and any(p.startswith(("-a", "--MD", "-MD")) for p in arg[4:].split(",")):
            return Uncacheable("assembler listing or dependency file", arg)
        if arg.startswith("-x"):
            value = arg[2:]
            if not value:
                if nxt is None:
                    return Uncacheable("missing argument", arg)
                value, i = nxt, i + 1
            language = None if value == "none" else value
            if language is not None and language not in LANGUAGES:
                return Uncacheable("unsupported language", value)
            key.append(("-x", "", value))
            cpp.extend(("-x", value))
            continue
        opt = _path_option(arg)
        if opt is not None:
            value = arg[len(opt):]
            if opt == "--sysroot" and value.startswith("="):
                opt, value = "--sysroot=", value[1:]
            if not value:
                if nxt is None:
                    return Uncacheable("missing argument", arg)
                value, i = nxt, i + 1
                cpp.extend((arg, value))
            else:
                cpp.append(arg)
            key.append((opt, value, ""))
            continue
        if arg in _VALUE_OPTIONS:
            if nxt is None:
                return Uncacheable("missing argument", arg)
            i += 1
            key.append((arg, "", nxt))
            cpp.extend((arg, nxt))
            continue
        if arg.startswith(_PREFIX_MAPS):
            opt, _, rest = arg.partition("=")
            old, sep, new = rest.partition("=")
            if not sep:
                return Uncacheable("malformed option", arg)
            c.prefix_maps.append((opt, old, new))
            key.append((f"{opt}=", old, f"={new}"))
            cpp.append(arg)
            continue
        if arg in _FLAGS or arg.startswith(_FLAG_PREFIXES):
            _note_flag(c, arg)
            key.append((arg, "", ""))
            cpp.append(arg)
            continue
        return Uncacheable("unknown option", arg)
    if not compile_only:
        return Uncacheable("not a compile (-c)")
    if not sources:
        return Uncacheable("no source file")
    if len(sources) > 1:
        return Uncacheable("several sources")
    c.source, c.language = sources[0]
    c.output = output if output is not None else os.path.splitext(os.path.basename(c.source))[0] + ".o"
    if output is None:
        key.append(("-o", c.output, ""))
    if dep_mode:
        c.dep_file = dep_file if dep_file is not None else c.stem() + ".d"
        c.dep_system = dep_mode == "MD"
    if "-gsplit-dwarf" in args:
        c.extra_outputs["dwo"] = c.stem() + ".dwo"
    if "--coverage" in args or "-ftest-coverage" in args:
        c.extra_outputs["gcno"] = c.stem() + ".gcno"
    if "-fprofile-use" in args:
        c.extra_inputs.append(c.stem() + ".gcda")
    return c


def _note_flag(c: Compile, arg: str) -> None:
    """What a single-token option tells the key builder beyond its text."""
    if arg == "-g0":
        c.debug = False
    elif arg.startswith("-g") and not arg.startswith(("-gno-", "-gz", "-gcolumn-info", "-grecord-gcc-switches",
                                                      "-gstrict-dwarf")):
        c.debug = True  # a level, a format, or -gsplit-dwarf: debug info with the working directory in it
    elif arg in ("--coverage", "-fprofile-arcs", "-ftest-coverage"):
        c.coverage = True
    elif arg in _NATIVE:
        c.native = True
    elif arg == "-frecord-gcc-switches":
        c.records_switches = True


@dataclass
class Link:
    """One cacheable link: the driver's arguments (response files expanded), its output and the files it names."""

    args: list[str]
    output: str
    inputs: list[str]  # objects, archives, shared libraries, linker scripts named on the command line


# what makes a command no link, or makes the link write or read what gaffer does not account for
_NOT_LINK = {"-c": "not a link (-c)", "-E": "not a link (-E)", "-S": "not a link (-S)", "-M": "not a link (-M)",
             "-MM": "not a link (-MM)", "-v": "-v (verbose)", "-###": "-### (dry run)"}
_LINKER_WRITES = ("-Map", "--Map", "-M", "--print-map", "--trace", "-t", "--dependency-file", "--verbose",
                  "--stats", "--out-implib", "--print-", "@")
_LINK_VALUE_OPTIONS = frozenset({"-o", "-x", "-Xlinker", "-L", "-T", "-u", "-z", "-e", "-target", "--param",
                                 "-specs", "-B"})


def classify_link(argv: Sequence[str], cwd: str) -> Link | Uncacheable:
    """Classify a linker driver's arguments (`argv` without the driver itself)."""
    try:
        args = expand_response_files(argv, cwd)
    except ResponseFileError as e:
        return Uncacheable("unreadable response file", str(e))
    output = "a.out"
    inputs: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if arg in _LINK_VALUE_OPTIONS and i + 1 < len(args) else None
        i += 2 if value is not None else 1
        linker = [value] if arg == "-Xlinker" and value else arg[4:].split(",") if arg.startswith("-Wl,") else []
        reason = (_NOT_LINK.get(arg) or ("-save-temps" if arg.startswith("-save-temps") else None)
                  or ("query" if arg.startswith(("-print-", "--help", "--version", "-dump")) else None)
                  or next((f"linker option {w}" for w in linker if w.startswith(_LINKER_WRITES)), None)
                  or ("stdin input" if arg == "-" else None))
        if reason is not None:
            return Uncacheable(reason, arg)
        if arg in _LINK_VALUE_OPTIONS and value is None:
            return Uncacheable("missing argument", arg)
        if arg == "-o":
            output = value or output
        elif arg.startswith("-o"):
            output = arg[2:]
        elif not arg.startswith("-"):
            if os.path.splitext(arg)[1] in SOURCE_LANGUAGES:
                return Uncacheable("compiles sources too", arg)
            inputs.append(arg)
        elif arg == "-T" and value:
            inputs.append(value)
    return Link(args, output, inputs)
