"""``align serve``: the whole service stack on one machine, stopped with Ctrl-C.

1. Redis: ``--redis-url`` (checked with a PING), or a local ``redis-server`` started
   here on 127.0.0.1 with a generated password and an append-only file under
   ``--state-dir`` (so a restart keeps the lab's results), on ``--redis-port`` (default
   6379, or a free port when 6379 is taken).
2. Ray (local) and the Ray Serve application ``embedding`` from deploy/serve_config.yaml
   (the same file ``serve deploy`` uses; only ports, the data folder and, with ``--gpu``,
   the replicas' device (app arg ``device: gpu``) are overridden).
3. The evaluation service (``python -m align_services.evaluation``) pointed at the
   embedding application and Redis.

Everything listens on 127.0.0.1 except the evaluation gRPC port, which listens on
``--host`` (the one door users reach, always behind a token; TLS with ``--tls-cert`` /
``--tls-key`` when it leaves the machine). Ray runs with its own token authentication
(``RAY_AUTH_MODE=token``, a token generated per start) and every Ray worker gets a setup
hook (:func:`confine_to_loopback`) that binds Ray Serve's gRPC proxy and the replicas'
inter-deployment gRPC servers to loopback (Serve itself binds them to all interfaces).
The embedding service only answers calls that carry the internal credential the
evaluation service is given (``ALIGN_INTERNAL_TOKEN``). Secrets travel in environment
variables and a 0600 config file, never on a command line (``ps`` shows those).

Prints where each part listens, then waits; Ctrl-C (or SIGTERM) stops everything in the
reverse order within 15 s. Run ``python -m align_services.stack --help``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.errors import DataMissingError, InvalidInputError

LOOPBACK = "127.0.0.1"
#: Env var naming the interface that Ray Serve's own servers must bind (the worker
#: setup hook reads it); the stack sets it to loopback.
BIND_ENV = "ALIGN_SERVE_BIND_HOST"
#: The internal credential the embedding service requires from the evaluation service.
INTERNAL_TOKEN_ENV = "ALIGN_INTERNAL_TOKEN"
DEFAULT_REDIS_PORT = 6379
#: Ray reads it at import: "0" = a single-machine cluster whose node address is loopback.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get("ALIGN_STATE_DIR") or Path(base) / "align" / "serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="align serve",
        description="Run Redis, Ray Serve (embedding) and the evaluation service locally. "
        "Only the evaluation gRPC port listens on --host; everything else on 127.0.0.1.",
    )
    p.add_argument("--config", help="Serve config (default deploy/serve_config.yaml)")
    p.add_argument(
        "--host",
        default=LOOPBACK,
        help="interface of the evaluation gRPC port, the only port users reach "
        "(default 127.0.0.1; e.g. 0.0.0.0 for the lab network, with tokens and TLS)",
    )
    p.add_argument(
        "--port",
        "--eval-port",
        dest="eval_port",
        type=int,
        default=50051,
        help="evaluation gRPC port (default 50051)",
    )
    p.add_argument("--grpc-port", type=int, help="Ray Serve gRPC port, loopback (config: 9000)")
    p.add_argument("--http-port", type=int, help="Ray Serve HTTP port, loopback (config: 8000)")
    p.add_argument(
        "--eval-metrics-port", type=int, default=9101, help="evaluation metrics, loopback"
    )
    p.add_argument("--ray-metrics-port", type=int, default=8080, help="Ray metrics, loopback")
    p.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    p.add_argument(
        "--redis-port",
        type=int,
        help=f"port of the started Redis (default {DEFAULT_REDIS_PORT}, or a free port "
        "when that one is taken)",
    )
    p.add_argument(
        "--state-dir",
        help="folder of the started Redis's append-only file (default $ALIGN_STATE_DIR "
        "or ~/.local/share/align/serve)",
    )
    p.add_argument(
        "--redis-maxmemory",
        default="0",
        help="maxmemory of the started Redis (e.g. 4gb; 0 = no limit); allkeys-lru evicts",
    )
    p.add_argument("--cache-ttl", type=int, help="seconds a cached report/embedding lives")
    p.add_argument("--num-cpus", type=float, help="CPUs Ray may use (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs Ray may use (default: all)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="family replicas on the GPU: app arg device=gpu (the config's gpu resources "
        "preset); default: the config's device (auto: GPU when Ray has one)",
    )
    p.add_argument("--data-dir", help="human data folder (default $ALIGN_DATA_DIR)")
    p.add_argument(
        "--datasets-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of dataset folders; each sub-folder is offered to clients by its name "
        "(repeatable)",
    )
    p.add_argument("--no-evaluation", action="store_true", help="only Redis + Ray Serve")
    p.add_argument("--tokens-file", help="evaluation tokens (default $ALIGN_TOKENS_FILE)")
    p.add_argument("--tls-cert", help="TLS certificate of the evaluation port (PEM)")
    p.add_argument("--tls-key", help="TLS private key of the evaluation port (PEM)")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="evaluation service accepts calls without a token (loopback only)",
    )
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (loopback)")
    return p


def confine_to_loopback() -> None:
    """Ray worker setup hook: bind Ray Serve's own gRPC servers to ``$ALIGN_SERVE_BIND_HOST``.

    Ray Serve binds its gRPC proxy and each replica's inter-deployment gRPC server to
    ``[::]`` (all interfaces) with no option to change it; this rewrites those addresses
    in the worker processes of a stack that asked for it. Without the variable it does
    nothing. tests/services/test_listeners.py checks the effect on a running stack.
    """
    host = os.environ.get(BIND_ENV)
    if not host:
        return

    def confine(address: str) -> str:
        for wildcard in ("[::]:", "0.0.0.0:"):
            if address.startswith(wildcard):
                return f"{host}:{address[len(wildcard) :]}"
        return address

    from ray._common import tls_utils
    from ray.serve._private import default_impl

    add_port = tls_utils.add_port_to_grpc_server
    add_address = default_impl.add_grpc_address
    if getattr(add_port, "_align_confined", False):
        return

    def add_port_confined(server: Any, address: str) -> Any:
        return add_port(server, confine(address))

    def add_address_confined(server: Any, address: str) -> Any:
        return add_address(server, confine(address))

    add_port_confined._align_confined = True  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = add_port_confined
    default_impl.add_grpc_address = add_address_confined  # type: ignore[assignment]
    replica = sys.modules.get("ray.serve._private.replica")
    if replica is not None:
        replica.add_port_to_grpc_server = add_port_confined  # type: ignore[attr-defined]


@dataclass
class Stack:
    """What was started here (and must be stopped here)."""

    redis_url: str = ""
    redis_proc: subprocess.Popen[bytes] | None = None
    ray_started: bool = False
    serve_started: bool = False
    eval_proc: subprocess.Popen[bytes] | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    internal_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def stop(self) -> None:
        """Stop in reverse order; every step runs even when an earlier one fails."""
        if self.eval_proc is not None:
            _terminate(self.eval_proc, "evaluation service", timeout_s=8.0)
            self.eval_proc = None
        if self.serve_started and not self.ray_started:
            # (a Ray of our own goes down as a whole below: no separate Serve shutdown,
            # which would wait for each deployment's graceful shutdown)
            try:
                from ray import serve

                serve.shutdown()
            except Exception as e:
                print(f"align serve: Serve shutdown: {e}", file=sys.stderr)
            self.serve_started = False
        if self.ray_started:
            import ray

            ray.shutdown()
            self.ray_started = False
        if self.redis_proc is not None:
            _terminate(self.redis_proc, "redis-server", timeout_s=5.0)
            self.redis_proc = None


def _terminate(proc: subprocess.Popen[bytes], what: str, timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"align serve: {what} did not stop in {timeout_s:.0f}s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def _wait_port(host: str, port: int, timeout_s: float, proc: Any = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} is not listening on {host}:{port} after {timeout_s:.0f}s")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _connect_host(host: str) -> str:
    """Where to connect to reach a server bound to ``host``."""
    return LOOPBACK if host in ("0.0.0.0", "", "::", "[::]") else host


def start_redis(stack: Stack, args: argparse.Namespace) -> None:
    import redis

    if args.redis_url:
        url = args.redis_url
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        except (redis.RedisError, ValueError) as e:
            raise InvalidInputError(
                "--redis-url",
                f"{_redact(url)} does not answer PING ({e})",
                "a reachable Redis, e.g. redis://:PASSWORD@localhost:6379/0",
            ) from e
        stack.redis_url = url
        stack.endpoints["redis"] = _redact(url) + " (given)"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise DataMissingError(
            "redis-server is not installed: install it (apt-get install redis-server) "
            "or pass --redis-url redis://HOST:PORT/0"
        )
    port = args.redis_port
    if port is None:
        port = DEFAULT_REDIS_PORT if _port_free(LOOPBACK, DEFAULT_REDIS_PORT) else _free_port()
    elif not _port_free(LOOPBACK, port):
        raise InvalidInputError(
            "--redis-port",
            f"{port} is already in use",
            "a free port (or no --redis-port: a free one is picked), or --redis-url",
        )
    state = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = secrets.token_urlsafe(32)
    conf = state / "redis.conf"
    # The password goes in a 0600 file, not on the command line (``ps`` shows that).
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {LOOPBACK}",
                    "protected-mode yes",
                    f'requirepass "{password}"',
                    f'dir "{state}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    'appenddirname "appendonly"',
                    'save ""',
                    f"maxmemory {args.redis_maxmemory}",
                    "maxmemory-policy allkeys-lru",
                    'logfile ""',
                ]
            )
            + "\n"
        )
    stack.redis_proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL)
    _wait_redis(port, password, stack.redis_proc)
    stack.redis_url = f"redis://:{password}@{LOOPBACK}:{port}/0"
    stack.endpoints["redis"] = f"redis://{LOOPBACK}:{port}/0  (password; data in {state})"


def _wait_redis(port: int, password: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until Redis answers PING (it may first replay a long append-only file)."""
    import redis

    client = redis.Redis(host=LOOPBACK, port=port, password=password, socket_timeout=2)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode} at start")
        try:
            if client.ping():
                return
        except redis.BusyLoadingError:
            pass
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server does not answer PING on {LOOPBACK}:{port}")
        time.sleep(0.1)


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


