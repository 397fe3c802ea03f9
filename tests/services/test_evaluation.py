"""The evaluation service end to end: real redis-server, gRPC over loopback, the local
embedder (no Ray), real THINGS triplets and the real SPoSE embedding.

Timing-sensitive behaviours (Redis dying mid-run, single flight, queueing, graceful
shutdown) use a "gated" features model: the real SPoSE rows, served by a model whose
embedding step waits on an Event the test opens, so the test knows the computation is
in flight instead of guessing with sleeps.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from align.v1 import align_pb2, align_pb2_grpc

from tests.services.redis_fixtures import ALICE, BOB

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

OPTS = {"n_bootstrap": 50}


# -- helpers -----------------------------------------------------------------------------


def odd_one_out_accuracy(X: np.ndarray, triplets: np.ndarray) -> float:
    """Independent re-implementation: cosine similarities, column 2 is the human's odd
    one out, a full three-way tie counts as wrong."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    a, b, c = triplets.T
    s = np.stack([(Xn[a] * Xn[b]).sum(1), (Xn[a] * Xn[c]).sum(1), (Xn[b] * Xn[c]).sum(1)], axis=1)
    tie = (s[:, 0] == s[:, 1]) & (s[:, 1] == s[:, 2])
    return float(np.mean((s.argmax(1) == 0) & ~tie))


def things_triplets(data_dir: Path) -> np.ndarray:
    from align.datasets import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(load_dataset("things", data_dir=data_dir).triplets)


def backend(server: Any, token: str | None = ALICE, **kw: Any) -> Any:
    from align.remote import RemoteBackend

    kw.setdefault("progress", False)
    kw.setdefault("retries", 0)
    return RemoteBackend(server.address, token, **kw)


