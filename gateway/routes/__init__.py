"""HTTP routes of the gateway, one module per resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def get_and_head(
    router: APIRouter, path: str, **options: Any
) -> Callable[[Endpoint], Endpoint]:
    """Register the decorated endpoint for GET and HEAD on ``path``.

    HTTP expects HEAD wherever GET works (RFC 9110, section 9.3.2), but a
    FastAPI route accepts only the methods it lists. The HEAD route runs the
    same endpoint, so status, headers and errors are those of GET, and
    uvicorn drops the body of every response to HEAD. An endpoint that
    streams checks ``request.method`` to skip the stream. The HEAD route is
    left out of the OpenAPI document, which would otherwise list each
    operation twice.
    """

    def register(endpoint: Endpoint) -> Endpoint:
        router.get(path, **options)(endpoint)
        # Registered after GET: the Allow header of a 405 lists the methods
        # of the first route that matches the path, and gateway.app adds
        # HEAD where that list has GET.
        router.head(path, include_in_schema=False, **options)(endpoint)
        return endpoint

    return register