def worker_env(args: argparse.Namespace, stack: Stack | None = None) -> dict[str, str]:
    env = {
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
        "RAY_USAGE_STATS_ENABLED": "0",
        BIND_ENV: LOOPBACK,
        SINGLE_NODE_ENV: "0",
    }
    if stack is not None:
        env[INTERNAL_TOKEN_ENV] = stack.internal_token
    data_dir = args.data_dir or os.environ.get("ALIGN_DATA_DIR")
    if data_dir:
        env["ALIGN_DATA_DIR"] = str(Path(data_dir).resolve())
    return env


def serve_config(args: argparse.Namespace) -> dict[str, Any]:
    from align_services.embedding import deploy
    from align_services.embedding.app import DEVICE_ENV, replica_resources

    config = deploy.load_config(args.config)
    app_args: dict[str, Any] = {}
    if args.gpu:
        # the app builder's own device choice; ALIGN_DEVICE (inherited by Ray) would win
        app_args["device"] = "gpu"
        config_args = deploy.application(config).get("args") or {}
        device, _ = replica_resources({**config_args, **app_args}, cluster_gpus=lambda: 0)
        if device != "gpu":
            raise InvalidInputError(
                "--gpu",
                f"conflicts with {DEVICE_ENV}={os.environ.get(DEVICE_ENV)!r} in the environment",
                f"no --gpu, or {DEVICE_ENV} unset or gpu",
            )
    data_dir = args.data_dir or os.environ.get("ALIGN_DATA_DIR")
    if data_dir:
        app_args["data_dir"] = str(Path(data_dir).resolve())
    return deploy.override(
        config,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        http_host=LOOPBACK,
        app_args=app_args,
    )