def raw_score(
    server: Any, request: align_pb2.ScoreRequest, token: str | None = ALICE
) -> list[align_pb2.ScoreProgress] | grpc.RpcError:
    """All stream messages, or the RpcError the call ended with."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(server.address) as channel:
        stub = align_pb2_grpc.EvaluationServiceStub(channel)
        try:
            return list(stub.Score(request, metadata=metadata, timeout=60))
        except grpc.RpcError as exc:
            return exc


def watch_score(
    server: Any,
    request: align_pb2.ScoreRequest,
    seen: Any,
    event: threading.Event,
    token: str | None = ALICE,
) -> list[align_pb2.ScoreProgress] | grpc.RpcError:
    """Like raw_score, and sets ``event`` as soon as a streamed message satisfies ``seen``
    (the server's own progress events: queued, waiting on a lock, ...)."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    messages: list[align_pb2.ScoreProgress] = []
    with grpc.insecure_channel(server.address) as channel:
        stub = align_pb2_grpc.EvaluationServiceStub(channel)
        try:
            for m in stub.Score(request, metadata=metadata, timeout=60):
                messages.append(m)
                if seen(m):
                    event.set()
        except grpc.RpcError as exc:
            return exc
    return messages


def wait_until_refusing(server: Any, timeout: float = 30.0) -> None:
    """Poll (fresh channel each time) until the server refuses new calls: UNAVAILABLE."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while True:
        with grpc.insecure_channel(server.address) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return
        assert time.monotonic() < deadline, "the server never started refusing calls"
        time.sleep(0.02)


def features_request(path: Path, **kw: Any) -> align_pb2.ScoreRequest:
    """Features uploaded in the request (1854 x 66 float64: about 979 kB)."""
    X = np.load(path)
    fields: dict[str, Any] = dict(
        model=f"features:{path}",
        dataset="things",
        features=X.astype("<f8").tobytes(),
        features_shape=list(X.shape),
        features_dtype="<f8",
        options_json='{"n_bootstrap": 50}',
    )
    fields.update(kw)
    return align_pb2.ScoreRequest(**fields)


class GatedFeatures:
    """Registers a features model (real SPoSE rows) whose embedding waits for ``open()``."""

    def __init__(self, path: Path) -> None:
        from align.models import register_model
        from align.models.features import FeaturesModel, make_spec

        self.id = f"test/gated-{uuid.uuid4().hex[:8]}"
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0
        outer = self

        class _Model(FeaturesModel):
            def embed_rows(self, dataset: Any, layers: tuple[str, ...]) -> Any:
                outer.calls += 1
                outer.entered.set()
                if not outer.gate.wait(60):
                    raise RuntimeError("test gate never opened")
                return super().embed_rows(dataset, layers)

        register_model(self.id, _Model(make_spec(self.id, str(path))))

    def open(self) -> None:
        self.gate.set()

    def wait_entered(self) -> None:
        assert self.entered.wait(30), "the computation never reached the embedding step"


@pytest.fixture
def gated(spose_npy: Path) -> Iterator[GatedFeatures]:
    g = GatedFeatures(spose_npy)
    try:
        yield g
    finally:
        g.open()


# -- remote == embedded, caching ----------------------------------------------------------


def test_remote_score_equals_embedded_score(eval_service: Any, spose_npy: Path, data_dir: Path):
    import align

    server = eval_service()
    with backend(server) as b:
        remote = b.score(str(spose_npy), "things", options=OPTS)
    embedded = align.score(str(spose_npy), "things", cache=False, **OPTS)

    assert remote.metrics == embedded.metrics
    for key in ("weights_digest", "dataset_digest", "model_id", "layer", "options"):
        assert remote.provenance[key] == embedded.provenance[key], key
    assert remote.provenance["backend"] == "remote"
    # and the number itself, from an independent implementation
    expected = odd_one_out_accuracy(np.load(spose_npy), things_triplets(data_dir))
    assert remote.value("odd_one_out", "accuracy") == pytest.approx(expected, abs=1e-12)


def spose_model(path: Path) -> str:
    """A model id the operator registered for the SPoSE features file (remote clients may
    not name the file itself: the server reads no client paths)."""
    from align.models import register_model

    register_model("test/spose66", f"features:{path}")
    return "test/spose66"


def test_model_id_path_uses_the_local_embedder(eval_service: Any, spose_npy: Path, data_dir: Path):
    server = eval_service()
    reply = raw_score(
        server,
        align_pb2.ScoreRequest(
            model=spose_model(spose_npy), dataset="things", options_json='{"n_bootstrap": 50}'
        ),
    )
    assert not isinstance(reply, grpc.RpcError), reply
    import json

    report = json.loads(reply[-1].report_json)
    expected = odd_one_out_accuracy(np.load(spose_npy), things_triplets(data_dir))
    assert report["metrics"]["odd_one_out"]["accuracy"] == pytest.approx(expected, abs=1e-6)
    assert server.metrics.total("align_embeddings_computed_total") == 1854


def test_second_identical_score_is_a_cache_hit_in_prometheus(eval_service: Any, spose_npy: Path):
    server = eval_service()
    with backend(server) as b:
        first = b.score(str(spose_npy), "things", options=OPTS)
        assert first.provenance["cache"] == "miss"
        second = b.score(str(spose_npy), "things", options=OPTS)
        assert second.provenance["cache"] == "hit"
    assert second.metrics == first.metrics
    port = server.server.metrics_port
    expected = {
        'align_cache_hits_total{kind="report",tier="memory"}': 1.0,
        "align_report_computations_total": 1.0,
        'align_requests_total{code="OK",method="Score"}': 2.0,
    }
    # The server counts a request when its handler returns, which can be just after the
    # client has read the last streamed message: scrape until the counts have settled.
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        samples = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.decode().splitlines()
            if line and not line.startswith("#")
        }
        seen = {name: samples.get(name) for name in expected}
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert seen == expected


def test_refresh_recomputes_a_report_the_server_already_holds(eval_service: Any, spose_npy: Path):
    """cache=False asks for a new computation: the stored report must not answer it, not
    even the re-read under the Redis lock."""
    server = eval_service()
    with backend(server) as b:
        first = b.score(str(spose_npy), "things", options=OPTS)
        again = b.score(str(spose_npy), "things", options=OPTS, cache=False)
        third = b.score(str(spose_npy), "things", options=OPTS)
    assert first.provenance["cache"] == "miss"
    assert again.provenance["cache"] == "miss"
    assert third.provenance["cache"] == "hit"
    assert again.metrics == first.metrics == third.metrics
    port = server.server.metrics_port
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        computed = next(
            float(line.split(" ")[1])
            for line in text.decode().splitlines()
            if line.startswith("align_report_computations_total ")
        )
        if computed == 2.0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert computed == 2.0


def test_redis_stopped_mid_run_result_correct_and_errors_counted(
    eval_service: Any, redis_server: Any, gated: GatedFeatures, spose_npy: Path, data_dir: Path
):
    server = eval_service()
    with ThreadPoolExecutor(1) as pool, backend(server) as b:
        future = pool.submit(b.score, gated.id, "things", options=OPTS)
        gated.wait_entered()
        redis_server.stop()  # Redis dies while the report is being computed
        gated.open()
        report = future.result(timeout=60)
    expected = odd_one_out_accuracy(np.load(spose_npy), things_triplets(data_dir))
    assert report.value("odd_one_out", "accuracy") == pytest.approx(expected, abs=1e-6)
    # writing the embedding and the report, and releasing the lock, all failed
    assert server.metrics.value("align_cache_errors_total", {"op": "put_report"}) == 1.0
    assert server.metrics.value("align_cache_errors_total", {"op": "put_embedding"}) == 1.0


def test_restarted_service_serves_the_finished_report_from_redis(
    eval_service: Any, spose_npy: Path
):
    first = eval_service()
    with backend(first) as b:
        computed = b.score(str(spose_npy), "things", options=OPTS)
        key = computed.provenance["report_key"]
    first.stop()

    second = eval_service()
    with backend(second) as b:
        again = b.score(str(spose_npy), "things", options=OPTS)
        assert again.provenance["cache"] == "hit"
        fetched = b.get_report(key)
    assert again.metrics == computed.metrics == fetched.metrics
    assert (
        second.metrics.value("align_cache_hits_total", {"kind": "report", "tier": "redis"}) == 1.0
    )
    assert second.metrics.total("align_report_computations_total") == 0.0


# -- bad input -----------------------------------------------------------------------------


def by_id(path: Path, **kw: Any) -> align_pb2.ScoreRequest:
    """A small request: the server embeds with a model id registered for the file."""
    fields: dict[str, Any] = dict(
        model=spose_model(path), dataset="things", options_json='{"n_bootstrap": 50}'
    )
    fields.update(kw)
    return align_pb2.ScoreRequest(**fields)


BAD_INPUT = [
    # (case, request from the SPoSE path, server config, status, words in the message)
    ("unknown model", lambda p: by_id(p, model="timm/tf_efficientnet_lite"), {},
     "NOT_FOUND", ["tf_efficientnet_lite0"]),
    ("unknown dataset", lambda p: by_id(p, dataset="thingz"), {}, "NOT_FOUND", ["'things'"]),
    ("empty request", lambda p: align_pb2.ScoreRequest(), {}, "INVALID_ARGUMENT", ["dataset"]),
    ("empty model", lambda p: by_id(p, model=""), {}, "INVALID_ARGUMENT", ["model"]),
    ("wrong layer", lambda p: by_id(p, layer="no_such_layer"), {},
     "NOT_FOUND", ["layer", "no_such_layer"]),
    ("options not an object", lambda p: by_id(p, options_json="[1, 2]"), {},
     "INVALID_ARGUMENT", ["options_json"]),
    ("unknown option", lambda p: by_id(p, options_json='{"bogus": 1}'), {},
     "INVALID_ARGUMENT", ["bogus"]),
    ("unknown metric", lambda p: by_id(p, metrics=["nope"]), {}, "INVALID_ARGUMENT", ["nope"]),
    ("features of another dataset", lambda p: features_request(p, dataset="mur92"), {},
     "INVALID_ARGUMENT", ["rows"]),
    ("oversize request", features_request, {"max_request_bytes": 200_000},
     "RESOURCE_EXHAUSTED", ["bytes", "200000"]),
    ("too many stimuli", by_id, {"max_stimuli": 1000},
     "RESOURCE_EXHAUSTED", ["1854", "stimuli"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "config", "code", "words"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_gets_the_right_status_and_the_server_keeps_serving(
    eval_service: Any, spose_npy: Path, build: Any, config: dict[str, Any], code: str, words: Any
):
    server = eval_service(**config)
    error = raw_score(server, build(spose_npy))
    assert isinstance(error, grpc.RpcError), "expected an error status"
    assert error.code().name == code, error.details()
    for w in words:
        assert w in error.details(), error.details()
    # the server keeps serving: another user's good request succeeds
    if "max_stimuli" in config:
        with backend(server, token=BOB) as b:
            assert "things" in {d["id"] for d in b.list_datasets()}
    else:
        good = raw_score(server, by_id(spose_npy), token=BOB)
        assert not isinstance(good, grpc.RpcError), good
        assert good[-1].WhichOneof("final") == "report_json"


@pytest.mark.parametrize("token", [None, "wrong-token-999", ""])
def test_missing_or_wrong_token_is_unauthenticated(eval_service: Any, spose_npy: Path, token):
    server = eval_service()
    error = raw_score(server, features_request(spose_npy), token=token)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in error.details()
    with grpc.insecure_channel(server.address) as channel:
        stub = align_pb2_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListDatasets(align_pb2.ListDatasetsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server.metrics.total("align_auth_failures_total") == 2.0
    good = raw_score(server, features_request(spose_npy), token=BOB)
    assert not isinstance(good, grpc.RpcError)


def test_client_raises_the_embedded_error_classes(eval_service: Any):
    from align.errors import InvalidInputError, NotFoundError
    from align.remote import AuthenticationError

    server = eval_service()
    with backend(server) as b:
        with pytest.raises(NotFoundError) as nf:
            b.score("timm/tf_efficientnet_lite", "things")
        assert "timm/tf_efficientnet_lite0" in nf.value.suggestions
        with pytest.raises(InvalidInputError) as bad:
            b.score("timm/tf_efficientnet_lite0", "things", metrics=["nope"])
        assert bad.value.field == "metrics"
    with backend(server, token="not-the-token") as b, pytest.raises(AuthenticationError):
        b.score("timm/tf_efficientnet_lite0", "things")


# -- single flight, queueing, shutdown -----------------------------------------------------


def test_concurrent_identical_requests_compute_once(eval_service: Any, gated: GatedFeatures):
    server = eval_service()
    n = 6
    with ThreadPoolExecutor(n) as pool:
        backends = [backend(server, token=ALICE if i % 2 else BOB) for i in range(n)]
        futures = [pool.submit(b.score, gated.id, "things", options=OPTS) for b in backends]
        gated.wait_entered()
        # all n requests are in: one computes, the others follow it
        deadline = 30.0
        import time

        t0 = time.monotonic()
        while server.metrics.total("align_singleflight_coalesced_total") < n - 1:
            assert time.monotonic() - t0 < deadline, "requests never joined the flight"
            time.sleep(0.02)
        gated.open()
        reports = [f.result(timeout=60) for f in futures]
        for b in backends:
            b.close()
    assert gated.calls == 1
    assert server.metrics.total("align_report_computations_total") == 1.0
    assert all(r.metrics == reports[0].metrics for r in reports)


def test_two_servers_share_one_computation_through_the_redis_lock(
    eval_service: Any, gated: GatedFeatures
):
    a, b = eval_service(), eval_service()
    behind_lock = threading.Event()

    def waiting_on_another_server(m: align_pb2.ScoreProgress) -> bool:
        return m.stage == "queued" and "another server" in m.message

    with ThreadPoolExecutor(2) as pool, backend(a) as ca:
        fa = pool.submit(ca.score, gated.id, "things", options=OPTS)
        gated.wait_entered()  # a holds the Redis lock and computes
        request = align_pb2.ScoreRequest(
            model=gated.id, dataset="things", options_json='{"n_bootstrap": 50}'
        )
        fb = pool.submit(watch_score, b, request, waiting_on_another_server, behind_lock)
        # the event b streams when it finds a's lock and waits behind it
        assert behind_lock.wait(30), "b never reported waiting on another server's lock"
        gated.open()
        ra = fa.result(timeout=60)
        messages = fb.result(timeout=60)
    assert not isinstance(messages, grpc.RpcError), messages
    assert messages[-1].WhichOneof("final") == "report_json" and messages[-1].cache_hit
    rb = json.loads(messages[-1].report_json)
    assert rb["metrics"] == json.loads(json.dumps(ra.metrics))
    assert gated.calls == 1
    total = a.metrics.total("align_report_computations_total") + b.metrics.total(
        "align_report_computations_total"
    )
    assert total == 1.0


def test_queued_request_streams_its_queue_position(
    eval_service: Any, gated: GatedFeatures, spose_npy: Path
):
    server = eval_service(max_workers=1)
    with ThreadPoolExecutor(2) as pool, backend(server) as ca:
        fa = pool.submit(ca.score, gated.id, "things", options=OPTS)
        gated.wait_entered()
        fb = pool.submit(raw_score, server, features_request(spose_npy), BOB)
        import time

        t0 = time.monotonic()
        while server.metrics.total("align_queued_work") < 1:
            assert time.monotonic() - t0 < 30
            time.sleep(0.02)
        gated.open()
        fa.result(timeout=60)
        messages = fb.result(timeout=60)
    assert not isinstance(messages, grpc.RpcError), messages
    positions = [m.queue_position for m in messages]
    assert 1 in positions
    assert messages[-1].WhichOneof("final") == "report_json"


def test_stop_refuses_new_calls_and_lets_inflight_finish(
    eval_service: Any, gated: GatedFeatures, redis_server: Any, spose_npy: Path
):
    import redis

    server = eval_service()
    with ThreadPoolExecutor(2) as pool, backend(server) as b:
        fut = pool.submit(b.score, gated.id, "things", options=OPTS)
        gated.wait_entered()
        stopping = pool.submit(server.stop, 10.0)
        wait_until_refusing(server)  # the server has begun its shutdown
        refused = raw_score(server, features_request(spose_npy))
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        gated.open()
        report = fut.result(timeout=60)
        stopping.result(timeout=60)
        key = report.provenance["report_key"]
    assert report.value("odd_one_out", "accuracy") > 0.5
    stored = redis.Redis.from_url(redis_server.url).get(f"align:v1:report:{key}")
    assert stored is not None
    import json

    assert json.loads(stored)["metrics"] == report.metrics


# -- dependencies and the small RPCs -------------------------------------------------------


def test_embedding_service_down_is_unavailable_with_retry_advice(eval_service: Any):
    from tests.ports import free_port

    server = eval_service(embedder=f"grpc://127.0.0.1:{free_port()}")
    error = raw_score(
        server, align_pb2.ScoreRequest(model="timm/tf_efficientnet_lite0", dataset="things")
    )
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry" in error.details() and "embedding service" in error.details()


def test_health_service_answers_serving_without_a_token(eval_service: Any):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = eval_service()
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "align.v1.EvaluationService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_list_datasets_and_unknown_report_key(eval_service: Any):
    from align.errors import InvalidInputError, NotFoundError

    server = eval_service()
    with backend(server) as b:
        datasets = {d["id"]: d for d in b.list_datasets()}
        assert datasets["things"]["present"] and datasets["things"]["kind"] == "triplets"
        with pytest.raises(NotFoundError):
            b.get_report("0" * 64)
        with pytest.raises(InvalidInputError) as info:
            b.get_report("not-a-key")
        assert info.value.field == "key"


def test_entry_point_serves_and_exits_cleanly_on_sigterm(tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.ports import free_port

    port = free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text("ops:ops-token-0000\n")
    env = dict(os.environ, ALIGN_TOKENS_FILE=str(tokens))
    env.pop("ALIGN_TOKENS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "align_services.evaluation", "--host", "127.0.0.1",
         "--port", str(port), "--redis", "off", "--metrics-port", "-1", "--grace", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    break
                except grpc.RpcError:
                    assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "server never became healthy"
                    time.sleep(0.2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert '"msg": "evaluation service stopped"' in log  # structured JSON logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
