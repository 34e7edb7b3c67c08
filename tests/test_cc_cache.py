"""`gaffer cc` and `gaffer ld` through the real CLI with the real gcc: every result byte-identical to what gcc
itself makes in the same place, hits where the inputs are the same, misses exactly where they are not, and
never another checkout's object."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support import NOBODY, fill_disk, gaffer_env, mounted, require, require_tool

GCC = "gcc"


@pytest.fixture(autouse=True)
def _gcc() -> None:
    require_tool("gcc")


class Launcher:
    """Runs `python -m gaffer cc|ld -- ...` with a private cache and launcher directory, and reads the debug log
    (GAFFER_CC_DEBUG=file) for what each run did."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.log = tmp_path / "cc.log"
        self.env = gaffer_env(tmp_path / "cache", GAFFER_CC_DIR=str(tmp_path / "cc"), GAFFER_CC_DEBUG=str(self.log),
                              **env)
        self.seen = 0

    def run(self, args: Sequence[str], cwd: Path, kind: str = "cc", stdin: bytes | None = None,
            **env: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "gaffer", kind, "--", *args], cwd=cwd,
                              env={**self.env, **env}, capture_output=True, input=stdin, timeout=120, check=False)

    def outcomes(self) -> list[str]:
        """The log lines written since the last call, without their prefix: "x.c: direct hit", ..."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        new, self.seen = lines[self.seen:], len(lines)
        return [line.split("] ", 1)[1] for line in new]

    def outcome(self) -> str:
        lines = self.outcomes()
        assert len(lines) == 1, lines
        return lines[0]

    def stats(self, tmp_path: Path) -> str:
        return subprocess.run([sys.executable, "-m", "gaffer", "cc", "--show-stats"], cwd=tmp_path, env=self.env,
                              capture_output=True, text=True, check=True).stdout


def plain(args: Sequence[str], cwd: Path, tool: str = GCC, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, input=stdin, timeout=120, check=False)


def outputs(cwd: Path, names: Sequence[str]) -> dict[str, bytes | None]:
    return {n: (cwd / n).read_bytes() if (cwd / n).exists() else None for n in names}


def remove(cwd: Path, names: Sequence[str]) -> None:
    for n in names:
        (cwd / n).unlink(missing_ok=True)


def same_as_gcc(launcher: Launcher, args: Sequence[str], cwd: Path, produced: Sequence[str],
                tool: str = GCC, stamped: bool = False) -> str:
    """Run plain gcc, then gaffer cc, in the same place with the same arguments: the files, stdout, stderr and
    exit status must be identical (`stamped`: but for the time stamp coverage data carries, the same in the
    object and the .gcno). Returns what gaffer did."""
    remove(cwd, produced)
    want = plain(args, cwd, tool)
    want_files = outputs(cwd, produced)
    remove(cwd, produced)
    got = launcher.run([tool, *args], cwd)
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
    got_files = outputs(cwd, produced)
    if stamped:
        want_files, got_files = unstamped(want_files), unstamped(got_files)
    assert got_files == want_files
    return launcher.outcome()


def unstamped(files: dict[str, bytes | None]) -> dict[str, bytes | None]:
    """The files with the coverage time stamp (bytes 8-12 of the .gcno, also in the object) zeroed: a hit
    restores an object and a .gcno with the same stamp, as one compile makes them."""
    stamp = next(data[8:12] for name, data in files.items() if name.endswith(".gcno") and data)
    return {name: data.replace(stamp, bytes(4)) if data else data for name, data in files.items()}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def project(root: Path) -> Path:
    """a.c includes h1.h, b.c h2.h, c.c both (and stdio.h); build/ is the working directory."""
    write(root / "inc" / "h1.h", "#define ONE 1\n")
    write(root / "inc" / "h2.h", "#define TWO 2\n")
    write(root / "src" / "a.c", '#include "h1.h"\nint a(void) { return ONE; }\n')
    write(root / "src" / "b.c", '#include "h2.h"\nint b(void) { return TWO; }\n')
    write(root / "src" / "c.c", '#include <stdio.h>\n#include "h1.h"\n#include "h2.h"\n'
                                'int c(void) { return printf("%d\\n", ONE + TWO); }\n')
    (root / "build").mkdir(exist_ok=True)
    return root / "build"


def test_cold_and_warm_objects_and_dependency_files_are_gccs(tmp_path: Path) -> None:
    build = project(tmp_path)
    cc = Launcher(tmp_path)
    for name in "abc":
        args = ["-O2", "-I../inc", "-MD", "-MF", f"{name}.d", "-c", f"../src/{name}.c", "-o", f"{name}.o"]
        assert same_as_gcc(cc, args, build, [f"{name}.o", f"{name}.d"]).startswith(f"../src/{name}.c: miss")
        assert same_as_gcc(cc, args, build, [f"{name}.o", f"{name}.d"]) == f"../src/{name}.c: direct hit"
    stats = cc.stats(tmp_path)
    assert "direct hits                              3" in stats and "misses                                   3" in stats


def test_a_header_edit_misses_exactly_the_files_including_it(tmp_path: Path) -> None:
    build = project(tmp_path)
    cc = Launcher(tmp_path)
    for name in "abc":
        same_as_gcc(cc, ["-I../inc", "-c", f"../src/{name}.c"], build, [f"{name}.o"])
    write(tmp_path / "inc" / "h1.h", "#define ONE 11\n")
    got = {name: same_as_gcc(cc, ["-I../inc", "-c", f"../src/{name}.c"], build, [f"{name}.o"]) for name in "abc"}
    assert got == {"a": "../src/a.c: miss: ../inc/h1.h changed", "b": "../src/b.c: direct hit",
                   "c": "../src/c.c: miss: ../inc/h1.h changed"}
    # back to the first content: the first entry of the manifest still matches
    write(tmp_path / "inc" / "h1.h", "#define ONE 1\n")
    assert same_as_gcc(cc, ["-I../inc", "-c", "../src/a.c"], build, ["a.o"]) == "../src/a.c: direct hit"


def test_a_header_appearing_earlier_in_the_search_path_is_a_miss(tmp_path: Path) -> None:
    """ccache's direct mode misses this: every file read is unchanged, but a new header now comes first."""
    write(tmp_path / "second" / "conf.h", "#define V 2\n")
    write(tmp_path / "lib" / "config.h", "#define W 3\n")
    write(tmp_path / "s.c", '#include "conf.h"\n#include <config.h>\nint v(void) { return V + W; }\n')
    cc = Launcher(tmp_path)
    args = ["-Ifirst", "-Isecond", "-Ilib", "-c", "s.c"]
    same_as_gcc(cc, args, tmp_path, ["s.o"])
    assert same_as_gcc(cc, args, tmp_path, ["s.o"]) == "s.c: direct hit"
    write(tmp_path / "first" / "conf.h", "#define V 1\n")
    assert same_as_gcc(cc, args, tmp_path, ["s.o"]) == "s.c: miss: first/conf.h appeared"
    assert same_as_gcc(cc, args, tmp_path, ["s.o"]) == "s.c: direct hit"
    write(tmp_path / "config.h", "#define W 4\n")  # beside the source: quoted includes look there first
    write(tmp_path / "s.c", '#include "conf.h"\n#include "config.h"\nint v(void) { return V + W; }\n')
    same_as_gcc(cc, args, tmp_path, ["s.o"])
    (tmp_path / "config.h").unlink()
    assert same_as_gcc(cc, args, tmp_path, ["s.o"]).startswith("s.c: miss")  # now lib/config.h
    write(tmp_path / "config.h", "#define W 4\n")
    assert same_as_gcc(cc, args, tmp_path, ["s.o"]) == "s.c: direct hit"
    # a project header shadowing a system one
    write(tmp_path / "t.c", "#include <stdint.h>\nint32_t t;\n")
    same_as_gcc(cc, ["-Ilib", "-c", "t.c"], tmp_path, ["t.o"])
    write(tmp_path / "lib" / "stdint.h", "typedef long int32_t;\n")
    assert same_as_gcc(cc, ["-Ilib", "-c", "t.c"], tmp_path, ["t.o"]) == "t.c: miss: lib/stdint.h appeared"


