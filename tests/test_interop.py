"""Interop: thingsvision's transform.npz layout and rsatoolbox RDMs."""

from __future__ import annotations

import numpy as np
import pytest
from align.errors import DataMissingError, InvalidInputError
from align.interop import (
    from_rsatoolbox,
    model_rdms,
    read_thingsvision_transform,
    thingsvision_path,
    to_rsatoolbox,
    write_thingsvision_transform,
)
from align.metrics.probe import TripletProbe
from align.metrics.rsa import compare_rdms
from align.metrics.transfer import LinearTransform, apply_transform


def thingsvision_apply(npz_path, features: np.ndarray) -> np.ndarray:
    """What thingsvision's gLocal.apply_transform does with a loaded transform.npz."""
    transform = np.load(npz_path)
    out = (features - transform["mean"]) / transform["std"]
    out = out @ transform["weights"]
    if "bias" in transform:
        out += transform["bias"]
    return out


@pytest.mark.parametrize("with_bias", [False, True])
def test_thingsvision_file_loads_and_applies_identically(tmp_path, with_bias: bool) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(2.0, 3.0, size=(30, 6))
    W = rng.normal(size=(6, 6)).astype(np.float32).astype(np.float64)
    b = rng.normal(size=6).astype(np.float32).astype(np.float64) if with_bias else None
    t = LinearTransform(W, b, 2.0, 3.0)
    path = write_thingsvision_transform(t, tmp_path, "OpenCLIP_ViT-L-14/laion", "visual")
    assert path == tmp_path / "OpenCLIP_ViT-L-14" / "laion" / "visual" / "transform.npz"
    assert path == thingsvision_path(tmp_path, "OpenCLIP_ViT-L-14/laion", "visual")
    expected = thingsvision_apply(path, X)
    ours = apply_transform(
        X, read_thingsvision_transform(tmp_path, "OpenCLIP_ViT-L-14/laion", "visual")
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    probe = TripletProbe.load(path)  # the same file through the probe loader
    np.testing.assert_allclose(probe.transform(X), expected, rtol=1e-6, atol=1e-6)
    assert ("bias" in np.load(path).files) == with_bias


def test_a_fitted_probe_round_trips_through_thingsvision_layout(tmp_path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 5))
    T = np.array([rng.choice(40, 3, replace=False) for _ in range(200)])
    probe = TripletProbe(reg=1e-2, max_iter=30).fit(X, T)
    path = write_thingsvision_transform(
        probe, tmp_path, "timm/tf_efficientnet_lite0", "penultimate"
    )
    np.testing.assert_allclose(thingsvision_apply(path, X), probe.transform(X), atol=1e-5)


def test_thingsvision_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(DataMissingError, match=r"transform\.npz"):
        read_thingsvision_transform(tmp_path, "nope", "penultimate")
    with pytest.raises(InvalidInputError, match="model_name"):
        thingsvision_path(tmp_path, "../escape", "penultimate")
    with pytest.raises(InvalidInputError, match="model_name/module_name"):
        read_thingsvision_transform(tmp_path, "only-model")


def test_rsatoolbox_export_compares_like_our_rsa(data_dir) -> None:
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from align.datasets import load_dataset, load_spose_embedding

    ds = load_dataset("things48", data_dir)
    things = load_dataset("things", data_dir)
    rows = [things.stimulus_ids.index(s) for s in ds.stimulus_ids]
    X = load_spose_embedding(data_dir)[rows]
    human = to_rsatoolbox(ds.matrices[0], stimulus_ids=ds.stimulus_ids, names=["things48"])
    model = model_rdms(X, "cosine", stimulus_ids=ds.stimulus_ids, name="spose")
    theirs = float(rsatoolbox.rdm.compare(model, human, method="spearman")[0, 0])
    ours = compare_rdms(from_rsatoolbox(model)[0], ds.matrices[0], "spearman")
    assert theirs == pytest.approx(ours, abs=1e-9)
    assert human.pattern_descriptors["stimulus"] == list(ds.stimulus_ids)
    np.testing.assert_allclose(from_rsatoolbox(human)[0], ds.matrices[0])


def test_rsatoolbox_export_rejects_bad_matrices() -> None:
    with pytest.raises(InvalidInputError, match="symmetric"):
        to_rsatoolbox(np.array([[0.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(InvalidInputError, match="stimulus_ids"):
        to_rsatoolbox(np.zeros((3, 3)), stimulus_ids=["a"])
