"""Map align.errors to gRPC status codes, once, for every RPC.

The status message is the exception's own text (it names the field and what was
expected). Trailing metadata ``align-error`` carries the same error as JSON, so that
``align.remote`` raises the very same exception class on the client side.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import grpc
from align.errors import (
    AlignError,
    DataMissingError,
    InvalidInputError,
    NotFoundError,
    NumericalError,
    ResourceLimitError,
)

ERROR_METADATA_KEY = "align-error"


class EmbedderUnavailableError(AlignError, ConnectionError):
    """The embedding service could not be reached. Maps to UNAVAILABLE (retry later)."""

    def __init__(self, target: str, detail: str) -> None:
        self.target = target
        super().__init__(
            f"embedding service at {target} is unavailable ({detail}); "
            "retry in a few seconds, and check that the Ray Serve application 'embedding' "
            "is running"
        )


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, InvalidInputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, DataMissingError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, ResourceLimitError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, NumericalError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, EmbedderUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an align error (what the client needs to rebuild it)."""
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InvalidInputError):
        out.update(field=exc.field, problem=exc.problem, expected=exc.expected)
    elif isinstance(exc, NotFoundError):
        out.update(kind=exc.kind, name=exc.name, suggestions=list(exc.suggestions))
    return out


def describe(
    exc: BaseException, logger: logging.Logger, method: str
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Status code, message and trailing metadata for an exception raised by a handler.

    Unexpected exceptions are logged with a traceback under an incident id that the
    client sees; their text never leaks to the client.
    """
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        incident = uuid.uuid4().hex[:12]
        logger.exception("internal error", extra={"method": method, "incident": incident})
        message = f"internal error in {method} (incident {incident}); see the server log"
        return code, message, ()
    payload = json.dumps(error_payload(exc))
    return code, str(exc), ((ERROR_METADATA_KEY, payload),)