def test_an_include_option_file_appearing_in_the_working_directory_is_a_miss(tmp_path: Path) -> None:
    """-include and -imacros look in the working directory first, whatever the source's directory."""
    build = project(tmp_path)
    write(tmp_path / "inc" / "pre.h", "#define PRE 1\n")
    write(tmp_path / "src" / "p.c", "int p = PRE;\n")
    cc = Launcher(tmp_path)
    for option in ("-include", "-imacros"):
        args = ["-I../inc", option, "pre.h", "-c", "../src/p.c"]
        same_as_gcc(cc, args, build, ["p.o"])
        write(build / "pre.h", "#define PRE 2\n")
        assert same_as_gcc(cc, args, build, ["p.o"]).startswith("../src/p.c: miss: ./pre.h appeared"), option
        (build / "pre.h").unlink()


def test_precompiled_headers_are_never_trusted(tmp_path: Path) -> None:
    """gcc reads p.h.gch instead of p.h when there is one, and its dependency file names neither."""
    write(tmp_path / "p.h", "#define P 1\n")
    write(tmp_path / "a.c", '#include "p.h"\nint x = P;\n')
    cc = Launcher(tmp_path)
    same_as_gcc(cc, ["-c", "a.c"], tmp_path, ["a.o"])
    assert plain(["-x", "c-header", "p.h", "-o", "p.h.gch"], tmp_path).returncode == 0
    assert same_as_gcc(cc, ["-c", "a.c"], tmp_path, ["a.o"]).startswith("a.c: miss, not stored: ./p.h.gch appeared")
    write(tmp_path / "p.h", "#define P 2\n")
    assert plain(["-x", "c-header", "p.h", "-o", "p.h.gch"], tmp_path).returncode == 0
    outcome = same_as_gcc(cc, ["-c", "a.c"], tmp_path, ["a.o"])
    assert outcome.endswith("a precompiled header is in the search path (./p.h.gch)"), outcome


def test_a_comment_only_edit_is_a_preprocessed_hit(tmp_path: Path) -> None:
    build = project(tmp_path)
    cc = Launcher(tmp_path, GAFFER_CC_PREPROCESSOR="1")
    same_as_gcc(cc, ["-I../inc", "-c", "../src/a.c"], build, ["a.o"])
    write(tmp_path / "inc" / "h1.h", "/* a comment */\n#define ONE 1\n")
    assert same_as_gcc(cc, ["-I../inc", "-c", "../src/a.c"], build, ["a.o"]).startswith(
        "../src/a.c: preprocessed hit: ../inc/h1.h changed")
    assert same_as_gcc(cc, ["-I../inc", "-c", "../src/a.c"], build, ["a.o"]) == "../src/a.c: direct hit"


