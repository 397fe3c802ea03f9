"""Container health checks of the align stack (docker-compose `healthcheck:` and the
Kubernetes probes run this file). Exit code 0 = healthy, 1 = not (the reason on stderr).

    python deploy/docker/healthcheck.py serve        # the Serve app "embedding" answers
    python deploy/docker/healthcheck.py evaluation   # the evaluation service is SERVING
    python deploy/docker/healthcheck.py ray [--head] # this node's raylet (and the GCS) live

``serve`` calls ``grpc.health.v1.Health/Check`` through Ray Serve's gRPC proxy with the
metadata ``application: embedding``, on the gRPC port of ``$ALIGN_SERVE_CONFIG``
(default deploy/serve_config.yaml), so it is healthy only once the application runs.
``evaluation`` calls the same health service of the evaluation server on
``$ALIGN_EVAL_PORT`` (default 50051; no token needed). ``ray`` asks the node's dashboard
agent (``$RAY_DASHBOARD_AGENT_PORT``, default 52365) whether the raylet is alive and, with
``--head``, the dashboard (``$RAY_DASHBOARD_PORT``, default 8265) whether the GCS is: the
Kubernetes liveness/readiness probes of Ray pods (no curl/wget in the image).
``$ALIGN_HEALTH_HOST`` (default 127.0.0.1) is the host all of them connect to.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TIMEOUT_S = float(os.environ.get("ALIGN_HEALTH_TIMEOUT_S", "5"))


def serve_grpc_port(config: str | None = None) -> int:
    import yaml

    path = Path(config or os.environ.get("ALIGN_SERVE_CONFIG") or "deploy/serve_config.yaml")
    data = yaml.safe_load(path.read_text())
    return int((data.get("grpc_options") or {}).get("port", 9000))


def check(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> str | None:
    """None when ``target`` answers SERVING, else what went wrong."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S, metadata=metadata
            )
        except grpc.RpcError as e:
            return f"{target}: {e.code().name} {e.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str) -> str | None:
    """None when ``url`` answers 200 with a body that says success."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
            body = reply.read(200).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return f"{url}: {e}"
    if "success" not in body.lower():
        return f"{url}: answered {body!r}"
    return None


def check_ray(host: str, head: bool) -> str | None:
    agent = int(os.environ.get("RAY_DASHBOARD_AGENT_PORT", "52365"))
    problem = check_http(f"http://{host}:{agent}/api/local_raylet_healthz")
    if problem is None and head:
        dashboard = int(os.environ.get("RAY_DASHBOARD_PORT", "8265"))
        problem = check_http(f"http://{host}:{dashboard}/api/gcs_healthz")
    return problem


def main(argv: list[str]) -> int:
    host = os.environ.get("ALIGN_HEALTH_HOST", "127.0.0.1")
    what = argv[0] if argv else ""
    if what == "serve":
        problem = check(f"{host}:{serve_grpc_port()}", (("application", "embedding"),))
    elif what == "ray":
        problem = check_ray(host, head="--head" in argv[1:])
    elif what == "evaluation":
        problem = check(f"{host}:{int(os.environ.get('ALIGN_EVAL_PORT', '50051'))}")
    else:
        print("usage: healthcheck.py serve|evaluation|ray [--head]", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
