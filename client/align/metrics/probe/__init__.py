"""Linear probe of a representation on odd-one-out triplets (METHODS.md section 3).

A probe learns ``W`` (p x p) and optionally ``b`` so that ``E = X' W + b``, with
``X' = (X - mean) / std`` (ONE global scalar mean and std over the whole matrix),
predicts human odd-one-out choices through the dot products ``e_i . e_j`` (cosine when
``normalize=True``). Training minimises the softmax cross-entropy over the three
similarities of a triplet with the human pair ``(a, b)`` as the target, computed as
``logsumexp(s) - s_ab``, plus ``reg * R(W)``.

Numerics: the paper's public code computes ``-log(exp(s_ab) / sum(exp(s)))``; on real
features of large norm the exponentials overflow, the loss turns NaN and its tie rule
then counts every NaN prediction as correct (accuracy 1.0). Here the loss is a
log-softmax and any NaN or infinity in the loss, gradients, weights or predictions
raises :class:`~align.errors.NumericalError`; nothing non-finite is ever scored.

Three modules:

- :mod:`.core`: the optimiser (loss, penalty, L-BFGS and Adam loops) on checked arrays;
- :mod:`.estimator`: :class:`TripletProbe`, a scikit-learn-style estimator (parameters
  from the signature, ``get_params``/``set_params``, :func:`clone`, checks in ``fit``);
- :mod:`.cv`: :func:`cross_validate` (an estimator, an :class:`ObjectKFold` splitter, a
  lambda grid; one clone per lambda and fold; optional training-set hook) and the
  classic :func:`cross_validate_probe` built on it.

Evaluation is object-disjoint (:class:`~align.metrics.splits.ObjectKFold`) and the
regularisation strength is chosen by the lowest mean held-out cross-entropy.

Export format (``TripletProbe.save``): ``transform.npz`` with ``weights`` (p x p
float32), ``bias`` (p,) when the probe has one, and scalar ``mean`` and ``std``. This is
what thingsvision's ``align()``/gLocal transform reads; it applies
``((X - mean) / std) @ weights`` then adds ``bias`` if the key is present (checked
against thingsvision's ``thingsvision/core/alignment/transforms.py``). Extra keys are
ignored there; we add ``align_options`` (a JSON string) so :meth:`TripletProbe.load`
restores ``normalize`` and the other options.
"""

from __future__ import annotations

from ..splits import ObjectKFold
from .cv import (
    LAMBDA_GRID,
    LambdaSearch,
    ProbeResult,
    TrainingSet,
    cross_validate,
    cross_validate_probe,
)
from .estimator import TripletProbe, clone

__all__ = [
    "LAMBDA_GRID",
    "LambdaSearch",
    "ObjectKFold",
    "ProbeResult",
    "TrainingSet",
    "TripletProbe",
    "clone",
    "cross_validate",
    "cross_validate_probe",
]