def test_a_comment_edit_that_moves_columns_is_no_preprocessed_hit_where_columns_show(tmp_path: Path) -> None:
    """The preprocessed text keeps lines, not columns: debug info (gcc's column info) and diagnostics (which
    quote the source line) record them, so such a compile takes no preprocessed hit after a comment edit."""
    cc = Launcher(tmp_path, GAFFER_CC_PREPROCESSOR="1")
    write(tmp_path / "x.c", '#include "h.h"\nint x(int a) { return g(a); }\n')
    for args in (["-g", "-c", "x.c"], ["-Wall", "-c", "x.c"]):
        write(tmp_path / "h.h", "static inline int g(int a) { int unused; return a + 1; }\n")
        same_as_gcc(cc, args, tmp_path, ["x.o"])
        write(tmp_path / "h.h", "static inline /* moved */ int g(int a) { int unused; return a + 1; }\n")
        assert same_as_gcc(cc, args, tmp_path, ["x.o"]).startswith("x.c: miss: h.h changed"), args


def test_warnings_are_replayed_byte_for_byte(tmp_path: Path) -> None:
    write(tmp_path / "w.c", "int f(int x) { int unused; return x; }\n")
    cc = Launcher(tmp_path)
    args = ["-Wall", "-Wextra", "-c", "w.c"]
    assert plain(args, tmp_path).stderr.count(b"warning") == 1
    assert same_as_gcc(cc, args, tmp_path, ["w.o"]).startswith("w.c: miss")
    assert same_as_gcc(cc, args, tmp_path, ["w.o"]) == "w.c: direct hit"
    # the locale is a key input: diagnostics in another language are another entry
    assert same_as_gcc(cc, args, tmp_path, ["w.o"]) == "w.c: direct hit"


def test_diagnostics_the_environment_asks_for_are_keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GCC_EXTRA_DIAGNOSTIC_OUTPUT adds machine-readable fix-it lines to the warnings."""
    write(tmp_path / "w.c", '#include <stdio.h>\nint k(void) { return printf("%d\\n", 1.0); }\n')
    cc = Launcher(tmp_path)
    for value in ("", "fixits-v2"):
        if value:
            monkeypatch.setenv("GCC_EXTRA_DIAGNOSTIC_OUTPUT", value)
            cc.env["GCC_EXTRA_DIAGNOSTIC_OUTPUT"] = value
        assert same_as_gcc(cc, ["-Wall", "-c", "w.c"], tmp_path, ["w.o"]).startswith("w.c: miss")


def test_a_compile_error_is_gccs_and_never_cached(tmp_path: Path) -> None:
    write(tmp_path / "e.c", "int f(void) { return nope; }\n")
    cc = Launcher(tmp_path)
    for _ in range(2):
        assert same_as_gcc(cc, ["-c", "e.c"], tmp_path, ["e.o"]) == "e.c: failed: exit status 1: not cached"
    write(tmp_path / "e.c", "int f(void) { return 0; }\n")
    assert same_as_gcc(cc, ["-c", "e.c"], tmp_path, ["e.o"]).startswith("e.c: miss")
    assert "compiles that failed (never cached)      2" in cc.stats(tmp_path)


def test_date_and_time_macros_are_not_cached_in_direct_mode(tmp_path: Path) -> None:
    """ccache's rule, and then preprocessor mode for that compile: its key has the expanded date, which
    SOURCE_DATE_EPOCH fixes."""
    write(tmp_path / "inc" / "stamp.h", "#define STAMP __DATE__ \" \" __TIME__\n")
    write(tmp_path / "d.c", '#include "inc/stamp.h"\nconst char *when = STAMP;\n')
    cc = Launcher(tmp_path)
    result = cc.run([GCC, "-c", "d.c"], tmp_path)
    assert result.returncode == 0 and (tmp_path / "d.o").exists()
    assert cc.outcome() == "d.c: miss, not stored: new (never run with these arguments); uses __DATE__ or " \
                           "__TIME__ (direct mode: preprocessor mode next time)"
    epoch = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    want = subprocess.run([GCC, "-c", "d.c", "-o", "want.o"], cwd=tmp_path, env=epoch, check=True)
    outcomes = []
    for _ in range(3):
        (tmp_path / "d.o").unlink()
        assert cc.run([GCC, "-c", "d.c"], tmp_path, SOURCE_DATE_EPOCH="1700000000").returncode == want.returncode
        assert (tmp_path / "d.o").read_bytes() == (tmp_path / "want.o").read_bytes()
        outcomes.append(cc.outcome().split(":")[1].strip())
    assert outcomes == ["miss, not stored", "miss", "preprocessed hit"]


def test_files_the_assembler_reads_are_never_trusted_to_the_dependency_file(tmp_path: Path) -> None:
    """`.incbin` (in inline asm or an assembler source) and `.include` read files gcc's dependency file does not
    name: such a compile is not stored, so an edit of the file it embeds is never a stale hit."""
    write(tmp_path / "e.c", '__asm__(".section .rodata\\nblob: .incbin \\"data.bin\\"\\n.text");\n')
    write(tmp_path / "s.S", '.section .rodata\n.include "more.s"\n')
    cc = Launcher(tmp_path)
    for value in ("one", "two"):
        write(tmp_path / "data.bin", value)
        write(tmp_path / "more.s", f'.ascii "{value}"\n')
        for source, obj in (("e.c", "e.o"), ("s.S", "s.o")):
            outcome = same_as_gcc(cc, ["-c", source], tmp_path, [obj])
            assert outcome.startswith(f"{source}: miss, not stored") and "assembler" in outcome, outcome


def test_date_and_time_macros_on_the_command_line_are_not_cached_in_direct_mode(tmp_path: Path) -> None:
    write(tmp_path / "d.c", "const char *when = STAMP;\n")
    cc = Launcher(tmp_path)
    outcomes = []
    for _ in range(3):
        assert cc.run([GCC, "-DSTAMP=__DATE__ \" \" __TIME__", "-c", "d.c"], tmp_path).returncode == 0
        outcomes.append(cc.outcome())
    assert outcomes[0].endswith("uses __DATE__ or __TIME__ (direct mode: preprocessor mode next time)"), outcomes
    assert "d.c: direct hit" not in outcomes, outcomes  # a preprocessed hit has the same expanded time


def checkout(root: Path, header_value: int = 1) -> Path:
    write(root / "include" / "conf.h", f"#define VALUE {header_value}\n")
    write(root / "src" / "main.c", '#include <stdio.h>\n#include "conf.h"\n'
                                   'int show(void) { return printf("%s %d\\n", __FILE__, VALUE); }\n')
    (root / "build").mkdir(exist_ok=True)
    return root / "build"


def cmake_like(root: Path, *extra: str) -> list[str]:
    """Arguments as CMake writes them: absolute source and include paths, a relative object, -MD -MT -MF."""
    return ["-O2", *extra, f"-I{root}/include", "-MD", "-MT", "main.o", "-MF", "main.o.d", "-o", "main.o",
            "-c", f"{root}/src/main.c"]


def test_two_checkouts_share_hits_and_get_their_own_dependency_files(tmp_path: Path) -> None:
    one, two = checkout(tmp_path / "one"), checkout(tmp_path / "two")
    cc = Launcher(tmp_path, GAFFER_CC_BASEDIR=str(tmp_path))
    produced = ["main.o", "main.o.d"]
    for build in (one, two):
        root = build.parent
        same_as_gcc(cc, cmake_like(root, "-g", f"-ffile-prefix-map={root}=."), build, produced)
    assert (two / "main.o.d").read_text().count(str(tmp_path / "two")) == 2  # gcc's own file, checked equal above
    assert cc.outcomes() == [] and cc.log.read_text().count("direct hit") == 1
    # without the prefix map the objects differ (__FILE__, debug info): no sharing, each gets its own
    for build in (one, two):
        outcome = same_as_gcc(cc, cmake_like(build.parent, "-g"), build, produced)
        assert outcome.startswith(f"{build.parent}/src/main.c: miss")
    # the skeleton object of -gsplit-dwarf records the .dwo's path as given, which no prefix map changes
    for build in (one, two):
        root = build.parent
        args = ["-g", "-gsplit-dwarf", f"-ffile-prefix-map={root}=.", "-I../include", "-c", "../src/main.c", "-o",
                f"{build}/split.o"]
        assert "miss" in same_as_gcc(cc, args, build, ["split.o", "split.dwo"])
    # without a base directory, nothing is shared, and still each is gcc's
    (tmp_path / "p").mkdir()
    plain_cc = Launcher(tmp_path / "p")
    for build in (one, two):
        root = build.parent
        assert "miss" in same_as_gcc(plain_cc, cmake_like(root, f"-ffile-prefix-map={root}=."), build, produced)


def test_what_a_prefix_map_leaves_of_a_path_is_keyed(tmp_path: Path) -> None:
    """A -ffile-prefix-map whose OLD is above the working directory (or above an absolute source) leaves the rest
    of the path in the object: checkouts below OLD, or build directories of other names, make different objects,
    and none may get another's."""
    cc = Launcher(tmp_path, GAFFER_CC_BASEDIR=str(tmp_path))
    for n, style in enumerate(("parent, relative source", "parent, absolute source", "checkout root, builds differ")):
        for name in ("one", "two"):
            root = tmp_path / f"{n}-{name}"
            build = root / ("build" if style.startswith("parent") else f"build-{name}")
            write(root / "src" / "x.c", "const char *f = __FILE__;\nint x(int a) { return a + 1; }\n")
            build.mkdir()
            source = f"{root}/src/x.c" if "absolute" in style else "../src/x.c"
            old = f"{tmp_path}=/src" if style.startswith("parent") else f"{root}/="
            try:
                same_as_gcc(cc, ["-g", f"-ffile-prefix-map={old}", "-c", source, "-o", "x.o"], build, ["x.o"])
            except AssertionError as e:
                raise AssertionError(f"{style}, {name}: {e}") from e


