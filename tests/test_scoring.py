"""align.scoring: one plan for every backend (keys equal by construction), per-call
options that do not leak, cache hits rebuilt around the request, cheap cached re-scores,
folder datasets in natural order, notebook-friendly reports."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import align
import align.api
import numpy as np
import pytest
from align.api import Client, EmbeddedBackend, Engine
from align.cache import DiskCache, embedding_key, stimuli_fingerprint
from align.errors import InvalidInputError
from align.report import Report
from align.scoring import make_plan, resolve_dataset, resolve_model

IMAGE_MODEL = "timm/tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "align-cache"))


def spose(data_dir: Path) -> np.ndarray:
    from align.datasets import load_spose_embedding

    return np.asarray(load_spose_embedding(data_dir))


def image_folder(folder: Path, n: int = 8) -> Path:
    """A folder dataset: n small distinct images named 0..n-1 and triplets by index."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    lines = ["# convention: odd-one-out", "# refer_by: index"]
    lines += [f"{a},{b},{c}" for a, b, c in rng.integers(0, n, size=(40, 3)) if len({a, b, c}) == 3]
    (folder / "triplets.csv").write_text("\n".join(lines) + "\n")
    return folder


# -- one plan: the embedded key is the server's key ---------------------------------------


def _server_plan(data_dir: Path, **request: Any) -> Any:
    """The evaluation server's own plan (its _plan, with its embedder and dataset
    loading) for a ScoreRequest (or the fields of one)."""
    pytest.importorskip("grpc")
    server = pytest.importorskip("align_services.evaluation.server")
    from align.v1 import align_pb2
    from align_services.evaluation.embedder import LocalEmbedder

    config = server.ServerConfig(data_dir=str(data_dir), redis_url=None, metrics_port=None)
    servicer = server.EvaluationServicer(
        config,
        None,
        None,
        LocalEmbedder(),
        None,
        None,  # type: ignore[arg-type]
    )
    message = request.pop("request", None) or align_pb2.ScoreRequest(**request)
    return asyncio.run(servicer._plan(message, "tester"))


def test_embedded_and_server_keys_are_equal_for_a_model_id(data_dir: Path) -> None:
    pytest.importorskip("timm")
    remote = _server_plan(
        data_dir, model=IMAGE_MODEL, dataset="things48", options_json='{"n_bootstrap": 10}'
    )
    ds = resolve_dataset("things48", data_dir)
    source = resolve_model(IMAGE_MODEL, "penultimate")
    embedded = make_plan(source, ds, None, {"n_bootstrap": 10})
    assert embedded.features_key == remote.fkey
    assert embedded.report_key == remote.key
    # the stimulus-content fingerprint is part of both: without it the key differs
    fingerprint = stimuli_fingerprint(ds)
    assert fingerprint
    parts = dict(
        model_digest=source.weights_digest,
        preprocessing=source.preprocessing,
        layer="penultimate",
        dataset_digest=str(ds.digest),
    )
    assert remote.fkey == embedding_key(**parts, stimuli=fingerprint)
    assert remote.fkey != embedding_key(**parts)


def test_embedded_and_server_keys_are_equal_for_given_features(
    data_dir: Path, tmp_path: Path
) -> None:
    X = spose(data_dir).astype(np.float64)
    path = tmp_path / "spose.npy"
    np.save(path, X)
    pytest.importorskip("redis")
    from tests.services.test_evaluation import features_request

    request = features_request(path, options_json='{"n_bootstrap": 0}')
    remote = _server_plan(data_dir, request=request)
    report = Client(backend=EmbeddedBackend()).score(
        str(path), "things", data_dir=data_dir, n_bootstrap=0, cache=False
    )
    assert report.provenance["report_key"] == remote.key
    assert report.model == remote.source.model_id == f"features:{path}"


