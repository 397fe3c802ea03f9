"""align: how well do a network's representations agree with human similarity judgments?

Quick start::

    import align
    report = align.score("timm/tf_efficientnet_lite0", "things")
    print(report.to_frame())
"""

from __future__ import annotations

import importlib
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
    "Client",
    "DataMissingError",
    "InvalidInputError",
    "NotFoundError",
    "NumericalError",
    "Report",
    "ResourceLimitError",
    "__version__",
    "connect",
    "evaluate",
    "list_datasets",
    "load_dataset",
    "score",
    "score_many",
]

# Public names that live in submodules, imported on first use so that `import align` is
# fast and works where only the science core is installed (no torch, ray or grpc).
_LAZY = {
    "score": "align.api",
    "score_many": "align.api",
    "connect": "align.api",
    "Client": "align.api",
    "Report": "align.report",
    "evaluate": "align.evaluation",
    "load_dataset": "align.datasets",
    "list_datasets": "align.datasets",
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import Client, connect, score, score_many
    from .datasets import list_datasets, load_dataset
    from .evaluation import evaluate
    from .report import Report


def __getattr__(name: str) -> Any:
    # Heavy parts (torch, the model registry) load on first use, so `import align` is fast
    # and works where only the science core is installed.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'align' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