def test_debug_info_names_the_directory_as_pwd_gives_it(tmp_path: Path) -> None:
    """gcc records $PWD as the working directory when it names the same directory (the shell keeps the path
    through a symlink): reached through two symlinks, one directory makes two objects."""
    write(tmp_path / "real" / "x.c", "int x(int a) { return a * 3; }\n")
    cc = Launcher(tmp_path)
    for link in ("one", "two"):
        (tmp_path / link).symlink_to(tmp_path / "real")
        pwd = str(tmp_path / link)
        want = subprocess.run([GCC, "-g", "-c", "x.c", "-o", "want.o"], cwd=pwd, env={**os.environ, "PWD": pwd},
                              check=True)
        assert want.returncode == 0 and cc.run([GCC, "-g", "-c", "x.c"], tmp_path / link, PWD=pwd).returncode == 0
        assert (tmp_path / "real" / "x.o").read_bytes() == (tmp_path / "real" / "want.o").read_bytes(), link


def test_warnings_naming_a_checkout_are_never_replayed_in_another(tmp_path: Path) -> None:
    """Diagnostics name the paths the command gave (CMake's are absolute) whatever the prefix maps: a result
    with such a warning holds in its own checkout only; one without is shared."""
    cc = Launcher(tmp_path, GAFFER_CC_BASEDIR=str(tmp_path))
    outcomes = []
    for name in ("one", "two", "one", "two"):
        root = tmp_path / name
        write(root / "inc" / "w.h", "static int unused_in_header;\n")
        write(root / "src" / "a.c", '#include "w.h"\nint f(void) { int unused; return 0; }\n')
        (root / "build").mkdir(exist_ok=True)
        for warn in ("-Wall", "-w"):
            args = [warn, f"-I{root}/inc", f"-ffile-prefix-map={root}=.", "-c", f"{root}/src/a.c", "-o", "a.o"]
            outcomes.append(same_as_gcc(cc, args, root / "build", ["a.o"]).split(": ", 1)[1])
    assert outcomes == ["miss: new (never run with these arguments)", "miss: arguments differ: -'-Wall', +'-w'",
                        "miss: its diagnostics name the paths of another working directory", "direct hit",
                        "direct hit", "direct hit", "direct hit", "direct hit"], outcomes