def test_api_and_remote_do_not_import_each_other() -> None:
    code = (
        "import sys, importlib; m = sys.argv[1]; other = sys.argv[2]; "
        "importlib.import_module(m); assert other not in sys.modules, (m, other)"
    )
    for module, other in (("align.api", "align.remote"), ("align.remote", "align.api")):
        if module == "align.remote":
            pytest.importorskip("grpc")
        proc = subprocess.run(
            [sys.executable, "-c", code, module, other], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr


# -- httpx's rule: configuration on the Client, arguments on the call ---------------------


class _FakeModel:
    """An EmbeddingModel stand-in: the engine's embed_dataset is replaced below."""

    def __init__(self) -> None:
        self.spec = SimpleNamespace(
            id="fake/model",
            family="torch",
            digest="f" * 64,
            preprocessing=None,
            layers=("penultimate",),
            modality="image",
        )

    def embed(self, *a: Any, **k: Any) -> Any:  # pragma: no cover - never called
        raise AssertionError


@pytest.fixture
def recorded_embeds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import align.models

    calls: list[dict[str, Any]] = []

    def embed_dataset(model: Any, dataset: Any, layers: Any, batch_size: Any, progress: Any):
        calls.append({"batch_size": batch_size, "progress": progress})
        rng = np.random.default_rng(len(calls))
        return {layer: rng.normal(size=(len(dataset.stimulus_ids), 4)) for layer in layers}

    monkeypatch.setattr(align.models, "embed_dataset", embed_dataset)
    return calls


def test_per_call_engine_options_do_not_leak_into_the_next_call(
    tmp_path: Path, recorded_embeds: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = resolve_dataset(image_folder(tmp_path / "set"), None)
    monkeypatch.setattr(align.api, "_default_client", None)
    monkeypatch.delenv("ALIGN_SERVER", raising=False)
    model = _FakeModel()
    align.score(model, ds, cache=False, n_bootstrap=0, batch_size=3, progress=True)
    align.score(model, ds, cache=False, n_bootstrap=0)
    assert recorded_embeds == [
        {"batch_size": 3, "progress": True},
        {"batch_size": None, "progress": False},
    ]
    backend = align.api._client().backend
    assert isinstance(backend, EmbeddedBackend) and backend.engine == Engine()
    # a configured Client keeps its configuration; a call overrides it for itself only
    client = Client(backend=EmbeddedBackend(batch_size=5))
    client.score(model, ds, cache=False, n_bootstrap=0, batch_size=2)
    client.score(model, ds, cache=False, n_bootstrap=0)
    assert [c["batch_size"] for c in recorded_embeds[2:]] == [2, 5]


def test_loaded_models_are_kept_per_weights_digest_and_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import align.models

    loads: list[tuple[str, str | None]] = []

    def load_model(spec: Any, device: Any = None) -> Any:
        loads.append((str(spec), device))
        return object()

    monkeypatch.setattr(align.models, "load_model", load_model)
    backend = EmbeddedBackend(device="cpu")
    source = align.api.ModelSource("some/model", "timm", "d" * 64)
    a = backend._load(source, "cpu")
    b = backend._load(source, "meta")
    assert a is not b and backend._load(source, "cpu") is a
    assert loads == [("some/model", "cpu"), ("some/model", "meta")]


# -- cache hits rebuilt around the current request ----------------------------------------


def test_equal_features_in_two_files_report_the_second_file(data_dir: Path, tmp_path: Path) -> None:
    X = spose(data_dir)
    first, second = tmp_path / "features_a.npy", tmp_path / "features_b.npy"
    np.save(first, X)
    np.save(second, X)
    client = Client(backend=EmbeddedBackend(), cache=DiskCache(tmp_path / "cache"))
    a = client.score(str(first), "things", data_dir=data_dir, n_bootstrap=0)
    b = client.score(str(second), "things", data_dir=data_dir, n_bootstrap=0)
    assert (a.provenance["cache"], b.provenance["cache"]) == ("miss", "hit")
    assert b.metrics == a.metrics
    assert b.model == b.provenance["model_id"] == f"features:{second}"
    assert a.model == f"features:{first}"
    assert b.provenance["weights_digest"] == a.provenance["weights_digest"]  # content
    assert b.provenance["backend"] == "embedded"


# -- cheap cached re-scores ---------------------------------------------------------------


@pytest.mark.slow
def test_a_cached_rescore_in_a_fresh_process_imports_no_torch(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    folder = image_folder(tmp_path / "set")
    env = {**os.environ, "ALIGN_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = ["score", IMAGE_MODEL, str(folder), "--json", "--n-bootstrap", "0"]
    first = subprocess.run(
        [sys.executable, "-m", "align", *args], capture_output=True, text=True, env=env
    )
    assert first.returncode == 0, first.stderr
    code = (
        "import json, sys; from align.cli import main; rc = main(sys.argv[1:]); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'timm' not in sys.modules, 'timm imported'"
    )
    again = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    assert again.returncode == 0, again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["metrics"] == b["metrics"]
    assert (a["provenance"]["cache"], b["provenance"]["cache"]) == ("miss", "hit")
    assert b["provenance"]["weights_digest"] == a["provenance"]["weights_digest"]


def test_the_spec_memo_is_not_used_when_a_weights_file_changes(tmp_path: Path) -> None:
    from align import scoring

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"one")
    store = DiskCache(tmp_path / "cache")
    key = scoring._spec_memo_key("x/model")
    facts = {"model_id": "x/model", "family": "timm", "weights_digest": "a" * 64,
             "preprocessing": None, "layers": ["penultimate"], "modality": "image"}  # fmt: skip
    store.put_meta(key, {"facts": facts, "files": [scoring._stat(weights)]})
    entry = store.get_meta(key)
    assert entry is not None
    files = entry["files"]
    assert all(scoring._stat(Path(f[0])) == f for f in files)
    weights.write_bytes(b"two, longer")  # new size (and mtime): the memo no longer holds
    assert not all(scoring._stat(Path(f[0])) == f for f in files)


# -- folder datasets: natural order --------------------------------------------------------


def _images(folder: Path, stems: list[str]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for stem in stems:
        Image.new("RGB", (2, 2)).save(folder / f"{stem}.png")
    return folder


def test_numeric_stems_sort_numerically(tmp_path: Path) -> None:
    from align.datasets.folder import list_images

    stems = [str(i) for i in range(12)]
    folder = _images(tmp_path / "n", list(reversed(stems)))
    got, paths = list_images(folder)
    assert list(got) == stems  # 0, 1, 2, ..., 10, 11 (a name sort gives 0, 1, 10, 11, 2)
    assert [p.stem for p in paths] == stems
    named = _images(tmp_path / "m", ["img10", "img2", "img1"])
    assert list(list_images(named)[0]) == ["img1", "img2", "img10"]


def test_stems_that_differ_only_in_leading_zeros_are_an_error(tmp_path: Path) -> None:
    from align.datasets.folder import list_images

    folder = _images(tmp_path / "z", ["01", "1", "2"])
    with pytest.raises(InvalidInputError, match="leading zeros"):
        list_images(folder)


def test_numbers_mixed_with_names_warn_and_put_numbers_first(tmp_path: Path) -> None:
    from align.datasets.folder import list_images

    folder = _images(tmp_path / "mix", ["cat", "10", "2"])
    with pytest.warns(UserWarning, match="mix numbers"):
        stems, _ = list_images(folder)
    assert list(stems) == ["2", "10", "cat"]


# -- notebook-friendly reports and warnings about what the input uses ---------------------


def test_report_repr_is_one_line_summary_and_html_is_the_cli_table(data_dir: Path) -> None:
    X = spose(data_dir)
    report = Client(backend=EmbeddedBackend()).score(
        X, "things", data_dir=data_dir, n_bootstrap=20, cache=False
    )
    d = report.metrics["odd_one_out"]
    text = repr(report)
    assert "\n" not in text and len(text) < 300
    for part in (report.model, "things", "accuracy", f"{d['accuracy']:.4f}",
                 f"{d['ci'][0]:.4f}", f"chance {d['chance']:.4f}",
                 f"ceiling {d['ceiling']:.4f}"):  # fmt: skip
        assert part in text, (part, text)
    html = report._repr_html_()
    for metric, name, number in report.table():
        assert f"<td>{metric}</td><td>{name}</td><td style='text-align:right'>{number}</td>" in html
    assert len(report.table()) == len(report.rows())


def test_features_on_things_do_not_warn_about_missing_images(data_dir: Path) -> None:
    X = spose(data_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Client(backend=EmbeddedBackend()).score(
            X, "things", data_dir=data_dir, n_bootstrap=0, cache=False
        )
    assert not [w for w in caught if "images missing" in str(w.message)]
    # the warning exists, for requests that use the images
    with pytest.warns(UserWarning, match="images missing"):
        resolve_dataset("things", data_dir, uses_images=True)


def test_report_from_dict_round_trip_keeps_repr(data_dir: Path) -> None:
    report = Client(backend=EmbeddedBackend()).score(
        spose(data_dir), "things", data_dir=data_dir, n_bootstrap=0, cache=False
    )
    assert repr(Report.from_dict(report.to_dict())) == repr(report)
