"""align.remote: the client side of the evaluation service (connect, env selection,
retries with backoff, clear errors)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from align.errors import InvalidInputError, NotFoundError, ResourceLimitError
from align.remote import (
    RemoteBackend,
    ServiceUnavailableError,
    error_from_status,
    parse_server,
)

from tests.ports import free_port
from tests.services.redis_fixtures import ALICE, TOKENS

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]


def test_connect_returns_a_client_that_scores_like_embedded(eval_service: Any, spose_npy: Path):
    import align
    from align.api import connect

    server = eval_service()
    with connect(server.address, token=ALICE) as client:
        assert isinstance(client.backend, RemoteBackend)
        remote = client.score(str(spose_npy), "things", n_bootstrap=50)
    embedded = align.score(str(spose_npy), "things", cache=False, n_bootstrap=50)
    assert remote.metrics == embedded.metrics
    assert remote.provenance["weights_digest"] == embedded.provenance["weights_digest"]
    assert remote.provenance["dataset_digest"] == embedded.provenance["dataset_digest"]


def test_align_server_and_token_env_select_the_remote_backend(
    eval_service: Any, spose_npy: Path, monkeypatch: pytest.MonkeyPatch
):
    import align.api

    server = eval_service()
    monkeypatch.setenv("ALIGN_SERVER", server.address)
    monkeypatch.setenv("ALIGN_TOKEN", ALICE)
    monkeypatch.setattr(align.api, "_default_client", None)
    report = align.api.score(str(spose_npy), "things", n_bootstrap=50)
    assert report.provenance["backend"] == "remote"
    assert server.metrics.total("align_report_computations_total") == 1.0


def test_cli_score_runs_on_the_server_from_env_or_flags(
    eval_service: Any, spose_npy: Path, tmp_path: Path
):
    import json
    import os
    import shutil
    import subprocess
    import sys

    server = eval_service()
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGN_SERVER", "ALIGN_TOKEN")}
    env["ALIGN_CACHE_DIR"] = str(tmp_path / "local-cache")  # must stay unused

    def cli(*args: str, **extra: str) -> tuple[dict[str, Any], str]:
        proc = subprocess.run(
            [sys.executable, "-m", "align", "score", *args, "--json", "-O", "n_bootstrap=20"],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), proc.stderr

    first, said = cli(str(spose_npy), "things", ALIGN_SERVER=server.address, ALIGN_TOKEN=ALICE)
    assert first["provenance"]["backend"] == "remote"
    assert first["provenance"]["cache"] == "miss"
    assert f"on the server at {server.address}" in said
    # the same content in another file, by flags: a server cache hit that names this file
    copy = Path(shutil.copy(spose_npy, tmp_path / "copy.npy"))
    second, _ = cli(str(copy), "things", "--server", server.address, "--token", ALICE)
    assert second["provenance"]["backend"] == "remote"
    assert second["provenance"]["cache"] == "hit"
    assert second["model"] == second["provenance"]["model_id"] == f"features:{copy}"
    assert second["metrics"] == first["metrics"]
    assert server.metrics.total("align_report_computations_total") == 1.0
    assert not (tmp_path / "local-cache").exists()


def test_unreachable_server_gives_a_clear_error_after_retries():
    target = f"127.0.0.1:{free_port()}"
    with RemoteBackend(target, ALICE, retries=2, backoff_s=0.01, progress=False) as b:
        with pytest.raises(ServiceUnavailableError) as info:
            b.score("timm/tf_efficientnet_lite0", "things")
    message = str(info.value)
    assert target in message and "after 3 attempts" in message and "ALIGN_SERVER" in message


class _BackoffClock:
    """Stands in for ``align.remote``'s ``time`` module: records each backoff sleep of the
    client and sets ``first_backoff`` when the client has failed once and backs off."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.first_backoff = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.first_backoff.set()
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_retries_with_backoff_until_the_server_comes_up(
    spose_npy: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    import align.remote
    from align_services.evaluation.server import ServerConfig, ThreadedServer

    clock = _BackoffClock()
    monkeypatch.setattr(align.remote, "time", clock)
    port = free_port()
    holder: dict[str, Any] = {}

    def start_late() -> None:
        # start only once the client has failed and is backing off (its own event)
        assert clock.first_backoff.wait(60), "the client never retried"
        holder["server"] = ThreadedServer(
            ServerConfig(
                host="127.0.0.1",
                port=port,
                metrics_port=None,
                redis_url=None,  # no Redis at all: still correct
                tokens=dict(TOKENS),
                data_dir=str(data_dir),
            )
        )

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        with RemoteBackend(
            f"grpc://127.0.0.1:{port}", ALICE, retries=8, backoff_s=0.2, progress=False
        ) as b:
            report = b.score(str(spose_npy), "things", options={"n_bootstrap": 50})
        assert 0.5 < report.value("odd_one_out", "accuracy") < 1.0
        assert 1 <= len(clock.delays) <= 8  # it did retry, within its budget
    finally:
        starter.join()
        if "server" in holder:
            holder["server"].stop(grace=1.0)


@pytest.mark.parametrize("bad", ["", "localhost", "http://x:1", "host:port", ":50051"])
def test_bad_server_address_names_the_field(bad: str):
    with pytest.raises(InvalidInputError) as info:
        parse_server(bad)
    assert info.value.field == "server"


def test_server_address_forms():
    assert parse_server("localhost:50051") == ("localhost:50051", False)
    assert parse_server("grpc://10.0.0.1:1") == ("10.0.0.1:1", False)
    assert parse_server("grpcs://eval.example.org:443") == ("eval.example.org:443", True)


def test_status_without_align_metadata_still_maps_to_align_errors():
    err = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "layer: is '' (expected a name)")
    assert isinstance(err, InvalidInputError) and err.field == "layer"
    assert isinstance(error_from_status(grpc.StatusCode.NOT_FOUND, "unknown x"), NotFoundError)
    assert isinstance(
        error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"), ResourceLimitError
    )
    assert isinstance(error_from_status(grpc.StatusCode.UNAVAILABLE, "down"), ConnectionError)