def test_differential_across_checkouts_never_gives_the_other_checkouts_object(tmp_path: Path) -> None:
    """Random small projects in two checkouts under one base directory, with sources and headers differing at
    random between them, built in turns through rounds of random edits (a header shadowing another appearing
    and disappearing among them) with random (portable and unportable) flags: every object and dependency file is what gcc makes in that checkout. GAFFER_TEST_SEED replays one."""
    seed = int(os.environ.get("GAFFER_TEST_SEED") or random.randrange(1 << 30))
    examples = int(os.environ.get("GAFFER_TEST_EXAMPLES") or 3)
    hits = 0  # hits right after the other checkout compiled the same source
    for example in range(examples):
        last_root: dict[int, Path] = {}
        rng = random.Random(seed + example)
        base = tmp_path / f"ex{example}"
        cc = Launcher(base, GAFFER_CC_BASEDIR=str(base), GAFFER_CC_PREPROCESSOR=rng.choice(["0", "1"]))
        roots = [base / "one", base / "two"]
        # each source keeps its command line's form through the rounds (so there are hits to get wrong)
        styles = [(rng.choice([[], ["-g"], ["-g", "-ffile-prefix-map=ROOT=."], ["-ffile-prefix-map=ROOT=."], ["-O1"],
                               ["-g", "-gsplit-dwarf", "-ffile-prefix-map=ROOT=."]]),
                   rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5) for _ in range(3)]
        for rnd in range(4):
            for root in roots:
                if root == roots[1] and rnd == 0:  # the second checkout starts as a copy of the first
                    shutil.copytree(roots[0], root)
                    continue
                for h in range(2):
                    if rnd == 0 or rng.random() < 0.25:
                        write(root / "inc" / f"h{h}.h", f"#define H{h} {rng.randrange(3)}\n")
                    shadow = root / "first" / f"h{h}.h"  # searched before inc/: appears and disappears
                    if rng.random() < 0.15:
                        write(shadow, f"#define H{h} {rng.randrange(3, 6)}\n")
                    elif rng.random() < 0.15:
                        shadow.unlink(missing_ok=True)
                for s in range(3):
                    if rnd == 0 or rng.random() < 0.25:
                        includes = "".join(f'#include "h{h}.h"\n' for h in range(2) if rng.random() < 0.7)
                        body = " + ".join(f"H{h}" for h in range(2) if f"h{h}.h" in includes) or "0"
                        write(root / "src" / f"s{s}.c", f'{includes}const char *f{s} = __FILE__;\n'
                                                        f"int v{s}(void) {{ return {body} + {rng.randrange(3)}; }}\n")
                (root / "build").mkdir(exist_ok=True)
            for root in roots if rng.random() < 0.5 else roots[::-1]:
                for s, (flags, absolute, abs_inc, abs_first, abs_out) in enumerate(styles):
                    src = f"{root}/src/s{s}.c" if absolute else f"../src/s{s}.c"
                    inc = f"-I{root}/inc" if abs_inc else "-I../inc"
                    first = f"-I{root}/first" if abs_first else "-I../first"
                    flags = [f.replace("ROOT", str(root)) for f in flags]
                    out = f"{root}/build/s{s}.o" if abs_out else f"s{s}.o"
                    args = [*flags, first, inc, "-MD", "-MF", f"s{s}.d", "-c", src, "-o", out]
                    produced = [f"s{s}.o", f"s{s}.d", *([f"s{s}.dwo"] if "-gsplit-dwarf" in flags else [])]
                    try:
                        outcome = same_as_gcc(cc, args, root / "build", produced)
                    except AssertionError as e:
                        raise AssertionError(f"seed {seed + example}, round {rnd}, {root.name}: {args}: {e}") from e
                    hits += "hit" in outcome and root != last_root.get(s, root)
                    last_root[s] = root
    assert hits > 0, f"seed {seed}: no hit from the other checkout at all: the test proves nothing"