def start_serve(stack: Stack, args: argparse.Namespace, config: dict[str, Any]) -> None:
    import ray
    from align_services.embedding import deploy

    enable_ray_token_auth()
    env = worker_env(args, stack)
    for key, value in env.items():
        os.environ[key] = value
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            include_dashboard=args.dashboard,
            dashboard_host=LOOPBACK,
            runtime_env={
                "env_vars": env,
                "worker_process_setup_hook": "align_services.stack.confine_to_loopback",
            },
            _node_ip_address=LOOPBACK,
            _metrics_export_port=args.ray_metrics_port,
        )
        stack.ray_started = True
    stack.serve_started = True
    deploy.deploy(config, timeout_s=600)
    stack.endpoints["embedding gRPC"] = (
        f"{LOOPBACK}:{deploy.grpc_port(config)}  (internal: metadata application="
        f"{deploy.APP_NAME} + the internal credential)"
    )
    stack.endpoints["Serve HTTP"] = f"http://{LOOPBACK}:{deploy.http_port(config)}"
    stack.endpoints["Ray metrics"] = f"http://{LOOPBACK}:{args.ray_metrics_port}/metrics"


def enable_ray_token_auth() -> None:
    """Ray's own token authentication: its GCS, raylet and worker ports refuse calls
    without this token (a fresh one per start; Ray's child processes inherit it). Also
    Ray's single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what Ray does on
    macOS): the node's address is 127.0.0.1 instead of the machine's IP, so the agents,
    dashboard and workers that bind the node address bind loopback."""
    os.environ[SINGLE_NODE_ENV] = "0"
    if os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if "ray" in sys.modules:  # Ray read its config at import: make it read the mode again
        from ray._raylet import Config

        Config.initialize("")


