"""The embedding engine on real ImageNet weights (EfficientNet-Lite0, offline package).

Known answers come from outside our code: ImageNet classes of scikit-image's stock photos,
timm's own eval transform, timm's own forward pass, PIL's decoders.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
skdata = pytest.importorskip("skimage.data")
from align.errors import DataMissingError, InvalidInputError, NotFoundError  # noqa: E402
from align.models import StimulusWarning, embed_dataset, load_model, preprocess  # noqa: E402
from PIL import Image  # noqa: E402

MODEL_ID = "timm/tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0():
    try:
        return load_model(MODEL_ID, device="cpu")
    except DataMissingError as e:  # pragma: no cover - the weights extra is not installed
        pytest.skip(f"EfficientNet-Lite0 weights not installed: {e}")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [skdata.chelsea(), skdata.coffee(), skdata.rocket()]


def _jpeg(a: np.ndarray, mode: str = "RGB", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_lite0_classifies_stock_photos(lite0, photos):
    # ImageNet-1k: 281-285 cats (chelsea is a tabby), 967 espresso / 968 cup,
    # 657 missile / 744 projectile / 812 space shuttle for the rocket on its pad.
    expected = [{281, 282, 283, 284, 285}, {967, 968}, {657, 744, 812}]
    logits = lite0.embed(photos, layers="logits")["logits"]
    top5 = np.argsort(-logits, axis=1)[:, :5]
    for row, want in zip(top5, expected, strict=True):
        assert want & set(row.tolist()), (row, want)
    assert top5[0, 0] in expected[0] and top5[1, 0] in expected[1]


def test_preprocessing_equals_timm_eval_transform(lite0, photos):
    cfg = timm.data.resolve_data_config({}, model=lite0.module)
    reference = timm.data.create_transform(**cfg)
    for a in photos:
        im = Image.fromarray(a)
        np.testing.assert_array_equal(
            preprocess(im, lite0.spec.preprocessing), reference(im).numpy()
        )


def test_penultimate_is_pooled_pre_logits_of_timm_forward(lite0, photos):
    out = lite0.embed(photos, layers=("penultimate", "logits"))
    assert out["penultimate"].shape == (3, 1280) and out["penultimate"].dtype == np.float32
    x = torch.stack(
        [torch.from_numpy(preprocess(Image.fromarray(a), lite0.spec.preprocessing)) for a in photos]
    )
    with torch.inference_mode():
        feats = lite0.module.forward_features(x)
        pooled = feats.mean(dim=(2, 3))  # global average pool, by hand
        logits = lite0.module(x)
    np.testing.assert_allclose(out["penultimate"], pooled.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-4, atol=1e-4)


def test_cpu_runs_nhwc_and_agrees_with_timms_own_nchw_forward(lite0, photos):
    """On the CPU the registry's families run their convolutions on NHWC (channels_last)
    activations, the faster layout (bench/README.md, "Second run, 2026-12-03"): the rows
    equal timm's default NCHW forward up to float32 rounding and, on one thread, do not
    depend on the batch they are embedded in."""
    assert lite0.module.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(lite0.module).to(memory_format=torch.contiguous_format)
    assert not plain.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.stack(
        [torch.from_numpy(preprocess(Image.fromarray(a), lite0.spec.preprocessing)) for a in photos]
    )
    with torch.inference_mode():
        ref = plain.forward_head(plain.forward_features(x), pre_logits=True).numpy()
    out = lite0.embed(photos, batch_size=3)["penultimate"]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    alone = np.concatenate([lite0.embed([a], batch_size=1)["penultimate"] for a in photos])
    assert np.array_equal(alone, out)


def test_embeddings_are_bitwise_deterministic(lite0, photos):
    a = lite0.embed(photos, layers=("penultimate", "logits"), batch_size=2)
    b = lite0.embed(photos, layers=("penultimate", "logits"), batch_size=2)
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_several_layers_in_one_pass_equal_separate_passes(lite0, photos):
    together = lite0.embed(photos, layers=("penultimate", "logits", "blocks.5", "conv_head"))
    for name in ("penultimate", "logits", "blocks.5", "conv_head"):
        alone = lite0.embed(photos, layers=name)[name]
        assert np.array_equal(alone, together[name]), name
    with torch.inference_mode():  # a hooked module's output, taken by hand
        x = torch.from_numpy(preprocess(Image.fromarray(photos[0]), lite0.spec.preprocessing))
        h = lite0.module.conv_stem(x[None])
        h = lite0.module.bn1(h)
        for i in range(6):
            h = lite0.module.blocks[i](h)
    np.testing.assert_allclose(together["blocks.5"][0], h.reshape(-1).numpy(), atol=1e-5)


def test_paths_bytes_pil_and_arrays_embed_alike(lite0, photos, tmp_path):
    a = photos[0]
    path = tmp_path / "cat.png"
    Image.fromarray(a).save(path)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    out = lite0.embed([a, path, str(path), buf.getvalue(), Image.fromarray(a)])["penultimate"]
    for row in out[1:]:
        assert np.array_equal(row, out[0])


def test_image_modes_convert_to_rgb(lite0, photos):
    a = photos[1]
    grey = np.asarray(Image.fromarray(a).convert("L"))
    rgb_of_grey = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])  # opaque alpha = same image
    half = rgba.copy()
    half[:, :, 3] = 0  # fully transparent: composited over white, not black
    cmyk = _jpeg(a, "CMYK", quality=95)
    out = lite0.embed(
        [
            Image.fromarray(grey),
            rgb_of_grey,
            rgba,
            a,
            half,
            np.full_like(a, 255),
            cmyk,
            _jpeg(a, "RGB", quality=95),
        ]
    )["penultimate"]
    assert np.array_equal(out[0], out[1])
    assert np.array_equal(out[2], out[3])
    assert np.array_equal(out[4], out[5])
    cos = out[6] @ out[7] / np.linalg.norm(out[6]) / np.linalg.norm(out[7])
    assert cos > 0.95  # CMYK JPEG decodes to (nearly) the same picture


def test_truncated_jpeg_raises_naming_index(lite0, photos):
    good = _jpeg(photos[0])
    with pytest.raises(InvalidInputError, match=r"stimuli\[1\]"):
        lite0.embed([good, good[: len(good) // 2]])


def test_garbage_and_missing_files_raise_clear_errors(lite0, photos, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"definitely not a jpeg")
    with pytest.raises(InvalidInputError, match=r"junk\.jpg"):
        lite0.embed([photos[0], junk])
    with pytest.raises(InvalidInputError, match=r"stimuli\[0\].*nothere.jpg.*does not exist"):
        lite0.embed([tmp_path / "nothere.jpg"])
    with pytest.raises(InvalidInputError, match=r"stimuli\[0\]"):
        lite0.embed([42])
    with pytest.raises(NotFoundError, match="layer"):
        lite0.embed([photos[0]], layers="no_such_layer")
    with pytest.raises(InvalidInputError, match="batch_size"):
        lite0.embed([photos[0]], batch_size=0)


def test_embed_dataset_nan_rows_for_missing_and_corrupt(lite0, data_dir, tmp_path):
    images = sorted((data_dir / "things" / "images").glob("a*_[0-9][0-9][bs].jpg"))[:4]
    if len(images) < 4:
        pytest.skip(f"THINGS images not found under {data_dir / 'things' / 'images'}")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:300])
    paths: list[Path | None] = [
        images[0],
        None,
        images[1],
        tmp_path / "gone.jpg",
        images[2],
        broken,
        images[3],
    ]
    ds = SimpleNamespace(
        id="mini",
        stimulus_ids=tuple(f"s{i}" for i in range(7)),
        words=None,
        image_paths=tuple(paths),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = embed_dataset(lite0, ds, layers=("penultimate", "logits"))
    msgs = [str(w.message) for w in caught if issubclass(w.category, StimulusWarning)]
    assert len(msgs) == 1 and "3 of 7" in msgs[0]
    direct = lite0.embed(images, layers=("penultimate", "logits"))
    for k in ("penultimate", "logits"):
        assert out[k].shape[0] == 7
        assert np.isnan(out[k][[1, 3, 5]]).all()
        assert np.array_equal(out[k][[0, 2, 4, 6]], direct[k])


def test_embed_dataset_without_any_image_is_data_missing(lite0, tmp_path):
    ds = SimpleNamespace(
        id="empty", stimulus_ids=("a", "b"), words=None, image_paths=(tmp_path / "x.jpg", None)
    )
    with pytest.raises(DataMissingError):
        embed_dataset(lite0, ds)
    words_only = SimpleNamespace(id="w", stimulus_ids=("a",), words=("cat",), image_paths=None)
    with pytest.raises(InvalidInputError, match="dataset"):
        embed_dataset(lite0, words_only)


def test_workers_and_memmap_give_identical_rows(lite0, photos, monkeypatch, tmp_path):
    ref = lite0.embed(photos, batch_size=2)["penultimate"]
    monkeypatch.setenv("ALIGN_MEMMAP_BYTES", "0")
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path))
    out = lite0.embed(photos, batch_size=2, num_workers=1)["penultimate"]
    assert isinstance(out, np.memmap)
    assert np.array_equal(np.asarray(out), ref)
    assert list((tmp_path / "tmp").iterdir()) == []  # unlinked: nothing left on disk
