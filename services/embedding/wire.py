"""What travels between the ingress and a family replica (a Ray call, not the gRPC wire)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from align.errors import AlignError, error_from_payload, error_payload


@dataclass
class Work:
    """One request's stimuli for one model (the model id travels as multiplexed id).

    ``strict``: a bad stimulus fails the request (InvalidInputError naming
    ``<field>[index]``), as ``EmbeddingModel.embed`` does; otherwise (dataset requests)
    it becomes an all-NaN row, as ``embed_dataset`` does.
    """

    stimuli: list[Any]
    layers: tuple[str, ...]
    batch_size: int | None = None
    strict: bool = True
    field: str = "stimuli"

    def __len__(self) -> int:
        return len(self.stimuli)


@dataclass
class Failure:
    """An align error raised in a replica, carried back as data (not a Ray exception)."""

    type: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, exc: AlignError) -> Failure:
        payload = error_payload(exc)
        return cls(type=type(exc).__name__, message=str(exc), fields=payload)

    def rebuild(self) -> AlignError:
        rebuilt = error_from_payload({**self.fields, "type": self.type}, self.message)
        if rebuilt is not None:
            return rebuilt
        import align.errors as errors

        cls = getattr(errors, self.type, AlignError)
        try:
            return cls(self.message)
        except TypeError:
            return AlignError(self.message)


#: A replica's answer to one Work: features by layer, or the align error it raised.
Outcome = dict[str, np.ndarray] | Failure


def batch_size_of(items: Sequence[Work]) -> int:
    """Stimuli in a batch of requests (``@serve.batch`` counts stimuli, not requests)."""
    return sum(len(w) for w in items)