@pytest.mark.parametrize(("args", "produced", "second"), [  # `produced` is compared byte for byte
    (["-c", "x.c", "-ox.o"], ["x.o"], "hit"),
    (["-c", "-x", "c", "x.txt", "-o", "t.o"], ["t.o"], "hit"),
    (["-include", "pre.h", "-c", "x.c"], ["x.o"], "hit"),
    (["-march=native", "-c", "x.c"], ["x.o"], "hit"),
    (["-Wp,-MD,wp.d", "-c", "x.c"], ["x.o", "wp.d"], "hit"),
    (["-MMD", "-MP", "-c", "x.c"], ["x.o", "x.d"], "hit"),
    (["-gsplit-dwarf", "-g", "-c", "x.c", "-o", "sub/x.o"], ["sub/x.o", "sub/x.dwo"], "hit"),
    (["-save-temps", "-c", "x.c"], ["x.o", "x.i", "x.s"], "not cacheable"),
    (["-E", "x.c", "-o", "x.i"], ["x.i"], "not cacheable"),
    (["-c", "x.c", "y.c"], ["x.o", "y.o"], "not cacheable"),
    (["-fprofile-generate", "-c", "x.c"], [], "not cacheable"),  # its objects carry a time stamp
    (["x.c", "-o", "prog"], ["prog"], "not cacheable"),
    (["-c", "x.c", "-o", "/dev/null"], [], "not cacheable: output is not a regular file"),
])
def test_argument_edge_cases(tmp_path: Path, args: list[str], produced: list[str], second: str) -> None:
    write(tmp_path / "pre.h", "#define PRE 3\n")
    write(tmp_path / "x.c", "#include <stdio.h>\nint main(void) { return printf(\"x\\n\") * PRE0; }\n"
          .replace("PRE0", "1"))
    write(tmp_path / "y.c", "int y(void) { return 2; }\n")
    shutil.copy(tmp_path / "x.c", tmp_path / "x.txt")
    (tmp_path / "sub").mkdir()
    cc = Launcher(tmp_path)
    first = same_as_gcc(cc, args, tmp_path, produced)
    assert second in same_as_gcc(cc, args, tmp_path, produced), first


def test_coverage_restores_a_matching_object_and_gcno(tmp_path: Path) -> None:
    write(tmp_path / "x.c", "int f(int x) { return x ? 1 : 2; }\n")
    cc = Launcher(tmp_path)
    same_as_gcc(cc, ["--coverage", "-c", "x.c"], tmp_path, ["x.o", "x.gcno"], stamped=True)
    assert same_as_gcc(cc, ["--coverage", "-c", "x.c"], tmp_path, ["x.o", "x.gcno"], stamped=True) == \
        "x.c: direct hit"


def test_m32_is_cached_or_fails_as_gcc_does(tmp_path: Path) -> None:
    write(tmp_path / "x.c", "#include <stdio.h>\nint f(void) { return puts(\"x\"); }\n")
    cc = Launcher(tmp_path)
    same_as_gcc(cc, ["-m32", "-c", "x.c"], tmp_path, ["x.o"])
    again = same_as_gcc(cc, ["-m32", "-c", "x.c"], tmp_path, ["x.o"])
    assert again == "x.c: direct hit" if plain(["-m32", "-c", "x.c"], tmp_path).returncode == 0 else "failed" in again


def test_response_files_are_expanded_and_cached(tmp_path: Path) -> None:
    write(tmp_path / "x.c", "int f(void) { return X; }\n")
    write(tmp_path / "args.rsp", "-DX=4 -c x.c\n-o 'out file.o'\n")
    cc = Launcher(tmp_path)
    assert same_as_gcc(cc, ["@args.rsp"], tmp_path, ["out file.o"]).startswith("x.c: miss")
    assert same_as_gcc(cc, ["@args.rsp"], tmp_path, ["out file.o"]) == "x.c: direct hit"
    write(tmp_path / "args.rsp", "-DX=5 -c x.c\n-o 'out file.o'\n")
    assert "arguments differ" in same_as_gcc(cc, ["@args.rsp"], tmp_path, ["out file.o"])


def test_stdin_runs_the_compiler_unchanged(tmp_path: Path) -> None:
    source = b"int f(void) { return 7; }\n"
    cc = Launcher(tmp_path)
    want = plain(["-x", "c", "-c", "-", "-o", "want.o"], tmp_path, stdin=source)
    got = cc.run([GCC, "-x", "c", "-c", "-", "-o", "got.o"], tmp_path, stdin=source)
    assert want.returncode == got.returncode == 0
    assert (tmp_path / "want.o").read_bytes() == (tmp_path / "got.o").read_bytes()
    assert "not cacheable: stdin source" in cc.outcome()


def test_profile_use_keys_the_gcda_file(tmp_path: Path) -> None:
    write(tmp_path / "p.c", "int main(int argc, char **argv) { int s = 0; for (int i = 0; i < argc * 1000; i++)"
                            " s += i % 7; return s == 42; }\n")
    assert plain(["-O2", "-fprofile-generate", "p.c", "-o", "p"], tmp_path).returncode == 0
    subprocess.run([str(tmp_path / "p")], check=False)
    assert (tmp_path / "p.gcda").exists()
    cc = Launcher(tmp_path)
    args = ["-O2", "-fprofile-use", "-c", "p.c"]
    same_as_gcc(cc, args, tmp_path, ["p.o"])
    assert same_as_gcc(cc, args, tmp_path, ["p.o"]) == "p.c: direct hit"
    subprocess.run([str(tmp_path / "p"), "more", "runs"], check=False)  # the profile changes
    assert same_as_gcc(cc, args, tmp_path, ["p.o"]) == "p.c: miss: p.gcda changed"


def test_links_are_cached_until_a_library_changes(tmp_path: Path) -> None:
    write(tmp_path / "main.c", "int foo(void);\nint main(void) { return foo(); }\n")
    write(tmp_path / "foo.c", "int foo(void) { return 1; }\n")
    assert plain(["-c", "main.c", "foo.c"], tmp_path).returncode == 0
    assert plain(["-c", "foo.c"], tmp_path).returncode == 0 and subprocess.run(
        ["ar", "rcs", "libfoo.a", "foo.o"], cwd=tmp_path, check=False).returncode == 0
    cc = Launcher(tmp_path)
    args = ["-o", "app", "main.o", "-L.", "-lfoo"]

    def link() -> str:
        (tmp_path / "app").unlink(missing_ok=True)
        want = plain(args, tmp_path)
        want_bytes = (tmp_path / "app").read_bytes()
        (tmp_path / "app").unlink()
        got = cc.run([GCC, *args], tmp_path, kind="ld")
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
        assert (tmp_path / "app").read_bytes() == want_bytes and os.access(tmp_path / "app", os.X_OK)
        return cc.outcome()

    assert link().startswith("app: miss")
    assert link() == "app: direct hit"
    write(tmp_path / "foo.c", "int foo(void) { return 2; }\n")
    plain(["-c", "foo.c"], tmp_path)
    subprocess.run(["ar", "rcs", "libfoo.a", "foo.o"], cwd=tmp_path, check=True)
    assert link() == "app: miss: ./libfoo.a changed"
    assert link() == "app: direct hit"
    assert plain(["-shared", "-fPIC", "-o", "libfoo.so", "foo.c"], tmp_path).returncode == 0
    assert link() == "app: miss: ./libfoo.so appeared"  # ld now takes the shared library
    assert "link hits                                2" in cc.stats(tmp_path)


