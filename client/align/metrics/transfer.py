"""Transfer of a THINGS-trained linear transform to another dataset (METHODS.md section 4).

``apply_transform`` maps features with the transform's OWN (training-set) mean and std:
``((X - mean) / std) @ W + b``, rows optionally L2-normalised. ``transfer_rsa`` runs RSA
(section 5) before and after, side by side. The transform comes from a fitted
``TripletProbe`` (its ``weights_``, ``bias_``, ``mean_``, ``std_``), a ``transform.npz``
path (thingsvision format: keys ``weights``, ``mean``, ``std``, optional ``bias``) or a
dict of those arrays. numpy only: no torch here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..digest import digest_array, digest_json
from ..errors import DataMissingError, InvalidInputError, NumericalError
from ..results import Result
from .rsa import RSAResult, rsa

TRANSFORM_KEYS = ("weights", "mean", "std")


@dataclass(frozen=True)
class LinearTransform:
    """The arrays of a transform, validated: weights (p, k), bias (k,) or None, and the
    global scalar mean and std of the training features."""

    weights: np.ndarray
    bias: np.ndarray | None
    mean: float
    std: float
    source: str = ""

    @property
    def digest(self) -> str:
        """sha256 over the arrays (not their origin): equal transforms, equal digests."""
        return digest_json(
            {
                "weights": digest_array(self.weights),
                "bias": None if self.bias is None else digest_array(self.bias),
                "mean": self.mean,
                "std": self.std,
            }
        )


@dataclass
class TransferResult(Result):
    """RSA with the raw features (``before``) and the transformed ones (``after``), in
    the same normalisation (with ``normalize`` both have L2-normalised rows).

    ``delta`` = after.score - before.score; ``delta_ci`` its paired percentile interval
    (both RDMs rebuilt from the same stimulus resamples; subjects fixed).
    """

    before: RSAResult
    after: RSAResult
    delta: float
    normalize: bool
    transform_digest: str
    transform_shape: tuple[int, int]
    transform_source: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    delta_ci: tuple[float, float] | None = None


def _scalar(value: Any, field_name: str) -> float:
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_):
        raise InvalidInputError(field_name, f"has shape {arr.shape} ({arr.dtype})", "a scalar")
    out = float(arr.reshape(()))
    if not math.isfinite(out):
        raise InvalidInputError(field_name, f"is {out}", "a finite number")
    return out


def transform_from_arrays(data: dict[str, Any], where: str) -> LinearTransform:
    """Validate the arrays of a transform (``where`` names their origin in errors)."""
    missing = [k for k in TRANSFORM_KEYS if k not in data or data[k] is None]
    if missing:
        raise InvalidInputError(
            where,
            f"has no {', '.join(repr(k) for k in missing)} (keys: {sorted(data)})",
            "keys weights (p, p), mean and std (scalars), optionally bias (p,)",
        )
    weights = np.asarray(data["weights"])
    if weights.ndim != 2 or not np.issubdtype(weights.dtype, np.number):
        raise InvalidInputError(
            f"{where}:weights", f"has shape {weights.shape} ({weights.dtype})", "a (p, k) matrix"
        )
    weights = weights.astype(np.float64)
    if not np.isfinite(weights).all():
        raise NumericalError(f"{where}:weights: holds NaN or infinity")
    bias = data.get("bias")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (weights.shape[1],) or not np.issubdtype(bias.dtype, np.number):
            raise InvalidInputError(
                f"{where}:bias", f"has shape {bias.shape}", f"({weights.shape[1]},)"
            )
        bias = bias.astype(np.float64)
        if not np.isfinite(bias).all():
            raise NumericalError(f"{where}:bias: holds NaN or infinity")
    mean = _scalar(data["mean"], f"{where}:mean")
    std = _scalar(data["std"], f"{where}:std")
    if std <= 0:
        raise InvalidInputError(f"{where}:std", f"is {std}", "a positive number")
    return LinearTransform(weights, bias, mean, std, source=where)


def load_transform(transform: Any) -> LinearTransform:
    """A :class:`LinearTransform` from a fitted probe, a ``.npz`` path or a dict."""
    if isinstance(transform, LinearTransform):
        return transform
    if isinstance(transform, (str, os.PathLike)):
        return transform_from_arrays(read_transform_file(transform), str(transform))
    if isinstance(transform, dict):
        return transform_from_arrays(dict(transform), "transform")
    if hasattr(transform, "weights_"):
        data = {
            "weights": getattr(transform, "weights_", None),
            "bias": getattr(transform, "bias_", None),
            "mean": getattr(transform, "mean_", None),
            "std": getattr(transform, "std_", None),
        }
        return transform_from_arrays(data, type(transform).__name__)
    raise InvalidInputError(
        "transform",
        f"is a {type(transform).__name__}",
        "a fitted TripletProbe, a transform.npz path, or a dict with weights, mean, std",
    )


def read_transform_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of a ``transform.npz`` (not validated: see :func:`load_transform`)."""
    path = Path(path)
    if not path.is_file():
        raise DataMissingError(
            f"{path}: no such transform file (expected a transform.npz with keys "
            "weights, mean, std and optionally bias)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            str(path), f"is not a readable .npz file ({exc})", "a transform.npz"
        ) from exc


