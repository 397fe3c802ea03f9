"""``align serve``: the whole service stack on one machine, stopped with Ctrl-C.

1. Redis: ``--redis-url`` (checked with a PING), or a local ``redis-server`` started
   here (no persistence) on ``--redis-port``.
2. Ray (local) and the Ray Serve application ``embedding`` from deploy/serve_config.yaml
   (the same file ``serve deploy`` uses; only ports, the data folder and, with ``--gpu``,
   the replicas' device (app arg ``device: gpu``) are overridden).
3. The evaluation service (``python -m align_services.evaluation``) pointed at the
   embedding application and Redis.

Prints where each part listens, then waits; Ctrl-C (or SIGTERM) stops everything in the
reverse order. Run ``python -m align_services.stack --help``.
"""

from __future__ import annotations

import argparse
import os
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="align serve",
        description="Run Redis, Ray Serve (embedding) and the evaluation service locally.",
    )
    p.add_argument("--config", help="Serve config (default deploy/serve_config.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--grpc-port", type=int, help="Ray Serve gRPC port (config: 9000)")
    p.add_argument("--http-port", type=int, help="Ray Serve HTTP port (config: 8000)")
    p.add_argument("--eval-port", type=int, default=50051, help="evaluation gRPC port")
    p.add_argument("--eval-metrics-port", type=int, default=9101, help="evaluation metrics")
    p.add_argument("--ray-metrics-port", type=int, default=8080, help="Ray metrics export")
    p.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    p.add_argument("--redis-port", type=int, default=6379, help="port of a started Redis")
    p.add_argument("--num-cpus", type=float, help="CPUs Ray may use (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs Ray may use (default: all)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="family replicas on the GPU: app arg device=gpu (the config's gpu resources "
        "preset); default: the config's device (auto: GPU when Ray has one)",
    )
    p.add_argument("--data-dir", help="human data folder (default $ALIGN_DATA_DIR)")
    p.add_argument("--no-evaluation", action="store_true", help="only Redis + Ray Serve")
    p.add_argument("--tokens-file", help="evaluation tokens (default $ALIGN_TOKENS_FILE)")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="evaluation service accepts calls without a token (local use only)",
    )
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard")
    return p


@dataclass
class Stack:
    """What was started here (and must be stopped here)."""

    redis_url: str = ""
    redis_proc: subprocess.Popen[bytes] | None = None
    ray_started: bool = False
    serve_started: bool = False
    eval_proc: subprocess.Popen[bytes] | None = None
    endpoints: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop in reverse order; every step runs even when an earlier one fails."""
        if self.eval_proc is not None:
            _terminate(self.eval_proc, "evaluation service")
            self.eval_proc = None
        if self.serve_started:
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
            _terminate(self.redis_proc, "redis-server")
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


def start_redis(stack: Stack, args: argparse.Namespace) -> None:
    import redis

    if args.redis_url:
        url = args.redis_url
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        except (redis.RedisError, ValueError) as e:
            raise InvalidInputError(
                "--redis-url",
                f"{url} does not answer PING ({e})",
                "a reachable Redis, e.g. redis://localhost:6379/0",
            ) from e
        stack.redis_url = url
        stack.endpoints["redis"] = url + " (given)"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise DataMissingError(
            "redis-server is not installed: install it (apt-get install redis-server) "
            "or pass --redis-url redis://HOST:PORT/0"
        )
    if not _port_free(args.host, args.redis_port):
        raise InvalidInputError(
            "--redis-port",
            f"{args.redis_port} is already in use",
            "a free port, or --redis-url for the Redis that listens there",
        )
    stack.redis_proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(args.redis_port),
            "--bind",
            args.host,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    _wait_port(args.host, args.redis_port, 20, stack.redis_proc, "redis-server")
    stack.redis_url = f"redis://{args.host}:{args.redis_port}/0"
    stack.endpoints["redis"] = stack.redis_url


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
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
        http_host=args.host,
        app_args=app_args,
    )


def start_serve(stack: Stack, args: argparse.Namespace, config: dict[str, Any]) -> None:
    import ray
    from align_services.embedding import deploy

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    env = worker_env(args)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            include_dashboard=args.dashboard,
            runtime_env={"env_vars": env},
            _metrics_export_port=args.ray_metrics_port,
        )
        stack.ray_started = True
    stack.serve_started = True
    deploy.deploy(config, timeout_s=600)
    host = args.host
    stack.endpoints["embedding gRPC"] = (
        f"{host}:{deploy.grpc_port(config)}  (metadata application={deploy.APP_NAME})"
    )
    stack.endpoints["Serve HTTP"] = f"http://{host}:{deploy.http_port(config)}"
    stack.endpoints["Ray metrics"] = f"http://{host}:{args.ray_metrics_port}/metrics"


def start_evaluation(stack: Stack, args: argparse.Namespace, config: dict[str, Any]) -> None:
    from align_services.embedding import deploy

    env = dict(os.environ)
    env.update(worker_env(args))
    target = f"{args.host}:{deploy.grpc_port(config)}"
    cmd = [
        sys.executable, "-m", "align_services.evaluation",
        "--host", args.host,
        "--port", str(args.eval_port),
        "--metrics-port", str(args.eval_metrics_port),
        "--redis", stack.redis_url,
        "--embedder", f"grpc://{target}",
    ]  # fmt: skip
    if args.tokens_file:
        cmd += ["--tokens-file", args.tokens_file]
    if args.insecure_no_auth:
        cmd += ["--insecure-no-auth"]
    stack.eval_proc = subprocess.Popen(cmd, env=env)
    _wait_port(args.host, args.eval_port, 120, stack.eval_proc, "evaluation service")
    stack.endpoints["evaluation gRPC"] = f"{args.host}:{args.eval_port}"
    stack.endpoints["evaluation metrics"] = f"http://{args.host}:{args.eval_metrics_port}/metrics"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        width = max(len(k) for k in stack.endpoints)
        print("align serve: running (Ctrl-C stops everything)")
        for name, where in stack.endpoints.items():
            print(f"  {name:<{width}}  {where}")
        sys.stdout.flush()
        while True:
            time.sleep(1.0)
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
