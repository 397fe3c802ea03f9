"""The exceptions `align` raises. One small hierarchy, mapped once to gRPC status codes
by the services (see ``align_services.evaluation``): every error names what was wrong
and what was expected, so a user can fix the input without reading our code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class AlignError(Exception):
    """Base class of every error `align` raises on purpose."""


class InvalidInputError(AlignError, ValueError):
    """Bad input: names the field (or file and line) and what was expected.

    ``field`` is the argument, file or column at fault; ``expected`` says what would
    have been accepted. Maps to gRPC INVALID_ARGUMENT.
    """

    def __init__(self, field: str, problem: str, expected: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.expected = expected
        message = f"{field}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)


class NotFoundError(AlignError, LookupError):
    """An unknown id (model, dataset, layer, report). Suggests close matches.

    Maps to gRPC NOT_FOUND.
    """

    def __init__(
        self, kind: str, name: str, known: Iterable[str] = (), hint: str | None = None
    ) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
        message = f"unknown {kind} {name!r}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        if hint:
            message += f" {hint}"
        super().__init__(message)

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0])


class DataMissingError(AlignError, FileNotFoundError):
    """A dataset's or model's files are not on this machine: says where we looked,
    where to put them and where to get them. Maps to gRPC FAILED_PRECONDITION."""


class NumericalError(AlignError, FloatingPointError):
    """A NaN or infinity appeared where a number must be finite. We never score NaNs."""


class ResourceLimitError(AlignError):
    """A request exceeds a configured limit (stimuli, bytes). Maps to RESOURCE_EXHAUSTED."""


# ----------------------------------------------------------------------------------------
# The wire form, shared by the services (server side) and align.remote (client side)

#: Trailing gRPC metadata key that carries an error as JSON (see error_payload).
ERROR_METADATA_KEY = "align-error"

#: Each error class and the gRPC status code (by name) it maps to, in the order a status
#: code maps back to a class when the server sent no payload (first match wins).
STATUS_CODES: tuple[tuple[type[AlignError], str], ...] = (
    (InvalidInputError, "INVALID_ARGUMENT"),
    (NotFoundError, "NOT_FOUND"),
    (DataMissingError, "FAILED_PRECONDITION"),
    (ResourceLimitError, "RESOURCE_EXHAUSTED"),
    (NumericalError, "FAILED_PRECONDITION"),
)


def status_name(exc: BaseException) -> str | None:
    """The gRPC status code name of an align error, or None for any other exception."""
    return next((code for cls, code in STATUS_CODES if isinstance(exc, cls)), None)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an align error (what the other side needs to rebuild it)."""
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InvalidInputError):
        out.update(field=exc.field, problem=exc.problem, expected=exc.expected)
    elif isinstance(exc, NotFoundError):
        out.update(kind=exc.kind, name=exc.name, suggestions=list(exc.suggestions))
    return out


def error_from_payload(payload: dict[str, Any], message: str) -> AlignError | None:
    """Rebuild the error of ``error_payload`` (``message``: the exact text to show), or
    None when the payload names no class of STATUS_CODES or lacks the fields it needs."""
    cls = next((c for c, _ in STATUS_CODES if c.__name__ == payload.get("type")), None)
    if cls is InvalidInputError:
        if "field" not in payload:
            return None
        return InvalidInputError(
            payload["field"], payload.get("problem", ""), payload.get("expected")
        )
    if cls is NotFoundError:
        if "kind" not in payload:
            return None
        err = NotFoundError(payload["kind"], payload.get("name", ""))
        err.suggestions = list(payload.get("suggestions", []))
        err.args = (message,)  # the exact message (with its hint)
        return err
    return None if cls is None else cls(message)
