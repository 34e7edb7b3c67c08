"""The gcc/clang command-line classifier: which commands gaffer caches, what it learns from them, and the base
directory and dependency-file rewriting between checkouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gaffer.cc.args import Compile, Link, Uncacheable, classify, classify_link, split_response
from gaffer.cc.basedir import MARK, absolute, localise, normalise, relative, usable
from gaffer.cc.depfile import from_portable, prerequisites, to_portable
from gaffer.cc.history import key_change
from gaffer.cc.key import cwd_reason


def compile_of(args: str, cwd: str = "/w") -> Compile:
    c = classify(args.split(), cwd)
    assert isinstance(c, Compile), c
    return c


@pytest.mark.parametrize("args", [
    "-c x.c", "-c x.c -o x.o", "-c -ox.o x.c", "-O2 -g -Wall -Iinc -I inc -DX=1 -D Y -c x.cpp -o o/x.o",
    "-c x.c -MD -MF x.d -MT x.o -MQ y", "-c x.c -MMD -MP", "-x c -c x.txt", "-include pre.h -c x.c",
    "-march=x86-64-v2 -m64 -c x.c", "-march=native -c x.c", "-std=c11 -pedantic -c x.c", "-isystem /i -c x.c",
    "-Wp,-MD,x.d -c x.c", "-gsplit-dwarf -c x.c", "--coverage -c x.c", "-fprofile-use -c x.c",
    "-ffile-prefix-map=/w=. -c x.c", "-c x.S", "-c x.s", "-c x.i", "--sysroot=/s -c x.c", "-Wa,--noexecstack -c x.c",
    "-fopt-info-vec -c x.c", "-fdiagnostics-format=json -c x.c",
])
def test_cacheable(args: str) -> None:
    assert isinstance(classify(args.split(), "/w"), Compile)


@pytest.mark.parametrize(("args", "reason"), [
    ("x.c", "not a compile (-c)"), ("-c a.c b.c", "several sources"), ("-c", "no source file"),
    ("-E x.c", "preprocessing only (-E)"), ("-M x.c", "-M (dependencies only)"), ("-c - -x c", "stdin source"),
    ("-c x.c -o -", "output to stdout"), ("-S x.c", "assembly output (-S)"), ("-c x.c -save-temps", "-save-temps"),
    ("-c x.c -fprofile-generate", "-fprofile-generate"), ("-c x.c -fprofile-use=dir", "-fprofile-use=PATH"),
    ("-c x.c --frobnicate", "unknown option"), ("-c x.c -v", "-v (verbose)"), ("-c x.o", "not a source file"),
    ("-c x.h", "not a source file"), ("-x c-header -c x.h", "unsupported language"), ("-c x.c -MG", "-MG"),
    ("-c x.c -fdump-tree-all", "dump files"), ("-c x.c -Wa,-adhln=x.lst", "assembler listing or dependency file"),
    ("-c x.c -B/opt/bin", "-B (tool prefix)"), ("-c x.c -Xclang -foo", "-Xclang"), ("-c x.c -o", "missing argument"),
    ("-c x.c -o a.o -o b.o", "several -o"), ("-c x.c -Wp,-MM", "dependency option in -Wp"),
    ("-c x.c -fopt-info-vec-all=v.txt", "-fopt-info=FILE"), ("-c x.c -fopt-info=o.txt", "-fopt-info=FILE"),
    ("-c x.c -fdiagnostics-format=sarif-file", "diagnostics to a file"),
    ("-c x.c -fdiagnostics-add-output=sarif", "diagnostics to a file"), ("-c x.c -ftime-trace", "-ftime-trace"),
    *((f"-c x.c {o}", "an input file no dependency file names") for o in (  # clang's
        "-fprofile-list=l.txt", "-fprofile-remapping-file=r.txt", "-fsanitize-coverage-allowlist=a.txt",
        "-fsanitize-coverage-ignorelist=i.txt", "-fxray-attr-list=x.txt", "-fxray-always-instrument=x.txt",
        "-fxray-never-instrument=x.txt", "-fthinlto-index=x.thinlto.bc", "-fbasic-block-sections=list=b.txt",
        "-fmemory-profile-use=m.profdata", "-fpass-plugin=p.so")),
    ("-c x.c -fproc-stat-report=s.csv", "-fproc-stat-report"),
])
def test_uncacheable(args: str, reason: str) -> None:
    c = classify(args.split(), "/w")
    assert isinstance(c, Uncacheable) and c.reason == reason, c


def test_outputs_and_inputs_follow_gcc() -> None:
    """gcc's names: -MD without -MF writes the output's stem + .d; -gsplit-dwarf and --coverage add .dwo and
    .gcno beside the object; -fprofile-use reads the stem's .gcda; without -o the object is the source's stem."""
    c = compile_of("-c src/x.c")
    assert (c.output, c.dep_file) == ("x.o", None)
    c = compile_of("-c src/x.c -o out/y.o -MD -gsplit-dwarf --coverage -fprofile-use")
    assert (c.dep_file, c.dep_system) == ("out/y.d", True)
    assert c.extra_outputs == {"dwo": "out/y.dwo", "gcno": "out/y.gcno"} and c.extra_inputs == ["out/y.gcda"]
    assert c.coverage and c.debug  # -gsplit-dwarf records the working directory, as -g does
    c = compile_of("-c x.c -MMD -MF deps/x.d")
    assert (c.dep_file, c.dep_system) == ("deps/x.d", False)
    c = compile_of("-c x.c -Wp,-MMD,w.d")
    assert (c.dep_file, c.dep_system) == ("w.d", False)
    assert compile_of("-x c -c x.txt").language == "c" and compile_of("-c x.cc").language == "c++"


def test_preprocessor_arguments_drop_output_and_dependency_options() -> None:
    c = compile_of("-c x.c -o x.o -MD -MF x.d -MT t -MP -Iinc -DX -O2")
    assert c.cpp_args == ["x.c", "-Iinc", "-DX", "-O2"]


def test_debug_level_is_the_last_one() -> None:
    assert compile_of("-g -c x.c").debug and not compile_of("-g -g0 -c x.c").debug
    assert not compile_of("-c x.c").debug and compile_of("-ggdb3 -c x.c").debug


def test_response_files_are_expanded_with_gcc_quoting(tmp_path: Path) -> None:
    (tmp_path / "more.rsp").write_text("-DB='two words' -o\n")
    (tmp_path / "args.rsp").write_text('-c "x.c"\n -DA=1 @more.rsp\n')
    c = compile_of("@args.rsp out.o", str(tmp_path))
    assert c.args == ["-c", "x.c", "-DA=1", "-DB=two words", "-o", "out.o"] and c.output == "out.o"
    assert split_response("a 'b c' \"d\\\"e\" f\\ g") == ["a", "b c", 'd"e', "f g"]
    missing = classify(["@nope.rsp"], str(tmp_path))
    assert isinstance(missing, Uncacheable) and missing.reason == "unreadable response file"


def test_base_dir_paths_are_relative_to_the_working_directory_on_the_text() -> None:
    assert relative("/b/x/src/../inc/a.h", "/b/x/build") == "../src/../inc/a.h"
    assert relative("/b/x/build", "/b/x/build") == "." and relative("/b/x/", "/b/x/build") == "../"
    for path in ("/b/x/src/a.c", "/b/x", "/b/x/", "/usr/include/stdio.h", "/b/x/build"):
        assert absolute(relative(path, "/b/x/build"), "/b/x/build") == path
    assert absolute("../../../x", "/b/c") is None
    assert normalise("/b/x/a.c", "/b/x/build", "/b") == MARK + "../a.c"
    assert normalise("/usr/a.h", "/b/x/build", "/b") == "/usr/a.h" and normalise("a.c", "/b/x", "/b") == "a.c"
    assert localise(MARK + "../a.c", "/b/y/build") == "/b/y/a.c"
    assert not usable("/b", "/b/my checkout") and not usable(None, "/b/x") and usable("/b", "/b/x")


def test_dependency_file_is_rewritten_to_the_other_checkout() -> None:
    text = ("/b/one/build/a.o: /b/one/src/a.c ../inc/my\\ h.h /usr/include/stdio.h \\\n"
            " /b/one/inc/x\\#y.h\n/b/one/inc/x\\#y.h:\n")
    assert prerequisites(text) == ["/b/one/src/a.c", "../inc/my h.h", "/usr/include/stdio.h", "/b/one/inc/x#y.h"]
    portable = to_portable(text, "/b/one/build", "/b")
    assert "/b/one" not in portable
    assert from_portable(portable, "/b/two/build") == text.replace("/b/one/", "/b/two/")
    assert from_portable(portable, "/") is None  # climbs above the root: not restorable here


def test_working_directory_in_the_key_only_when_the_object_records_it() -> None:
    assert cwd_reason(compile_of("-c x.c"), "/b/x", "/b") is None
    assert cwd_reason(compile_of("-g -c x.c"), "/b/x", "/b") is not None
    assert cwd_reason(compile_of("-g -ffile-prefix-map=/b/x=. -c x.c"), "/b/x", "/b") is None
    assert cwd_reason(compile_of("-g -fmacro-prefix-map=/b/x=. -c x.c"), "/b/x", "/b") is not None
    assert cwd_reason(compile_of("--coverage -c x.c"), "/b/x", "/b") is not None
    # an absolute path under the base directory reaches __FILE__ unless a map covers it
    assert cwd_reason(compile_of("-c /b/x/a.c"), "/b/x", "/b") is not None
    assert cwd_reason(compile_of("-c /b/x/a.c -ffile-prefix-map=/b/x=."), "/b/x", "/b") is None
    assert cwd_reason(compile_of("-c /b/x/a.c"), "/b/x", None) is None  # no rewriting: the path is in the key
    assert cwd_reason(compile_of("-c /b/x/a.c -ffile-prefix-map=/b/x=. -frecord-gcc-switches"), "/b/x", "/b")
    assert cwd_reason(compile_of("-c a.c -o /b/x/a.o"), "/b/x", "/b") is None
    assert cwd_reason(compile_of("-g -gsplit-dwarf -ffile-prefix-map=/b/x=. -c a.c -o /b/x/a.o"), "/b/x", "/b")


def test_key_changes_are_named() -> None:
    before = ["compiler a", "arg -c", "arg -O2", "input x.c 1", "env LANG=C"]
    assert key_change(before, ["compiler b", *before[1:]]) == "the compiler changed"
    assert key_change(before, [*before[:3], "input x.c 2", "env LANG=C"]) == "x.c changed"
    assert key_change(before, [*before[:4], "env LANG=de_DE"]) == "environment LANG changed"
    assert key_change(before, ["compiler a", "arg -c", "arg -O0", *before[3:]]) == "arguments differ: -'-O2', +'-O0'"
    assert key_change(before, [*before, "mapped /src/one/build"]) == \
        "a path the object records changed (what -ffile-prefix-map leaves of it)"
    assert key_change(before, list(before)) is None


@pytest.mark.parametrize(("args", "expected"), [
    ("-o app a.o b.o -L. -lfoo", ("app", ["a.o", "b.o"])), ("a.o", ("a.out", ["a.o"])),
    ("-shared -o libx.so -Wl,-soname,libx.so x.o", ("libx.so", ["x.o"])), ("-oapp a.o -T s.ld", ("app", ["a.o", "s.ld"])),
])
def test_link_cacheable(args: str, expected: tuple[str, list[str]]) -> None:
    link = classify_link(args.split(), "/w")
    assert isinstance(link, Link) and (link.output, link.inputs) == expected


@pytest.mark.parametrize("args", ["-c x.c", "-o app x.c", "-o app a.o -Wl,-Map=app.map", "-o app a.o -Wl,--trace",
                                  "-o app a.o -Xlinker --dependency-file=x", "-o app a.o -v", "-o app -"])
def test_link_uncacheable(args: str) -> None:
    assert isinstance(classify_link(args.split(), "/w"), Uncacheable)