def start_evaluation(stack: Stack, args: argparse.Namespace, config: dict[str, Any]) -> None:
    from align_services.embedding import deploy

    if args.insecure_no_auth and args.host != LOOPBACK:
        raise InvalidInputError(
            "--insecure-no-auth", f"with --host {args.host}", "only with --host 127.0.0.1"
        )
    env = dict(os.environ)
    env.update(worker_env(args, stack))
    # secrets in the environment, not on the command line
    env["ALIGN_REDIS_URL"] = stack.redis_url
    if args.tls_cert:
        env["ALIGN_TLS_CERT"] = args.tls_cert
    if args.tls_key:
        env["ALIGN_TLS_KEY"] = args.tls_key
    if args.tokens_file:
        env["ALIGN_TOKENS_FILE"] = args.tokens_file
    target = f"{LOOPBACK}:{deploy.grpc_port(config)}"
    cmd = [
        sys.executable, "-m", "align_services.evaluation",
        "--host", args.host,
        "--port", str(args.eval_port),
        "--metrics-host", LOOPBACK,
        "--metrics-port", str(args.eval_metrics_port),
        "--grace", "5",  # Ctrl-C stops the whole stack within 15 s
        "--embedder", f"grpc://{target}",
    ]  # fmt: skip
    for folder in args.datasets_dir:
        cmd += ["--datasets-dir", folder]
    if args.cache_ttl:
        cmd += ["--cache-ttl", str(args.cache_ttl)]
    if args.insecure_no_auth:
        cmd += ["--insecure-no-auth"]
    stack.eval_proc = subprocess.Popen(cmd, env=env)
    _wait_healthy(_connect_host(args.host), args.eval_port, stack.eval_proc, bool(args.tls_cert))
    scheme = "grpcs" if args.tls_cert else "grpc"
    stack.endpoints["evaluation gRPC"] = f"{scheme}://{args.host}:{args.eval_port}  (token)"
    stack.endpoints["evaluation metrics"] = f"http://{LOOPBACK}:{args.eval_metrics_port}/metrics"


def _wait_healthy(host: str, port: int, proc: subprocess.Popen[bytes], tls: bool) -> None:
    """Wait until the evaluation service listens and its gRPC health answers SERVING."""
    _wait_port(host, port, 120, proc, "evaluation service")
    if tls:  # the port answers; its certificate may name another host than loopback
        return
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 60
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"evaluation service exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("evaluation service does not answer its health check")
            time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    enable_ray_token_auth()  # before anything imports ray
    stack = Stack()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT explicitly too: a background job of a script inherits SIGINT ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        config = serve_config(args)
        start_redis(stack, args)
        start_serve(stack, args, config)
        for sig in previous:  # ray.init installs its own SIGTERM handler: ours again
            signal.signal(sig, on_signal)
        if not args.no_evaluation:
            start_evaluation(stack, args, config)
        print("align serve: running (Ctrl-C stops everything)")
        for name, where in stack.endpoints.items():
            print(f"  {name}  {where}")
        sys.stdout.flush()
        while True:
            time.sleep(0.5)
            for proc, what in (
                (stack.eval_proc, "evaluation service"),
                (stack.redis_proc, "redis-server"),
            ):
                if proc is not None and proc.poll() is not None:
                    print(
                        f"align serve: {what} exited with code {proc.returncode}; stopping",
                        file=sys.stderr,
                    )
                    return 1
    except KeyboardInterrupt:
        return 0
    except (InvalidInputError, DataMissingError, RuntimeError) as e:
        print(f"align serve: {e}", file=sys.stderr)
        return 2
    finally:
        print("align serve: stopping", file=sys.stderr)
        for sig in previous:  # a second Ctrl-C must not interrupt the shutdown
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
