"""A REAL redis-server for the service tests: started on a free loopback port, stopped
after the test; ``stop()`` / ``start()`` / ``restart()`` for fault tests (Redis dying in
the middle of a run). Registered as a pytest plugin by tests/conftest.py.

    def test_x(redis_server):
        redis_server.url        # redis://127.0.0.1:PORT/0
        redis_server.stop()     # Redis down: the service must stay correct
        redis_server.start()    # back, on the same port (empty: --save '')
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

REDIS_BIN = shutil.which("redis-server")


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1:``port`` (no persistence)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if REDIS_BIN is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        assert REDIS_BIN is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [
                REDIS_BIN,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--protected-mode", "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}; see "
                    f"{self.workdir / f'redis-{self.port}.log'}"
                )
            if _ping(self.port):
                self.starts += 1
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test (skips when redis-server is absent)."""
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed (make setup installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------
# The evaluation service over that Redis (in-process, its own event loop thread, local
# embedder: no Ray), shared by tests/services/test_evaluation*.py and test_remote*.py.

TOKENS = {"alice-token-0123": "alice", "bob-token-4567": "bob"}
ALICE, BOB = "alice-token-0123", "bob-token-4567"


@pytest.fixture(scope="session")
def spose_npy(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SPoSE 66-d THINGS embedding (human-derived) saved as a .npy features file."""
    import numpy as np
    from align.datasets import load_spose_embedding

    path = tmp_path_factory.mktemp("features") / "spose66.npy"
    np.save(path, load_spose_embedding(data_dir))
    return path


@pytest.fixture
def eval_service(redis_server: RedisServer, data_dir: Path) -> Iterator[Any]:
    """``make(**config) -> ThreadedServer`` on ``redis_server``; all stopped afterwards."""
    from align_services.evaluation.server import ServerConfig, ThreadedServer

    started: list[Any] = []

    def make(**overrides: Any) -> Any:
        values: dict[str, Any] = dict(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            redis_url=redis_server.url,
            tokens=dict(TOKENS),
            data_dir=str(data_dir),
            grace_s=10.0,
        )
        values.update(overrides)
        server = ThreadedServer(ServerConfig(**values))
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop(grace=2.0)
