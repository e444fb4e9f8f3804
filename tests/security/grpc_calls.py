"""Every RPC of chat_service, callable with chosen metadata, for the security tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from bulkhead.proto.chat.v1 import auth_service_pb2 as auth_pb
from bulkhead.proto.chat.v1 import auth_service_pb2_grpc as auth_grpc
from bulkhead.proto.chat.v1 import chat_service_pb2 as chat_pb
from bulkhead.proto.chat.v1 import chat_service_pb2_grpc as chat_grpc
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.chat.v1 import run_service_pb2_grpc as run_grpc
from bulkhead.rpc import USER_ID_METADATA, service_metadata

Metadata = tuple[tuple[str, str], ...]


def metadata(token: str = "", user_id: str | None = None) -> Metadata:
    entries = service_metadata(token)
    if user_id is not None:
        entries += ((USER_ID_METADATA, user_id),)
    return entries


def gateway_calls(
    channel: grpc.Channel, run_id: str = "", chat_id: str = ""
) -> dict[str, Callable[[Metadata], Any]]:
    """One call per ChatService and AuthService method; each returns its result."""
    chat = chat_grpc.ChatServiceStub(channel)
    auth = auth_grpc.AuthServiceStub(channel)
    run_id = run_id or str(uuid.uuid4())
    chat_id = chat_id or str(uuid.uuid4())
    return {
        "PostMessage": lambda md: chat.PostMessage(
            chat_pb.PostMessageRequest(content="hello", chat_id=chat_id),
            metadata=md,
            timeout=5,
        ),
        "GetRun": lambda md: chat.GetRun(
            chat_pb.GetRunRequest(run_id=run_id), metadata=md, timeout=5
        ),
        "WaitRun": lambda md: chat.WaitRun(
            chat_pb.WaitRunRequest(run_id=run_id, timeout=Duration(seconds=0)),
            metadata=md,
            timeout=5,
        ),
        "WatchRun": lambda md: list(
            chat.WatchRun(
                chat_pb.WatchRunRequest(run_id=run_id, after_seq=0),
                metadata=md,
                timeout=5,
            )
        ),
        "CancelRun": lambda md: chat.CancelRun(
            chat_pb.CancelRunRequest(run_id=run_id), metadata=md, timeout=5
        ),
        "RetryRun": lambda md: chat.RetryRun(
            chat_pb.RetryRunRequest(run_id=run_id), metadata=md, timeout=5
        ),
        "ListChats": lambda md: chat.ListChats(
            chat_pb.ListChatsRequest(limit=10), metadata=md, timeout=5
        ),
        "ListMessages": lambda md: chat.ListMessages(
            chat_pb.ListMessagesRequest(chat_id=chat_id, limit=10),
            metadata=md,
            timeout=5,
        ),
        "AuthenticateApiKey": lambda md: auth.AuthenticateApiKey(
            auth_pb.AuthenticateApiKeyRequest(api_key="bk_not-a-real-key"),
            metadata=md,
            timeout=5,
        ),
    }


def worker_calls(channel: grpc.Channel) -> dict[str, Callable[[Metadata], Any]]:
    """One call per RunService method, on a run id that does not exist."""
    runs = run_grpc.RunServiceStub(channel)
    run_id = str(uuid.uuid4())
    return {
        "ClaimRun": lambda md: runs.ClaimRun(
            run_pb.ClaimRunRequest(
                run_id=run_id, stage=run_pb.STAGE_AGENT, worker_id="t", delivery=1
            ),
            metadata=md,
            timeout=5,
        ),
        "SubmitPlan": lambda md: runs.SubmitPlan(
            run_pb.SubmitPlanRequest(run_id=run_id, attempt=1), metadata=md, timeout=5
        ),
        "AppendOutput": lambda md: runs.AppendOutput(
            run_pb.AppendOutputRequest(run_id=run_id, attempt=1, batch=1),
            metadata=md,
            timeout=5,
        ),
        "RenewLease": lambda md: runs.RenewLease(
            run_pb.RenewLeaseRequest(run_id=run_id, attempt=1), metadata=md, timeout=5
        ),
        "CompleteRun": lambda md: runs.CompleteRun(
            run_pb.CompleteRunRequest(run_id=run_id, attempt=1),
            metadata=md,
            timeout=5,
        ),
        "FailRun": lambda md: runs.FailRun(
            run_pb.FailRunRequest(run_id=run_id, attempt=1), metadata=md, timeout=5
        ),
        "ReleaseRun": lambda md: runs.ReleaseRun(
            run_pb.ReleaseRunRequest(run_id=run_id, attempt=1), metadata=md, timeout=5
        ),
    }


def status_of(call: Callable[[Metadata], Any], md: Metadata) -> grpc.StatusCode:
    """Run ``call``; return OK or the status code it failed with."""
    try:
        call(md)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
