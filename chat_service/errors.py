"""Domain errors of chat_service and their gRPC status, mapped in one place."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from bulkhead.rpc import FieldViolation, Reason, build_status


class ChatServiceError(Exception):
    """Base error. Subclasses set the gRPC code and the ErrorInfo reason."""

    code = grpc.StatusCode.INTERNAL
    reason = Reason.INTERNAL

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: Mapping[str, str] = metadata

    def to_status(self) -> grpc.Status:
        return build_status(self.code, self.message, self.reason, self.metadata)


class InvalidArgumentError(ChatServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"Invalid {field}: {description}.")
        self.violations = [FieldViolation(field, description)]

    def to_status(self) -> grpc.Status:
        return build_status(self.code, self.message, self.reason, {}, self.violations)


class UnauthenticatedError(ChatServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class NotFoundError(ChatServiceError):
    """A chat or run does not exist or belongs to another user (the two are not distinguished)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.NOT_FOUND

    @classmethod
    def for_resource(cls, resource: str) -> NotFoundError:
        """Build the error for an unknown ``resource``, such as "chat" or "run".

        The gateway returns the message to clients as it is, and it returns
        the same sentence for a malformed id in a path (gateway.deps), so
        that a client cannot tell which check failed.
        """
        return cls(f"The {resource} was not found.")


class IdempotencyKeyReusedError(ChatServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.IDEMPOTENCY_KEY_REUSED


class ChatBusyError(ChatServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.CHAT_BUSY


class RunFinishedError(ChatServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.RUN_FINISHED


class RunNotRetryableError(ChatServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.RUN_NOT_RETRYABLE


class StaleAttemptError(ChatServiceError):
    """A worker reported for an attempt that is no longer the run's current one."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.STALE_ATTEMPT


class RateLimitedError(ChatServiceError):
    """The user exceeded a rate limit. ``retry_after_s`` metadata gives the wait."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.RATE_LIMITED


class DatabaseUnavailableError(ChatServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.DATABASE_UNAVAILABLE