def test_a_link_with_commas_in_the_launcher_directory_and_the_output(tmp_path: Path) -> None:
    """The linker's dependency file is named in one argument: through -Wl, a comma in its path split it, and
    every link failed."""
    write(tmp_path / "main.c", "int main(void) { return 0; }\n")
    assert plain(["-c", "main.c"], tmp_path).returncode == 0
    cc = Launcher(tmp_path)
    cc.env["GAFFER_CC_DIR"] = str(tmp_path / "cc,dir")
    for outcome in ("miss", "direct hit"):
        (tmp_path / "a,pp").unlink(missing_ok=True)
        got = cc.run([GCC, "-o", "a,pp", "main.o"], tmp_path, kind="ld")
        assert got.returncode == 0, got.stderr
        assert cc.outcome().startswith(f"a,pp: {outcome}")


def test_stats_explain_and_zero(tmp_path: Path) -> None:
    build = project(tmp_path)
    cc = Launcher(tmp_path)
    cc.run([GCC, "-I../inc", "-c", "../src/a.c"], build)
    cc.run([GCC, "-E", "../src/a.c"], build)
    write(tmp_path / "inc" / "h1.h", "#define ONE 2\n")
    cc.run([GCC, "-I../inc", "-c", "../src/a.c"], build)
    explain = subprocess.run([sys.executable, "-m", "gaffer", "cc", "--explain", "--", GCC, "-I../inc", "-c",
                              "../src/a.c"], cwd=build, env=cc.env, capture_output=True, text=True, check=True)
    assert explain.stdout.startswith("a.o: miss (") and explain.stdout.endswith("): ../inc/h1.h changed\n")
    also = subprocess.run([sys.executable, "-m", "gaffer", "explain", "--", GCC, "-I../inc", "-c", "../src/a.c"],
                          cwd=build, env=cc.env, capture_output=True, text=True, check=True)
    assert also.stdout.endswith("): ../inc/h1.h changed\n")  # `gaffer explain` understands a compile too
    stats = cc.stats(tmp_path)
    assert "misses                                   2" in stats
    assert "uncacheable: preprocessing only (-E)" in stats
    subprocess.run([sys.executable, "-m", "gaffer", "cc", "--zero-stats"], cwd=tmp_path, env=cc.env, check=True)
    assert "misses                                   0" in cc.stats(tmp_path)


def test_machines_share_entries_through_a_remote_tier_and_read_only_pushes_nothing(tmp_path: Path) -> None:
    """Two machines (their own local caches and launcher directories) with one remote tier: the second hits
    what the first compiled; a read-only one pulls but never pushes."""
    remote = f"disk://{tmp_path / 'remote'}"
    write(tmp_path / "x.c", "int f(void) { return 1; }\n")
    machines = [Launcher(tmp_path / name, GAFFER_CACHE=remote) for name in ("a", "b", "ci", "d")]
    for name in ("a", "b", "ci", "d"):
        (tmp_path / name).mkdir()
    ci = machines[2]
    ci.env["GAFFER_CACHE_READ_ONLY"] = "1"
    write(tmp_path / "y.c", "int g(void) { return 2; }\n")
    assert same_as_gcc(ci, ["-c", "y.c"], tmp_path, ["y.o"]).startswith("y.c: miss")
    assert same_as_gcc(machines[0], ["-c", "x.c"], tmp_path, ["x.o"]).startswith("x.c: miss")
    assert same_as_gcc(machines[1], ["-c", "x.c"], tmp_path, ["x.o"]) == "x.c: direct hit"
    assert same_as_gcc(ci, ["-c", "x.c"], tmp_path, ["x.o"]) == "x.c: direct hit"
    assert same_as_gcc(machines[3], ["-c", "y.c"], tmp_path, ["y.o"]).startswith("y.c: miss")  # ci pushed nothing


def test_an_unusable_cache_never_fails_a_compile(tmp_path: Path) -> None:
    write(tmp_path / "x.c", "int f(void) { return 1; }\n")
    write(tmp_path / "e.c", "int f(void) { return nope; }\n")
    (tmp_path / "not-a-dir").write_text("")
    cc = Launcher(tmp_path, GAFFER_CACHE_DIR=str(tmp_path / "not-a-dir" / "cache"))
    for source in ("x.c", "e.c"):
        want = plain(["-c", source], tmp_path)
        got = cc.run([GCC, "-c", source], tmp_path)
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
        assert cc.outcomes()[0].startswith(f"{source}: cache unusable (local cache")
    assert "uncacheable: cache unusable" in cc.stats(tmp_path)


