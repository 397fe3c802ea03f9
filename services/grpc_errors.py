"""Map align.errors to gRPC status codes, once, for every RPC of both services.

Shared by the evaluation service (grpc.aio) and the embedding application's ingress
(Ray Serve's gRPC proxy); the table itself is ``align.errors.STATUS_CODES``, which the
client (``align.remote``) reads too. The status message is the exception's own text (it
names the field and what was expected). Trailing metadata ``align-error`` carries the
same error as JSON, so that ``align.remote`` raises the very same exception class on the
client side.
"""

from __future__ import annotations

import json
import logging
import uuid

import grpc
from align.errors import ERROR_METADATA_KEY, AlignError, error_payload, status_name


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
    """The status code of an exception, from the one table align.errors.STATUS_CODES."""
    name = status_name(exc)
    if name is not None:
        return grpc.StatusCode[name]
    if isinstance(exc, EmbedderUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


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
