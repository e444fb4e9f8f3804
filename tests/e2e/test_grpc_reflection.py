"""Every gRPC server lists its services through reflection and reports health."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from bulkhead.devstack import Stack

STANDARD_SERVICES = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
EXPECTED = {
    "chat_service": STANDARD_SERVICES
    | {"chat.v1.ChatService", "chat.v1.RunService", "chat.v1.AuthService"},
    "agent_service": STANDARD_SERVICES,
    "executor_service": STANDARD_SERVICES,
}


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_reflection_lists_services(stack: Stack, service: str) -> None:
    with grpc.insecure_channel(stack.address_of(service)) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())

    assert services == EXPECTED[service]


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_health_check_is_serving(stack: Stack, service: str) -> None:
    with grpc.insecure_channel(stack.address_of(service)) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )

    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_health_list_names_services(stack: Stack, service: str) -> None:
    with grpc.insecure_channel(stack.address_of(service)) as channel:
        response = health_pb2_grpc.HealthStub(channel).List(
            health_pb2.HealthListRequest(), timeout=5
        )

    assert "" in response.statuses
    assert response.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    # Each of the service's own APIs is listed with the server's status.
    own = EXPECTED[service] - STANDARD_SERVICES
    assert own <= set(response.statuses)


def test_reflection_describes_post_message(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address_of("chat_service")) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        file = database.FindFileContainingSymbol("chat.v1.ChatService")

    assert file.package == "chat.v1"
    methods = {m.name for s in file.service for m in s.method}
    assert {"PostMessage", "GetRun", "WatchRun", "CancelRun", "RetryRun"} <= methods


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_reflection_v1_lists_and_describes(stack: Stack, service: str) -> None:
    # v1 has v1alpha's messages and field numbers, so its classes encode v1.
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    ]
    with grpc.insecure_channel(stack.address_of(service)) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, described = list(call(iter(requests), timeout=5))

    names = {s.name for s in listed.list_services_response.service}
    assert names == EXPECTED[service]
    file = descriptor_pb2.FileDescriptorProto.FromString(
        described.file_descriptor_response.file_descriptor_proto[0]
    )
    assert file.package == "grpc.reflection.v1"
    assert [s.name for s in file.service] == ["ServerReflection"]
    method = file.service[0].method[0]
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