def test_a_full_launcher_directory_never_fails_a_compile(tmp_path: Path) -> None:
    """The scratch dependency file gaffer adds goes to the launcher's directory: when that disk is full the
    compiler cannot write it, and the compile gcc alone would make runs as given; the counters' file, not
    written, leaves no temp file behind."""
    write(tmp_path / "x.c", "int x(void) { return 1; }\n")
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as full:
        cc = Launcher(tmp_path)
        cc.env["GAFFER_CC_DIR"] = str(full / "cc")
        (full / "cc").mkdir(mode=0o700)
        fill_disk(full)
        outcome = same_as_gcc(cc, ["-c", "x.c"], tmp_path, ["x.o"])
        assert outcome.endswith("not cacheable: the compiler could not write gaffer's scratch file"), outcome
        assert sorted(p.name for p in (full / "cc").iterdir() if ".tmp" in p.name) == []  # nor a temp file left


def test_an_assembler_earlier_on_path_is_another_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gcc runs the `as` (and `ld`) it finds on PATH: one earlier on PATH makes other objects, so it is part of
    the compiler's identity, looked up for each compile."""
    write(tmp_path / "x.c", "int x(void) { return 1; }\n")
    write(tmp_path / "bin" / "as", '#!/bin/sh\n# the real assembler, then a section of its own\n'
          'out=a.out; prev=; for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done\n'
          f'{shutil.which("as")} "$@" && objcopy --add-section .note.ours=/dev/null "$out"\n').chmod(0o755)
    require_tool("objcopy")
    cc = Launcher(tmp_path)
    assert same_as_gcc(cc, ["-c", "x.c"], tmp_path, ["x.o"]).startswith("x.c: miss")
    cc.env["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    monkeypatch.setenv("PATH", cc.env["PATH"])  # for plain gcc too
    assert same_as_gcc(cc, ["-c", "x.c"], tmp_path, ["x.o"]).startswith("x.c: miss")


def test_a_debug_log_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    write(tmp_path / "x.c", "int x(void) { return 1; }\n")
    cc = Launcher(tmp_path)
    proc = cc.run([GCC, "-c", "x.c"], tmp_path, GAFFER_CC_DEBUG=str(tmp_path / "no" / "such" / "dir.log"))
    assert (proc.returncode, proc.stderr.decode()) == (2, (f"gaffer: GAFFER_CC_DEBUG: cannot write the debug log "
                                                          f"{tmp_path}/no/such/dir.log: No such file or directory\n"))


def test_the_launcher_directory_is_private_and_never_another_users(tmp_path: Path) -> None:
    write(tmp_path / "x.c", "int f(void) { return 1; }\n")
    (tmp_path / "cc").mkdir(mode=0o755)
    cc = Launcher(tmp_path)
    assert cc.run([GCC, "-c", "x.c"], tmp_path).returncode == 0
    assert (tmp_path / "cc").stat().st_mode & 0o777 == 0o700
    require(os.geteuid() == 0, "giving a directory to another user needs root")
    os.chown(tmp_path / "cc", NOBODY, NOBODY)
    refused = cc.run([GCC, "-c", "x.c"], tmp_path)
    assert refused.returncode == 3 and refused.stderr.decode().startswith("gaffer: launcher directory")
    assert refused.stderr.count(b"\n") == 1


def test_concurrent_requests_on_one_context_as_the_daemon_serves_them(tmp_path: Path) -> None:
    """handle() from many threads at once with one Context (what the daemon does): checkouts with the same
    key race on one manifest and one result, others compile their own sources; every object is gcc's."""
    from gaffer.cc.launch import DONE, Context, Request, handle

    log = tmp_path / "cc.log"
    env = gaffer_env(tmp_path / "cache", GAFFER_CC_DIR=str(tmp_path / "cc"), GAFFER_CC_BASEDIR=str(tmp_path),
                     GAFFER_CC_DEBUG=str(log))
    builds = [checkout(tmp_path / f"c{i}", header_value=i % 2) for i in range(6)]
    args = ["-O1", "-I../include", "-MD", "-MF", "main.d", "-c", "../src/main.c", "-o", "main.o"]
    want = {}
    for build in builds:
        assert plain(args, build).returncode == 0
        want[build] = outputs(build, ["main.o", "main.d"])
        remove(build, ["main.o", "main.d"])
    ctx = Context.from_environment(env, str(tmp_path))

    def compile_in(build: Path) -> int:
        return handle(Request(0, str(build), [GCC, *args], env), ctx).exit_code

    from concurrent.futures import ThreadPoolExecutor

    for _ in range(2):  # cold, then warm
        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(compile_in, builds)) == [0] * 6
        for build in builds:
            assert outputs(build, ["main.o", "main.d"]) == want[build]
            remove(build, ["main.o", "main.d"])
    assert log.read_text().count("direct hit") >= 6  # the warm round at least
    response = handle(Request(0, str(builds[0]), [GCC, *args], env), ctx)
    assert response.verdict == DONE and outputs(builds[0], ["main.o", "main.d"]) == want[builds[0]]
    ctx.close()


@pytest.mark.parametrize("tool", ["g++", "c++"])
def test_cxx_compiles_are_cached_under_any_driver_name(tmp_path: Path, tool: str) -> None:
    require_tool(tool)
    write(tmp_path / "v.cpp", "#include <vector>\n#include <string>\n"
                              "std::string f(std::vector<int> v) { return std::to_string(v.size()); }\n")
    cc = Launcher(tmp_path)
    args = ["-O1", "-std=c++17", "-MMD", "-c", "v.cpp"]
    assert same_as_gcc(cc, args, tmp_path, ["v.o", "v.d"], tool=tool).startswith("v.cpp: miss")
    assert same_as_gcc(cc, args, tmp_path, ["v.o", "v.d"], tool=tool) == "v.cpp: direct hit"
