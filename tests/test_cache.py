"""The embedded disk cache: hits, misses, atomic writes, corrupt entries, and never a
stale entry when weights, preprocessing or layer change (a tiny torch model on a tiny
image dataset made here, so it runs in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from align.api import Client, EmbeddedBackend
from align.cache import DiskCache, embedding_key, report_key

torch = pytest.importorskip("torch")
models = pytest.importorskip("align.models")
datasets = pytest.importorskip("align.datasets")


# -- the cache itself --------------------------------------------------------------------


def test_array_and_json_round_trip_and_count_hits(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    key = embedding_key(model_digest="m", preprocessing=None, layer="l", dataset_digest="d")
    assert cache.get_array(key) is None
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put_array(key, X)
    np.testing.assert_array_equal(cache.get_array(key), X)
    rkey = report_key(features_key=key, dataset_digest="d", metrics=["rsa"])
    cache.put_json(rkey, {"a": 1.5})
    assert cache.get_json(rkey) == {"a": 1.5}
    assert (cache.hits, cache.misses) == (2, 1)


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    key = embedding_key(model_digest="m", preprocessing=None, layer="l", dataset_digest="d")
    cache.put_array(key, np.ones((2, 2)))
    cache.put_array(key, np.zeros((2, 2)))  # overwrite goes through os.replace too
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [f"{key}.npy"]


@pytest.mark.parametrize("garbage", [b"", b"\x93NUMPY garbage", b"not numpy at all"])
def test_corrupt_array_entry_is_a_miss_and_is_removed(tmp_path: Path, garbage: bytes) -> None:
    cache = DiskCache(tmp_path)
    key = embedding_key(model_digest="m", preprocessing=None, layer="l", dataset_digest="d")
    path = cache.embedding_path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)
    assert cache.get_array(key) is None
    assert not path.exists()


def test_corrupt_report_entry_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    key = report_key(features_key="f", dataset_digest="d", metrics=None)
    path = cache.report_path(key)
    path.parent.mkdir(parents=True)
    path.write_text('{"model": "truncated')
    assert cache.get_json(key) is None


def test_key_changes_with_everything_that_changes_the_bytes() -> None:
    base = dict(
        model_digest="m", preprocessing={"size": 224}, layer="penultimate", dataset_digest="d"
    )
    key = embedding_key(**base)
    for field, value in [
        ("model_digest", "m2"),
        ("preprocessing", {"size": 256}),
        ("layer", "logits"),
        ("dataset_digest", "d2"),
    ]:
        assert embedding_key(**{**base, field: value}) != key, field
    r = report_key(features_key=key, dataset_digest="d", metrics=["odd_one_out"])
    assert report_key(features_key=key, dataset_digest="d", metrics=["probe"]) != r
    assert (
        report_key(
            features_key=key, dataset_digest="d", metrics=["odd_one_out"], options={"seed": 1}
        )
        != r
    )


def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "c"))
    assert DiskCache().root == tmp_path / "c"


# -- end to end with a tiny torch model ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    triplets = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 0], [1, 3, 5], [2, 4, 6]], dtype=np.int64)
    return datasets.Dataset(
        id="tiny",
        kind="triplets",
        stimulus_ids=tuple(f"img{i}" for i in range(8)),
        image_paths=tuple(paths),
        triplets=triplets,
    )


class Counter:
    def __init__(self) -> None:
        self.images = 0

    def hook(self, module, inputs, output) -> None:
        self.images += int(inputs[0].shape[0])


def make_model(counter: Counter, weight: float = 1.0, mean: float = 0.5):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    with torch.no_grad():
        net[0].weight.mul_(weight)
    net.register_forward_hook(counter.hook)
    pre = models.Preprocessing(
        input_size=(16, 16),
        resize_size=16,
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(mean, mean, mean),
        std=(0.25, 0.25, 0.25),
    )
    return models.from_torch(net, pre, id="torch/tiny", device="cpu")


def score(model, dataset, cache: DiskCache, **kw):
    backend = EmbeddedBackend()
    return Client(backend=backend).score(model, dataset, cache=cache, n_bootstrap=0, **kw)


def test_second_identical_call_is_served_from_the_cache(tmp_path: Path, tiny_dataset) -> None:
    cache = DiskCache(tmp_path)
    counter = Counter()
    model = make_model(counter)
    first = score(model, tiny_dataset, cache)
    assert counter.images == 8 and first.provenance["cache"] == "miss"
    second = score(model, tiny_dataset, cache)
    assert counter.images == 8  # nothing embedded again
    assert second.provenance["cache"] == "hit"
    assert second.metrics == first.metrics


def test_new_options_reuse_the_embedding_but_not_the_report(tmp_path: Path, tiny_dataset) -> None:
    cache = DiskCache(tmp_path)
    counter = Counter()
    model = make_model(counter)
    score(model, tiny_dataset, cache, similarity="cosine")
    report = score(model, tiny_dataset, cache, similarity="dot")
    assert counter.images == 8
    assert report.provenance["cache"] == "miss"
    assert report.provenance["embedding_cache"] == "hit"
    assert report.metrics["odd_one_out"]["similarity"] == "dot"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"weight": 2.0}, id="weights"),
        pytest.param({"mean": 0.1}, id="preprocessing"),
    ],
)
def test_changed_weights_or_preprocessing_never_reuse_a_stale_entry(
    tmp_path: Path, tiny_dataset, change: dict
) -> None:
    cache = DiskCache(tmp_path)
    counter = Counter()
    before = models.embed_dataset(make_model(Counter()), tiny_dataset)["penultimate"]
    score(make_model(counter), tiny_dataset, cache)
    changed = make_model(counter, **change)
    report = score(changed, tiny_dataset, cache)
    assert counter.images == 16  # embedded again
    assert report.provenance["cache"] == "miss"
    assert report.provenance["embedding_cache"] == "miss"
    after = models.embed_dataset(make_model(Counter(), **change), tiny_dataset)["penultimate"]
    assert not np.allclose(before, after)  # the change does change the numbers


def test_another_layer_is_embedded_not_reused(tmp_path: Path, tiny_dataset) -> None:
    cache = DiskCache(tmp_path)
    counter = Counter()
    model = make_model(counter)
    score(model, tiny_dataset, cache)
    report = score(model, tiny_dataset, cache, layer="0")  # the conv layer's output
    assert counter.images == 16
    assert report.provenance["layer"] == "0"
    assert report.provenance["embedding_cache"] == "miss"


def test_a_corrupt_cached_report_is_recomputed(tmp_path: Path, tiny_dataset) -> None:
    cache = DiskCache(tmp_path)
    counter = Counter()
    model = make_model(counter)
    first = score(model, tiny_dataset, cache)
    for path in (tmp_path / "reports").rglob("*.json"):
        path.write_text(json.dumps({"model": "x"}))  # valid JSON, not a report
    again = score(model, tiny_dataset, cache)
    assert again.provenance["cache"] == "miss"
    assert again.metrics == first.metrics


def test_cache_false_writes_nothing(tmp_path: Path, tiny_dataset, monkeypatch) -> None:
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path))
    counter = Counter()
    Client(backend=EmbeddedBackend()).score(
        make_model(counter), tiny_dataset, cache=False, n_bootstrap=0
    )
    assert not any(tmp_path.rglob("*.*"))


def test_score_many_sweeps_layers_into_one_frame(tmp_path: Path, tiny_dataset) -> None:
    counter = Counter()
    model = make_model(counter)
    frame = Client(backend=EmbeddedBackend()).score_many(
        model, tiny_dataset, layers=["penultimate", "0"], cache=DiskCache(tmp_path), n_bootstrap=0
    )
    acc = frame[frame["value_name"] == "accuracy"]
    assert list(acc["layer"]) == ["penultimate", "0"]
    assert counter.images == 8  # both layers came from one pass over the images


def _copy_dataset(dataset, folder: Path):
    import dataclasses
    import shutil

    folder.mkdir()
    paths = tuple(Path(shutil.copy(p, folder / Path(p).name)) for p in dataset.image_paths)
    return dataclasses.replace(dataset, image_paths=paths)


def test_the_same_images_in_another_folder_reuse_the_embedding(
    tmp_path: Path, tiny_dataset
) -> None:
    cache = DiskCache(tmp_path / "cache")
    counter = Counter()
    model = make_model(counter)
    score(model, tiny_dataset, cache)
    moved = _copy_dataset(tiny_dataset, tmp_path / "elsewhere")
    again = score(model, moved, cache)
    assert counter.images == 8  # keyed by image content, not by where the files live
    assert again.provenance["cache"] == "hit"


def test_a_replaced_image_is_embedded_again(tmp_path: Path, tiny_dataset) -> None:
    from PIL import Image

    cache = DiskCache(tmp_path / "cache")
    counter = Counter()
    model = make_model(counter)
    changed = _copy_dataset(tiny_dataset, tmp_path / "changed")
    score(model, changed, cache)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(changed.image_paths[3])
    again = score(model, changed, cache)
    assert counter.images == 16  # new content: the old features are not reused
    assert again.provenance["cache"] == "miss"
