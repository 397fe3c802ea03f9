"""The exceptions `align` raises. One small hierarchy, mapped once to gRPC status codes
by the services (see ``align_services.evaluation``): every error names what was wrong
and what was expected, so a user can fix the input without reading our code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
