"""gRPC server reflection under both of its names, v1 and v1alpha.

grpcio ships only ``grpc.reflection.v1alpha``, while a client may ask for
``grpc.reflection.v1`` alone (``buf curl --reflect-protocol grpc-v1``). The
two versions have the same messages with the same field numbers, so the
v1alpha servicer serves both. The v1
descriptors are the v1alpha ones under the v1 package, so that reflection
can describe itself under either name.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
_V1_FILE_NAME = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Register reflection, v1 and v1alpha, on ``server``, listing
    ``service_names`` and itself."""
    _add_v1_descriptors(descriptor_pool.Default())
    names = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {_METHOD: v1_handler}),)
    )


def _add_v1_descriptors(pool: descriptor_pool.DescriptorPool) -> None:
    """Add the v1 file to ``pool`` once, built from v1alpha's file under the v1
    package."""
    try:
        pool.FindFileByName(_V1_FILE_NAME)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old_prefix = f".{file.package}."
    file.name = _V1_FILE_NAME
    file.package = V1_PACKAGE

    def renamed(type_name: str) -> str:
        if type_name.startswith(old_prefix):
            return f".{V1_PACKAGE}.{type_name.removeprefix(old_prefix)}"
        return type_name

    messages = list(file.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            if field.type_name:
                field.type_name = renamed(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool.Add(file)