def test_tls_with_a_private_ca(tmp_path: Path, spose_npy: Path, data_dir: Path):
    import shutil
    import subprocess

    from align_services.evaluation.server import ServerConfig, ThreadedServer

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = ThreadedServer(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=None,
            redis_url=None,
            tokens=dict(TOKENS),
            data_dir=str(data_dir),
            tls_cert=str(cert),
            tls_key=str(key),
        )
    )
    try:
        with RemoteBackend(
            f"grpcs://localhost:{server.port}", ALICE, root_certificates=cert, progress=False
        ) as b:
            datasets = b.list_datasets()
        assert any(d["id"] == "things" for d in datasets)
        # a plaintext client cannot talk to the TLS port
        with RemoteBackend(f"localhost:{server.port}", ALICE, retries=0, progress=False) as b:
            with pytest.raises(ServiceUnavailableError):
                b.list_datasets()
    finally:
        server.stop(grace=1.0)


class _CountingServicer:
    """A real gRPC EvaluationService that answers every call with one status code and
    counts the calls it received."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.calls = 0
        self.lock = threading.Lock()

    def handler(self) -> Any:
        from align.v1 import align_pb2_grpc

        outer = self

        class Servicer(align_pb2_grpc.EvaluationServiceServicer):
            def Score(self, request: Any, context: Any) -> Any:
                with outer.lock:
                    outer.calls += 1
                context.abort(outer.code, "try again later")

        return Servicer()


@pytest.mark.parametrize(
    ("code", "retries", "calls"),
    [
        (grpc.StatusCode.UNAVAILABLE, 0, 1),
        (grpc.StatusCode.UNAVAILABLE, 3, 4),  # retried: 1 + retries calls
        (grpc.StatusCode.INVALID_ARGUMENT, 3, 1),  # never retried
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 3, 1),
    ],
)
def test_client_makes_exactly_one_plus_retries_calls_on_unavailable(
    code: grpc.StatusCode, retries: int, calls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent import futures

    import align.remote
    from align.errors import AlignError
    from align.v1 import align_pb2_grpc

    clock = _BackoffClock()
    monkeypatch.setattr(align.remote, "time", clock)
    counting = _CountingServicer(code)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    align_pb2_grpc.add_EvaluationServiceServicer_to_server(counting.handler(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RemoteBackend(
            f"127.0.0.1:{port}", ALICE, retries=retries, backoff_s=0.01, max_backoff_s=0.04,
            progress=False,
        ) as b:  # fmt: skip
            with pytest.raises(AlignError) as info:
                b.score("timm/tf_efficientnet_lite0", "things")
    finally:
        server.stop(0)
    assert counting.calls == calls
    assert len(clock.delays) == calls - 1
    # exponential backoff with jitter in [0.5, 1] x min(max, base * 2**attempt)
    for attempt, delay in enumerate(clock.delays):
        cap = min(0.04, 0.01 * 2**attempt)
        assert 0.5 * cap <= delay <= cap
    if code == grpc.StatusCode.UNAVAILABLE:
        assert isinstance(info.value, ServiceUnavailableError)
        assert f"after {calls} attempts" in str(info.value)
