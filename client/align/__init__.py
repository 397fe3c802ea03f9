"""align: how well do a network's representations agree with human similarity judgments?

Quick start::

    import align
    report = align.score("timm/tf_efficientnet_lite0", "things")
    print(report.to_frame())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AlignError,
    DataMissingError,
    InvalidInputError,
    NotFoundError,
    NumericalError,
    ResourceLimitError,
)

__all__ = [
    "AlignError",
    "DataMissingError",
    "InvalidInputError",
    "NotFoundError",
    "NumericalError",
    "ResourceLimitError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    pass


def __getattr__(name: str) -> Any:
    # Heavy parts (torch, the model registry) load on first use, so `import align` is fast
    # and works where only the science core is installed.
    raise AttributeError(f"module 'align' has no attribute {name!r}")
