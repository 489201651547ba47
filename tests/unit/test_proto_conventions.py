"""The wire contract keeps its conventions: v1 packages, UNSPECIFIED zeros, VerbNoun RPCs, comments."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parents[2] / "protos"
PROTO_FILES = sorted(PROTOS.rglob("*.proto"))

# Paths inside FileDescriptorProto (descriptor.proto field numbers).
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, ENUM_VALUE, METHOD = 2, 2, 2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
    ]
    assert protoc.main([*args, *map(str, PROTO_FILES)]) == 0
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


def comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): location.leading_comments + location.trailing_comments
        for location in file.source_code_info.location
    }


def elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every message, field, enum, enum value, service and RPC with its source path."""
    for m, message in enumerate(file.message_type):
        yield f"message {message.name}", (MESSAGE, m)
        for f, field in enumerate(message.field):
            yield f"field {message.name}.{field.name}", (MESSAGE, m, FIELD, f)
    for e, enum in enumerate(file.enum_type):
        yield f"enum {enum.name}", (ENUM, e)
        for v, value in enumerate(enum.value):
            yield f"enum value {value.name}", (ENUM, e, ENUM_VALUE, v)
    for s, service in enumerate(file.service):
        yield f"service {service.name}", (SERVICE, s)
        for r, method in enumerate(service.method):
            yield f"rpc {service.name}.{method.name}", (SERVICE, s, METHOD, r)


def test_every_domain_has_a_v1_package_that_mirrors_its_folder(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    assert {file.package for file in files} == {
        "apexrl.common.v1",
        "apexrl.replay.v1",
        "apexrl.learner.v1",
    }
    for file in files:
        assert re.fullmatch(r"apexrl\.[a-z]+\.v\d+", file.package)
        assert str(Path(file.name).parent).replace("/", ".") == file.package


def test_enums_start_with_a_prefixed_unspecified_zero(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    for file in files:
        for enum in file.enum_type:
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
            assert enum.value[0].number == 0
            assert enum.value[0].name == prefix + "UNSPECIFIED"
            assert all(value.name.startswith(prefix) for value in enum.value), enum.name


def test_rpcs_are_verb_noun_with_their_own_request_and_response(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    used: set[str] = set()
    for file in files:
        for service in file.service:
            assert service.name.endswith("Service")
            for method in service.method:
                assert re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+", method.name), method.name
                assert method.input_type == f".{file.package}.{method.name}Request"
                assert method.output_type == f".{file.package}.{method.name}Response"
                assert method.input_type not in used
                assert method.output_type not in used
                used |= {method.input_type, method.output_type}


def test_every_element_is_commented_and_every_rpc_lists_its_status_codes(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    undocumented = []
    for file in files:
        notes = comments(file)
        for name, path in elements(file):
            text = notes.get(path, "").strip()
            # An empty request message documents itself by its RPC's comment.
            empty_message = name.startswith("message ") and not file.message_type[path[1]].field
            if not text and not empty_message:
                undocumented.append(f"{file.name}: {name}")
            if name.startswith("rpc ") and not re.search(r"Errors?:|Always OK", text):
                undocumented.append(f"{file.name}: {name} (no status codes)")
    assert undocumented == [], "\n".join(undocumented)
