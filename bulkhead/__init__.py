"""Code shared by every Bulkhead service: settings, logging, gRPC and NATS helpers.

The generated protobuf modules live in ``bulkhead.proto`` (build output of
``make protos``).
"""
