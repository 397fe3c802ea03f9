"""Moving transforms and RDMs between align and other tools.

thingsvision (``extractor.align(features, module_name, alignment_type="gLocal")``) reads
``<root>/<model_name>/<module_name>/transform.npz`` (the gLocal repository's
``transforms/`` tree) with keys ``weights`` (p x k), ``mean`` and ``std`` (scalars) and
an optional ``bias`` (k,), and applies ``((X - mean) / std) @ weights`` then ``+ bias``
when the key is present. :func:`write_thingsvision_transform` writes exactly that
layout (model names with ``/`` become nested folders, as thingsvision's URL join does);
:func:`read_thingsvision_transform` reads it back as a
:class:`~align.metrics.transfer.LinearTransform`, usable with ``apply_transform`` /
``transfer_rsa`` / :meth:`TripletProbe.load`.

rsatoolbox: :func:`to_rsatoolbox` wraps our (n, n) or (s, n, n) matrices into an
``rsatoolbox.rdm.RDMs`` (rsatoolbox is imported only here, and only when called);
:func:`model_rdms` builds one from features with our RDM code; :func:`from_rsatoolbox`
returns the square matrices of an ``RDMs``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataMissingError, InvalidInputError
from .metrics.transfer import LinearTransform, load_transform, save_transform

TRANSFORM_FILE = "transform.npz"
_MEASURES = {"cosine": "1 - cosine", "correlation": "1 - correlation", "euclidean": "euclidean"}


def _check_name(value: str, field: str) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(field, f"is {value!r}", "a non-empty name")
    parts = [p for p in value.strip().split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InvalidInputError(field, f"is {value!r}", "a name without '.' or '..' parts")
    return parts


def thingsvision_path(root: str | os.PathLike[str], model_name: str, module_name: str) -> Path:
    """``<root>/<model_name>/<module_name>/transform.npz``."""
    return (
        Path(root).joinpath(
            *_check_name(model_name, "model_name"), *_check_name(module_name, "module_name")
        )
        / TRANSFORM_FILE
    )


def write_thingsvision_transform(
    transform: Any,
    root: str | os.PathLike[str],
    model_name: str,
    module_name: str,
) -> Path:
    """Write ``transform`` (a fitted probe, LinearTransform, dict or .npz path) where
    thingsvision looks for it; returns the file path. Arrays: ``weights`` float32,
    ``mean``/``std`` float64 scalars, ``bias`` float32 when the transform has one."""
    path = thingsvision_path(root, model_name, module_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_transform(transform, path)


def read_thingsvision_transform(
    root_or_file: str | os.PathLike[str],
    model_name: str | None = None,
    module_name: str | None = None,
) -> LinearTransform:
    """Read a thingsvision ``transform.npz``: a file path, or a root folder plus
    ``model_name`` and ``module_name``."""
    if model_name is None and module_name is None:
        path = Path(root_or_file)
    elif model_name is None or module_name is None:
        raise InvalidInputError(
            "model_name/module_name", "only one was given", "both (with a root) or neither"
        )
    else:
        path = thingsvision_path(root_or_file, model_name, module_name)
    if not path.is_file():
        raise DataMissingError(
            f"{path}: no such transform file (thingsvision layout: "
            "<root>/<model_name>/<module_name>/transform.npz)"
        )
    return load_transform(path)


def _rsatoolbox() -> Any:
    try:
        import rsatoolbox.rdm
    except ModuleNotFoundError as exc:
        raise DataMissingError(
            "rsatoolbox is not installed; `pip install rsatoolbox` to export RDMs"
        ) from exc
    return rsatoolbox.rdm


def to_rsatoolbox(
    matrices: Any,
    *,
    measure: str = "dissimilarity",
    stimulus_ids: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    descriptors: dict[str, Any] | None = None,
) -> Any:
    """An ``rsatoolbox.rdm.RDMs`` holding ``matrices`` ((n, n) or (s, n, n) symmetric
    dissimilarities, zero diagonal). ``stimulus_ids`` become the pattern descriptor
    ``"stimulus"``, ``names`` the rdm descriptor ``"name"``."""
    M = np.asarray(matrices, dtype=np.float64)
    if M.ndim == 2:
        M = M[None]
    if M.ndim != 3 or M.shape[1] != M.shape[2] or M.shape[1] < 2:
        raise InvalidInputError(
            "matrices", f"has shape {np.asarray(matrices).shape}", "(n, n) or (s, n, n), n >= 2"
        )
    if not np.isfinite(M).all():
        raise InvalidInputError("matrices", "hold NaN or infinity", "finite dissimilarities")
    if not np.allclose(M, np.swapaxes(M, 1, 2), atol=1e-8):
        raise InvalidInputError("matrices", "are not symmetric", "symmetric RDMs")
    n = M.shape[1]
    pattern: dict[str, Any] = {}
    if stimulus_ids is not None:
        ids = [str(s) for s in stimulus_ids]
        if len(ids) != n:
            raise InvalidInputError("stimulus_ids", f"has {len(ids)} ids", f"{n}, one per row")
        pattern["stimulus"] = ids
    rdm_desc: dict[str, Any] = {}
    if names is not None:
        nm = [str(s) for s in names]
        if len(nm) != M.shape[0]:
            raise InvalidInputError("names", f"has {len(nm)} names", f"{M.shape[0]}, one per RDM")
        rdm_desc["name"] = nm
    rdm = _rsatoolbox()
    return rdm.RDMs(
        dissimilarities=M,
        dissimilarity_measure=measure,
        descriptors=dict(descriptors or {}),
        rdm_descriptors=rdm_desc or None,
        pattern_descriptors=pattern or None,
    )


def model_rdms(
    features: Any,
    metric: str = "cosine",
    stimulus_ids: Sequence[str] | None = None,
    name: str | None = None,
) -> Any:
    """``rsatoolbox.rdm.RDMs`` of features, computed with :func:`align.metrics.rsa.compute_rdm`
    (``1 - cosine`` by default)."""
    from .metrics.rsa import compute_rdm

    if metric not in _MEASURES:
        raise InvalidInputError("metric", f"is {metric!r}", "cosine, correlation or euclidean")
    R = compute_rdm(features, metric)
    R = (R + R.T) / 2
    np.fill_diagonal(R, 0.0)
    return to_rsatoolbox(
        R,
        measure=_MEASURES[metric],
        stimulus_ids=stimulus_ids,
        names=None if name is None else [name],
    )


def from_rsatoolbox(rdms: Any) -> np.ndarray:
    """(s, n, n) float64 square matrices of an ``rsatoolbox.rdm.RDMs``."""
    get = getattr(rdms, "get_matrices", None)
    if not callable(get):
        raise InvalidInputError("rdms", f"is a {type(rdms).__name__}", "an rsatoolbox RDMs")
    return np.asarray(get(), dtype=np.float64)
