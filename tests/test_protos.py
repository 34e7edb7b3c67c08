"""The generated REAPI subset matches the published API on the wire: names, field numbers, services."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor

from gaffer.protos import (
    bytestream_pb2,
    bytestream_pb2_grpc,
    execution_service_pb2,
    remote_execution_pb2_grpc,
    semver_pb2,
)
from gaffer.protos import remote_execution_pb2 as re_pb2
from tests.support import REPO

# (message full name, field name, field number) as published in bazelbuild/remote-apis and googleapis.
PUBLISHED_FIELDS = [
    ("build.bazel.remote.execution.v2.Digest", "hash", 1),
    ("build.bazel.remote.execution.v2.Digest", "size_bytes", 2),
    ("build.bazel.remote.execution.v2.Action", "command_digest", 1),
    ("build.bazel.remote.execution.v2.Action", "input_root_digest", 2),
    ("build.bazel.remote.execution.v2.Action", "timeout", 6),
    ("build.bazel.remote.execution.v2.Action", "do_not_cache", 7),
    ("build.bazel.remote.execution.v2.Action", "salt", 9),
    ("build.bazel.remote.execution.v2.Action", "platform", 10),
    ("build.bazel.remote.execution.v2.Command", "arguments", 1),
    ("build.bazel.remote.execution.v2.Command", "environment_variables", 2),
    ("build.bazel.remote.execution.v2.Command", "working_directory", 6),
    ("build.bazel.remote.execution.v2.Command", "output_paths", 7),
    ("build.bazel.remote.execution.v2.FileNode", "is_executable", 4),
    ("build.bazel.remote.execution.v2.FileNode", "node_properties", 6),
    ("build.bazel.remote.execution.v2.Directory", "symlinks", 3),
    ("build.bazel.remote.execution.v2.Directory", "node_properties", 5),
    ("build.bazel.remote.execution.v2.ActionResult", "output_files", 2),
    ("build.bazel.remote.execution.v2.ActionResult", "output_directories", 3),
    ("build.bazel.remote.execution.v2.ActionResult", "exit_code", 4),
    ("build.bazel.remote.execution.v2.ActionResult", "stdout_digest", 6),
    ("build.bazel.remote.execution.v2.ActionResult", "stderr_digest", 8),
    ("build.bazel.remote.execution.v2.ActionResult", "execution_metadata", 9),
    ("build.bazel.remote.execution.v2.ActionResult", "output_symlinks", 12),
    ("build.bazel.remote.execution.v2.OutputFile", "contents", 5),
    ("build.bazel.remote.execution.v2.OutputFile", "node_properties", 7),
    ("build.bazel.remote.execution.v2.NodeProperties", "unix_mode", 3),
    ("build.bazel.remote.execution.v2.Tree", "root", 1),
    ("build.bazel.remote.execution.v2.Tree", "children", 2),
    ("build.bazel.remote.execution.v2.OutputDirectory", "tree_digest", 3),
    ("build.bazel.remote.execution.v2.OutputDirectory", "root_directory_digest", 5),
    ("build.bazel.remote.execution.v2.ExecutedActionMetadata", "virtual_execution_duration", 12),
    ("build.bazel.remote.execution.v2.ExecuteRequest", "skip_cache_lookup", 3),
    ("build.bazel.remote.execution.v2.ExecuteRequest", "action_digest", 6),
    ("build.bazel.remote.execution.v2.FindMissingBlobsResponse", "missing_blob_digests", 2),
    ("build.bazel.remote.execution.v2.BatchUpdateBlobsRequest", "digest_function", 5),
    ("build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response", "status", 3),
    ("build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response", "compressor", 4),
    ("build.bazel.remote.execution.v2.CacheCapabilities", "max_batch_total_size_bytes", 4),
    ("build.bazel.remote.execution.v2.CacheCapabilities", "symlink_absolute_path_strategy", 5),
    ("build.bazel.remote.execution.v2.ServerCapabilities", "high_api_version", 5),
    ("build.bazel.remote.execution.v2.RequestMetadata", "tool_invocation_id", 3),
    ("build.bazel.semver.SemVer", "prerelease", 4),
    ("google.bytestream.ReadResponse", "data", 10),
    ("google.bytestream.WriteRequest", "finish_write", 3),
    ("google.bytestream.WriteRequest", "data", 10),
    ("google.bytestream.QueryWriteStatusResponse", "complete", 2),
]


def _message(full_name: str) -> Descriptor:
    return descriptor_pool.Default().FindMessageTypeByName(full_name)


@pytest.mark.parametrize(("message", "field", "number"), PUBLISHED_FIELDS)
def test_field_numbers_match_published_api(message: str, field: str, number: int) -> None:
    assert _message(message).fields_by_name[field].number == number


def test_services_have_published_full_names_and_methods() -> None:
    services = {
        s.full_name: sorted(m.name for m in s.methods)
        for module in (re_pb2, execution_service_pb2, bytestream_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "build.bazel.remote.execution.v2.Execution": ["Execute", "WaitExecution"],
        "build.bazel.remote.execution.v2.ActionCache": ["GetActionResult", "UpdateActionResult"],
        "build.bazel.remote.execution.v2.ContentAddressableStorage": [
            "BatchReadBlobs", "BatchUpdateBlobs", "FindMissingBlobs", "GetTree",
        ],
        "build.bazel.remote.execution.v2.Capabilities": ["GetCapabilities"],
        "google.bytestream.ByteStream": ["QueryWriteStatus", "Read", "Write"],
    }
    execute = execution_service_pb2.DESCRIPTOR.services_by_name["Execution"].methods_by_name["Execute"]
    assert execute.output_type.full_name == "google.longrunning.Operation"
    assert hasattr(remote_execution_pb2_grpc, "ContentAddressableStorageStub")
    assert hasattr(bytestream_pb2_grpc, "ByteStreamServicer")


def test_cache_messages_load_without_grpc() -> None:
    """remote_execution_pb2 sits on the CLI path: google.longrunning (which imports grpc) must stay out of it."""
    code = "import sys, gaffer.protos.remote_execution_pb2; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_descriptor_file_names_stay_canonical() -> None:
    assert re_pb2.DESCRIPTOR.name == "build/bazel/remote/execution/v2/remote_execution.proto"
    assert semver_pb2.DESCRIPTOR.name == "build/bazel/semver/semver.proto"
    assert bytestream_pb2.DESCRIPTOR.name == "google/bytestream/bytestream.proto"


def test_enum_values_match_published_api() -> None:
    assert re_pb2.DigestFunction.SHA256 == 1
    assert re_pb2.DigestFunction.BLAKE3 == 9
    assert re_pb2.SymlinkAbsolutePathStrategy.ALLOWED == 2
    assert re_pb2.Compressor.ZSTD == 1
    assert re_pb2.ExecutionStage.COMPLETED == 4


def test_known_encoding_of_a_digest() -> None:
    # field 1 (string, wire type 2) then field 2 (varint): 0x0a len "ab" 0x10 size
    digest = re_pb2.Digest(hash="ab", size_bytes=300)
    assert digest.SerializeToString(deterministic=True) == b"\x0a\x02ab\x10\xac\x02"


def test_deterministic_round_trip_of_an_action_result() -> None:
    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="out/a.o", digest=re_pb2.Digest(hash="0" * 64, size_bytes=3))],
        exit_code=2,
        stdout_digest=re_pb2.Digest(hash="1" * 64, size_bytes=5),
        execution_metadata=re_pb2.ExecutedActionMetadata(worker="w1"),
    )
    response = re_pb2.ExecuteResponse(result=result, server_logs={"b": re_pb2.LogFile(), "a": re_pb2.LogFile()})
    encoded = response.SerializeToString(deterministic=True)
    decoded = re_pb2.ExecuteResponse.FromString(encoded)
    assert decoded == response
    assert decoded.SerializeToString(deterministic=True) == encoded


def test_generated_code_is_up_to_date() -> None:
    """Regenerating from the committed .proto files reproduces the committed modules."""
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
