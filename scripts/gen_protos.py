#!/usr/bin/env python3
"""Regenerate src/gaffer/protos/*_pb2*.py from the .proto subset under src/gaffer/protos/proto/.

Run with the project venv (it needs grpcio-tools and googleapis-common-protos):
    .venv/bin/python scripts/gen_protos.py           # rewrite the committed modules
    .venv/bin/python scripts/gen_protos.py --check   # exit 1 if they are stale (the tests run this)

The generated modules are flat in gaffer/protos/ and import each other as `from gaffer.protos import ...`,
while their descriptor file names stay canonical (build/bazel/remote/execution/v2/remote_execution.proto...),
so they are wire- and registry-compatible with any other REAPI code in the same process.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "src" / "gaffer" / "protos"
SOURCES = PROTOS / "proto"
# canonical .proto path -> (the flat module it becomes, whether it defines services and so gets a _grpc module)
FILES = {
    "build/bazel/semver/semver.proto": ("semver", False),
    "build/bazel/remote/execution/v2/remote_execution.proto": ("remote_execution", True),
    "build/bazel/remote/execution/v2/execution_service.proto": ("execution_service", True),
    "google/bytestream/bytestream.proto": ("bytestream", True),
    "google/devtools/remoteworkers/v1test2/worker.proto": ("worker", False),
    "google/devtools/remoteworkers/v1test2/bots.proto": ("bots", True),
    "gaffer/worker/v1/inventory.proto": ("inventory", True),
}


def include_dirs(scratch: Path) -> list[Path]:
    """Include paths for the well-known types and googleapis (google.longrunning, google.rpc).

    googleapis-common-protos ships google/longrunning/operations.proto as `operations_proto.proto` (its
    descriptor is still registered as operations.proto); copy it under the canonical name so our import of
    the canonical path resolves to the very descriptor the installed operations_pb2 module registers.
    """
    import grpc_tools
    from google.rpc import status_pb2

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(status_pb2.__file__).parent.parent.parent
    shim = scratch / "include"
    longrunning = shim / "google" / "longrunning"
    longrunning.mkdir(parents=True)
    shutil.copy(googleapis / "google" / "longrunning" / "operations_proto.proto", longrunning / "operations.proto")
    return [SOURCES, shim, googleapis, well_known]


def rewrite_imports(text: str) -> str:
    """`from build.bazel.semver import semver_pb2 as x` -> `from gaffer.protos import semver_pb2 as x`."""
    for proto, (module, _services) in FILES.items():
        package = proto.rsplit("/", 1)[0].replace("/", ".")
        text = re.sub(
            rf"^from {re.escape(package)} import ({module}_pb2\w*)",
            r"from gaffer.protos import \1",
            text,
            flags=re.MULTILINE,
        )
    return text


def generate() -> dict[str, str]:
    """Run protoc; return {flat module file name: its text, imports rewritten}."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        out = scratch / "out"
        out.mkdir()
        args = ["grpc_tools.protoc", *(f"-I{d}" for d in include_dirs(scratch))]
        args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *FILES]
        if protoc.main(args) != 0:
            raise SystemExit("gen_protos: protoc failed")
        modules = {}
        for proto, (module, services) in FILES.items():
            generated = out / Path(proto).parent
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py") if services else ("_pb2.py", "_pb2.pyi"):
                source = generated / f"{module}{suffix}"
                modules[source.name] = rewrite_imports(source.read_text(encoding="utf-8"))
        return modules


def main(argv: list[str]) -> int:
    modules = generate()
    if argv == ["--check"]:
        stale = [name for name, text in modules.items() if not (PROTOS / name).exists()
                 or (PROTOS / name).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"gen_protos: src/gaffer/protos/{name} is stale; run scripts/gen_protos.py", file=sys.stderr)
        return 1 if stale else 0
    if argv:
        print("usage: gen_protos.py [--check]", file=sys.stderr)
        return 2
    for name, text in modules.items():
        (PROTOS / name).write_text(text, encoding="utf-8")
        print(f"wrote src/gaffer/protos/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