def save_transform(
    transform: Any, path: str | os.PathLike[str], extra: dict[str, np.ndarray] | None = None
) -> Path:
    """Write ``transform`` (probe, LinearTransform, dict or .npz path) as the
    ``transform.npz`` thingsvision reads: ``weights`` and ``bias`` (when there is one)
    float32, ``mean``/``std`` float64 scalars, plus any ``extra`` arrays (ignored by
    thingsvision). Returns the path."""
    t = load_transform(transform)
    arrays: dict[str, np.ndarray] = {
        "weights": t.weights.astype(np.float32),
        "mean": np.asarray(t.mean, dtype=np.float64),
        "std": np.asarray(t.std, dtype=np.float64),
    }
    if t.bias is not None:
        arrays["bias"] = t.bias.astype(np.float32)
    arrays.update(extra or {})
    path = Path(path)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


def apply_transform(X: Any, transform: Any, normalize: bool = False) -> np.ndarray:
    """``((X - mean) / std) @ W + b`` with the transform's training mean/std.

    Rows are L2-normalised when ``normalize``. All-NaN rows (missing stimuli) stay
    all-NaN; any other NaN/inf raises. Returns float64 (n, k).
    """
    t = load_transform(transform)
    arr = np.asarray(X)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InvalidInputError("features", f"has shape {arr.shape} ({arr.dtype})", "(n, p)")
    p = t.weights.shape[0]
    if arr.shape[1] != p:
        raise InvalidInputError(
            "features",
            f"has {arr.shape[1]} columns but the transform's weights are {t.weights.shape}",
            f"{p} columns, the features the transform was trained on",
        )
    Xf = arr.astype(np.float64)
    missing = np.isnan(Xf).all(axis=1)
    present = ~missing
    if not np.isfinite(Xf[present]).all():
        row = int(np.flatnonzero(present & ~np.isfinite(Xf).all(axis=1))[0])
        raise NumericalError(
            f"features: row {row} has NaN or infinite values; only all-NaN rows (missing "
            "stimuli) are allowed"
        )
    E = np.full((Xf.shape[0], t.weights.shape[1]), np.nan)
    Z = ((Xf[present] - t.mean) / t.std) @ t.weights
    if t.bias is not None:
        Z += t.bias
    if normalize:
        norms = np.linalg.norm(Z, axis=1)
        if (norms == 0).any():
            row = int(np.flatnonzero(present)[np.flatnonzero(norms == 0)[0]])
            raise NumericalError(
                f"features: row {row} maps to the zero vector; it cannot be L2-normalised"
            )
        Z /= norms[:, None]
    if not np.isfinite(Z).all():
        raise NumericalError("transformed features hold NaN or infinity; not scoring them")
    E[present] = Z
    return E


def l2_normalize_rows(X: Any) -> np.ndarray:
    """Rows scaled to unit length (all-NaN rows stay all-NaN; a zero row raises)."""
    Xf = np.asarray(X, dtype=np.float64)
    present = ~np.isnan(Xf).all(axis=1)
    norms = np.linalg.norm(Xf[present], axis=1)
    if (norms == 0).any():
        row = int(np.flatnonzero(present)[np.flatnonzero(norms == 0)[0]])
        raise NumericalError(f"features: row {row} is the zero vector; it cannot be L2-normalised")
    out = Xf.copy()
    out[present] = Xf[present] / norms[:, None]
    return out


def transfer_rsa(
    X: Any,
    matrices: Any,
    matrix_kind: str,
    transform: Any,
    normalize: bool = False,
    **rsa_options: Any,
) -> TransferResult:
    """RSA of ``X`` and of ``apply_transform(X, transform, normalize)`` against the same
    human matrices, with the same options (method, rdm_metric, n_bootstrap, seed, ...).

    Before and after are in the same normalisation: with ``normalize`` the raw rows are
    L2-normalised too. ``delta`` = after.score - before.score with a paired
    stimulus-bootstrap interval ``delta_ci`` (same resamples for both)."""
    from .rsa import paired_rsa_delta

    t = load_transform(transform)
    X_before = l2_normalize_rows(X) if normalize else X
    X_after = apply_transform(X, t, normalize=normalize)
    before = rsa(X_before, matrices, matrix_kind, **rsa_options)
    after = rsa(X_after, matrices, matrix_kind, **rsa_options)
    paired_keys = ("method", "rdm_metric", "n_bootstrap", "confidence", "seed")
    paired = paired_rsa_delta(
        X_before,
        X_after,
        matrices,
        matrix_kind,
        **{k: v for k, v in rsa_options.items() if k in paired_keys},
    )
    return TransferResult(
        before=before,
        after=after,
        delta=after.score - before.score,
        normalize=bool(normalize),
        transform_digest=t.digest,
        transform_shape=(int(t.weights.shape[0]), int(t.weights.shape[1])),
        transform_source=t.source,
        options={**rsa_options, "before": "L2-normalised rows" if normalize else "raw rows"},
        delta_ci=paired.ci_delta,
    )


def target_objects(target_ids: Any, things_ids: Any) -> np.ndarray:
    """Indices (into the THINGS objects) of a target dataset's stimuli that ARE THINGS
    objects (matched by id, e.g. things48's uniqueIDs); empty when none are."""
    index = {str(sid): k for k, sid in enumerate(things_ids)}
    return np.asarray(
        sorted({index[str(t)] for t in target_ids if str(t) in index}), dtype=np.int64
    )


def triplets_without(triplets: Any, objects: Any) -> np.ndarray:
    """``(m,)`` bool: the triplets that touch none of ``objects`` (the ones a transform
    meant for a target over those objects may be fitted on)."""
    T = np.asarray(triplets, dtype=np.int64)
    excluded = np.asarray(objects, dtype=np.int64)
    if excluded.size == 0:
        return np.ones(T.shape[0], dtype=bool)
    return np.asarray(~np.isin(T, excluded).any(axis=1), dtype=bool)
