"""Deploy the ``embedding`` application from deploy/serve_config.yaml into a running Ray.

The same path ``serve run deploy/serve_config.yaml`` takes (start Serve with the config's
HTTP/gRPC options, then apply the config), so that ``align serve``, the test fixture and
the benchmark all run exactly the deployed configuration; they may only override ports,
application args (e.g. the replicas' ``device``) and resources (a laptop or CI box has
fewer CPUs than a server).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from align.errors import InvalidInputError, NotFoundError

APP_NAME = "embedding"
#: deploy/serve_config.yaml of the source tree (services/embedding/ -> repo root).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.yaml"


def config_path(path: str | Path | None = None) -> Path:
    """The Serve config to use: ``path``, else ``$ALIGN_SERVE_CONFIG``, else the repo's."""
    chosen = Path(path or os.environ.get("ALIGN_SERVE_CONFIG") or DEFAULT_CONFIG)
    if not chosen.is_file():
        raise InvalidInputError(
            "serve config", f"{chosen} does not exist", "a Ray Serve config YAML file"
        )
    return chosen


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read and validate the Serve config (as ``serve deploy`` would)."""
    from ray.serve.schema import ServeDeploySchema

    p = config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f"{p}, line {line + 1}" if line is not None else str(p)
        raise InvalidInputError(where, f"is not valid YAML: {e}", "a Serve config") from e
    if not isinstance(raw, dict):
        raise InvalidInputError(str(p), "is not a YAML mapping", "a Serve config")
    try:
        ServeDeploySchema.model_validate(raw)
    except Exception as e:  # pydantic's ValidationError names the field at fault
        raise InvalidInputError(str(p), f"is not a valid Serve config: {e}", "see Ray docs") from e
    return raw


def override(
    config: Mapping[str, Any],
    *,
    grpc_port: int | None = None,
    http_port: int | None = None,
    http_host: str | None = None,
    app_args: Mapping[str, Any] | None = None,
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A copy of ``config`` with ports, application args and per-deployment options
    replaced. ``deployments`` maps a deployment name to keys merged into its entry
    (``ray_actor_options`` and ``user_config`` are merged key by key). Serve uses a
    config entry's ``ray_actor_options`` as a whole instead of the code's, so giving them
    to a family deployment replaces the device preset of ``build_app`` (for a device,
    override ``app_args={"device": ...}`` or ``{"resources": ...}`` instead)."""
    out = copy.deepcopy(dict(config))
    if grpc_port is not None:
        out.setdefault("grpc_options", {})["port"] = int(grpc_port)
    if http_port is not None:
        out.setdefault("http_options", {})["port"] = int(http_port)
    if http_host is not None:
        out.setdefault("http_options", {})["host"] = http_host
    app = application(out)
    if app_args:
        app.setdefault("args", {}).update(copy.deepcopy(dict(app_args)))
    for name, changes in (deployments or {}).items():
        entries = app.setdefault("deployments", [])
        entry = next((d for d in entries if d.get("name") == name), None)
        if entry is None:
            raise NotFoundError("deployment", name, [d.get("name", "") for d in entries])
        for key, value in changes.items():
            if key in ("ray_actor_options", "user_config") and isinstance(value, Mapping):
                entry.setdefault(key, {}).update(value)
            elif key == "num_replicas":
                entry.pop("autoscaling_config", None)
                entry[key] = value
            else:
                entry[key] = value
    return out


def application(config: Mapping[str, Any], name: str = APP_NAME) -> dict[str, Any]:
    for app in config.get("applications", []):
        if app.get("name") == name:
            return app
    raise NotFoundError(
        "application", name, [a.get("name", "") for a in config.get("applications", [])]
    )


def grpc_port(config: Mapping[str, Any]) -> int:
    return int(config.get("grpc_options", {}).get("port", 9000))


def http_port(config: Mapping[str, Any]) -> int:
    return int(config.get("http_options", {}).get("port", 8000))


def deploy(config: Mapping[str, Any], timeout_s: float = 300.0) -> None:
    """Start Serve in the connected Ray (``ray.init`` first) and deploy ``config``;
    return once every application is RUNNING. Raises RuntimeError naming the failing
    deployment when one does not start."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(dict(config))
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        proxy_location=schema.proxy_location,
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema, _blocking=False)
    wait_running([a.name for a in schema.applications], timeout_s)


def wait_running(app_names: list[str], timeout_s: float) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {name: apps[name].status if name in apps else None for name in app_names}
        if all(s == ApplicationStatus.RUNNING for s in states.values()):
            return
        failed = [n for n, s in states.items() if s == ApplicationStatus.DEPLOY_FAILED]
        if failed:
            raise RuntimeError(
                f"Serve application {failed[0]!r} failed to deploy: {apps[failed[0]].message}"
            )
        last = "; ".join(f"{n}: {s}" for n, s in states.items())
        time.sleep(0.5)
    raise RuntimeError(f"Serve applications not RUNNING after {timeout_s:.0f}s ({last})")
