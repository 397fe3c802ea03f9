"""The Ray Serve embedding application, end to end through Serve's gRPC proxy.

One real Ray + Serve for the whole session (tests/services/serve_fixtures.py). Known
answers come from the embedded library in this process (align.models, the one loading
path): the service must return the same bits on CPU.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
grpc = pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")

from align.v1 import align_pb2  # noqa: E402

from tests.ports import wait_for  # noqa: E402
from tests.services.serve_fixtures import REPLICA_TORCH_THREADS  # noqa: E402

pytestmark = [pytest.mark.services, pytest.mark.slow]

TINY = "timm/test_efficientnet@random"  # 0.36 M parameters, 160 px: cheap on 2 CPUs
REAL = "timm/tf_efficientnet_lite0"  # real ImageNet weights from the registry package


def _things_images(data_dir: Path, n: int) -> list[Path]:
    folder = data_dir / "things" / "images"
    paths = sorted(folder.glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip(f"need {n} THINGS images under {folder}")
    return paths


def _matrix(reply: Any) -> np.ndarray:
    assert reply.dtype == "float32"
    return np.frombuffer(reply.data, dtype="<f4").reshape(tuple(reply.shape))


def _embed(serve_embedding: Any, request: Any, retries: int = 0) -> Any:
    """Call Embed; retry on UNAVAILABLE (what a client does while a replica restarts)."""
    stub = serve_embedding.stub()
    for attempt in range(retries + 1):
        try:
            return stub.Embed(request, metadata=serve_embedding.metadata(), timeout=180)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == retries:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


_MODELS: dict[str, Any] = {}


def _in_process(
    model_id: str, stimuli: list[Any], layer: str = "penultimate", batch_size: int | None = None
) -> np.ndarray:
    """The embedded library's answer, at the replicas' torch thread count (on CPU the
    bits depend on the number of threads a reduction is split over)."""
    import torch
    from align.models import load_model

    if model_id not in _MODELS:
        _MODELS[model_id] = load_model(model_id, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(REPLICA_TORCH_THREADS)
    try:
        return _MODELS[model_id].embed(stimuli, layers=(layer,), batch_size=batch_size)[layer]
    finally:
        torch.set_num_threads(threads)


def deploy_args(serve_embedding: Any) -> dict[str, Any]:
    from align_services.embedding import deploy

    return dict(deploy.application(serve_embedding.config)["args"])


def _embedder_stats() -> dict[str, Any]:
    from ray import serve

    handle = serve.get_deployment_handle("TimmEmbedder", app_name="embedding")
    return handle.stats.remote().result(timeout_s=60)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------


def test_embed_real_model_same_bits_as_embedded_mode(serve_embedding, data_dir) -> None:
    from align.errors import DataMissingError
    from align.models import get_spec

    paths = _things_images(data_dir, 5)
    blobs = [p.read_bytes() for p in paths]
    try:
        expected = _in_process(REAL, blobs)
    except DataMissingError as e:
        pytest.skip(f"{REAL} weights not installed: {e}")
    reply = _embed(serve_embedding, align_pb2.EmbedRequest(model=REAL, images=blobs))
    got = _matrix(reply)
    assert got.shape == (5, 1280)
    assert np.array_equal(got, expected)  # bit for bit, not allclose
    spec = get_spec(REAL)
    assert (reply.model, reply.layer, reply.spec_digest) == (REAL, "penultimate", spec.digest)
    assert reply.model_digest == spec.weights.sha256


def test_dataset_request_matches_embedded_embed_dataset(serve_embedding, data_dir) -> None:
    from align.datasets import load_dataset

    ds = load_dataset("mur92", data_dir=data_dir)
    ids = list(ds.stimulus_ids[10:16])
    request = align_pb2.EmbedRequest(model=TINY, dataset="mur92", stimulus_ids=ids, layer="logits")
    got = _matrix(_embed(serve_embedding, request))
    paths = [ds.image_paths[ds.stimulus_ids.index(i)] for i in ids]
    assert np.array_equal(got, _in_process(TINY, paths, layer="logits"))


def _set_timm_batching(serve_embedding: Any, **user_config: Any) -> None:
    """Redeploy with TimmEmbedder's ``user_config`` updated (Serve reconfigures the
    running replica in place) and wait until the replica reports the new values."""
    import copy

    from align_services.embedding import deploy

    config = copy.deepcopy(dict(serve_embedding.config))
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            if dep["name"] == "TimmEmbedder":
                dep["user_config"] = {**dep.get("user_config", {}), **user_config}
    deploy.deploy(config, timeout_s=120)

    def taken() -> bool:  # the replica's own report of its configuration
        current = _embedder_stats()["config"]
        return all(current[k] == v for k, v in user_config.items())

    wait_for(f"TimmEmbedder to take user_config {user_config}", taken, 120, every_s=0.2)


def test_concurrent_requests_run_as_the_one_forward_batch_they_fill(
    serve_embedding, data_dir
) -> None:
    """8 concurrent requests of 3 images, a batch of exactly 24 stimuli and a long wait:
    the batcher must run them as ONE forward pass holding all 8 requests (it starts when
    full, not when the wait ends), each client must get its own rows of that pass, and
    those rows are the embedded library's rows for the same 24 images as one batch, in
    the order the replica concatenated them (bit for bit)."""
    from align_services.embedding.embedders import fingerprint

    paths = _things_images(data_dir, 24)
    blobs = [p.read_bytes() for p in paths]
    groups = [blobs[i : i + 3] for i in range(0, 24, 3)]
    by_print = {fingerprint(g): g for g in groups}
    assert len(by_print) == 8
    original = serve_embedding.config["applications"]
    timm = next(
        d for a in original for d in a.get("deployments", []) if d["name"] == "TimmEmbedder"
    )
    _set_timm_batching(serve_embedding, max_batch_stimuli=24, batch_wait_timeout_s=120.0)
    try:
        before = _embedder_stats()
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(
                    lambda g: _embed(serve_embedding, align_pb2.EmbedRequest(model=TINY, images=g)),
                    groups,
                )
            )
        after = _embedder_stats()
    finally:
        _set_timm_batching(
            serve_embedding,
            max_batch_stimuli=timm.get("user_config", {}).get("max_batch_stimuli", 64),
            batch_wait_timeout_s=timm["user_config"]["batch_wait_timeout_s"],
        )
    assert after["actor_name"] == before["actor_name"]  # reconfigured, not restarted
    assert after["batches"] - before["batches"] == 1
    assert after["requests"] - before["requests"] == 8
    composition = after["recent_batches"][-1]
    assert sorted(composition) == sorted(by_print)  # all 8 requests, each once
    merged = [blob for fp in composition for blob in by_print[fp]]
    expected = _in_process(TINY, merged, batch_size=24)  # ONE forward batch of the 24
    rows = {fp: expected[3 * i : 3 * i + 3] for i, fp in enumerate(composition)}
    for group, reply in zip(groups, replies, strict=True):
        assert np.array_equal(_matrix(reply), rows[fingerprint(group)])


def _corrupt_jpeg(data_dir: Path) -> bytes:
    good = _things_images(data_dir, 1)[0].read_bytes()
    return good[: len(good) // 3]  # a truncated JPEG


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("empty", "INVALID_ARGUMENT", "request"),
        ("two_ways", "INVALID_ARGUMENT", "more than one way"),
        ("words_to_image_model", "INVALID_ARGUMENT", "words"),
        ("corrupt_image", "INVALID_ARGUMENT", "images[1]"),
        ("bad_layer", "NOT_FOUND", "unknown layer 'penultimat'"),
        ("unknown_model", "NOT_FOUND", "timm/tf_efficientnet_lite0"),
        ("too_many", "RESOURCE_EXHAUSTED", "max_stimuli_per_request"),
        ("too_big", "RESOURCE_EXHAUSTED", "max_request_bytes"),
    ],
)
def test_bad_requests_get_a_clear_status(serve_embedding, data_dir, case, code, needle) -> None:
    good = _things_images(data_dir, 1)[0].read_bytes()
    requests = {
        "empty": lambda: align_pb2.EmbedRequest(model=TINY),
        "two_ways": lambda: align_pb2.EmbedRequest(model=TINY, images=[good], words=["cat"]),
        "words_to_image_model": lambda: align_pb2.EmbedRequest(model=TINY, words=["cat"]),
        "corrupt_image": lambda: align_pb2.EmbedRequest(
            model=TINY, images=[good, _corrupt_jpeg(data_dir)]
        ),
        "bad_layer": lambda: align_pb2.EmbedRequest(model=TINY, images=[good], layer="penultimat"),
        "unknown_model": lambda: align_pb2.EmbedRequest(
            model="timm/tf_efficientnet_lite0x", images=[good]
        ),
        # limits of the test deployment: 256 stimuli, 8 MiB per request
        "too_many": lambda: align_pb2.EmbedRequest(model=TINY, images=[b"x"] * 257),
        "too_big": lambda: align_pb2.EmbedRequest(model=TINY, images=[bytes(9 << 20)]),
    }
    with pytest.raises(grpc.RpcError) as info:
        _embed(serve_embedding, requests[case]())
    assert info.value.code().name == code
    assert needle in info.value.details()


def test_one_corrupt_request_does_not_fail_the_batch(serve_embedding, data_dir) -> None:
    paths = _things_images(data_dir, 6)
    good = [[p.read_bytes()] * 2 for p in paths[:5]]
    bad = align_pb2.EmbedRequest(model=TINY, images=[good[0][0], _corrupt_jpeg(data_dir)])

    def call(request: Any) -> Any:
        try:
            return _embed(serve_embedding, request)
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(6) as pool:
        outs = list(
            pool.map(call, [bad] + [align_pb2.EmbedRequest(model=TINY, images=g) for g in good])
        )
    assert outs[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[1]" in outs[0].details()
    for group, reply in zip(good, outs[1:], strict=True):
        np.testing.assert_allclose(_matrix(reply), _in_process(TINY, group), rtol=1e-4, atol=1e-6)


def test_list_models_and_health(serve_embedding) -> None:
    from align.models import get_spec

    stub = serve_embedding.stub()
    md = serve_embedding.metadata()
    models = stub.ListModels(align_pb2.ListModelsRequest(pattern="timm/*lite0"), metadata=md)
    (info,) = models.models
    assert (info.id, info.digest) == (REAL, get_spec(REAL).digest)
    health = stub.Health(align_pb2.HealthRequest(), metadata=md, timeout=30)
    assert health.status == "ok"
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    check = health_pb2_grpc.HealthStub(grpc.insecure_channel(serve_embedding.grpc_address))
    answer = check.Check(health_pb2.HealthCheckRequest(), metadata=md, timeout=30)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_replica_killed_mid_run_requests_complete_with_same_numbers(
    serve_embedding, data_dir
) -> None:
    import ray

    paths = _things_images(data_dir, 40)
    blobs = [p.read_bytes() for p in paths]
    request = align_pb2.EmbedRequest(model=TINY, images=blobs)
    expected = _in_process(TINY, blobs)
    victim = _embedder_stats()["actor_name"]
    results: list[Any] = []
    calls: list[tuple[float, float]] = []  # (start, end) of each call, monotonic
    second_started = threading.Event()

    def run() -> None:
        for i in range(4):
            start = time.monotonic()
            if i == 1:
                second_started.set()  # kill during the second call
            try:
                results.append(_matrix(_embed(serve_embedding, request, retries=30)))
            except Exception as e:
                results.append(e)
            calls.append((start, time.monotonic()))

    worker = threading.Thread(target=run)
    worker.start()
    assert second_started.wait(300), "the first call never finished"
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert len(results) == 4
    # the kill was issued while the second call was running (not between calls)
    assert calls[1][0] <= killed_at < calls[1][1], (killed_at, calls)
    for out in results:
        assert isinstance(out, np.ndarray), out
        assert np.array_equal(out, expected)
    assert _embedder_stats()["actor_name"] != victim  # Serve replaced the replica


def test_custom_metrics_are_exported_to_prometheus(serve_embedding, data_dir) -> None:
    import urllib.request

    import ray

    blobs = [p.read_bytes() for p in _things_images(data_dir, 2)]
    _embed(serve_embedding, align_pb2.EmbedRequest(model=TINY, images=blobs))
    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = {
        "ray_align_embeddings_computed",
        "ray_align_embed_batch_stimuli_bucket",
        "ray_align_embed_requests",
        "ray_align_embed_request_seconds_bucket",
        "ray_align_embedding_rpcs",  # every RPC, by method
        "ray_align_embedding_rpc_seconds_bucket",
    }
    seen: set[str] = set()
    deadline = time.monotonic() + 90  # Ray exports metrics every few seconds
    while time.monotonic() < deadline and not wanted <= seen:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
        seen = {w for w in wanted if w in names or f"{w}_total" in names}
        time.sleep(2)
    assert seen == wanted


def test_each_replica_keeps_an_lru_set_of_models(serve_embedding, data_dir) -> None:
    limit = deploy_args(serve_embedding)["max_models_per_replica"]
    models = [f"timm/{arch}@random" for arch in ("test_resnet", "test_convnext", "test_vit")]
    models = models[: limit + 1]
    blob = _things_images(data_dir, 1)[0].read_bytes()
    for model in models:
        _embed(serve_embedding, align_pb2.EmbedRequest(model=model, images=[blob]))
    loaded = _embedder_stats()["loaded_models"]
    assert loaded == models[1:]  # the least recently used one was unloaded
