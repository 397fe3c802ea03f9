"""Deployment files, checked statically (no Docker engine, no Kubernetes needed).

docker-compose.yml (+ deploy/compose.gpu.yml), the image (deploy/docker/Dockerfile,
.dockerignore), Prometheus and Grafana provisioning, the KubeRay manifests, and the rule
that ONE Serve config (deploy/serve_config.yaml) feeds `serve deploy`, the compose stack,
`align serve` and the RayService. The stack itself runs in tests/test_deploy_stack.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (extra 'serve')")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "deploy" / "compose.gpu.yml"
SERVE_CONFIG = REPO / "deploy" / "serve_config.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
KUBERAY = REPO / "deploy" / "kuberay"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "align.json"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"

#: Values for the variables the compose file requires (`${VAR:?...}`).
REQUIRED_ENV = {
    "ALIGN_TOKENS": "deploy-test:not-a-secret",
    "GRAFANA_ADMIN_PASSWORD": "x",
    "REDIS_PASSWORD": "deploy-test-redis-password",
}


# ----------------------------------------------------------------------------------------
# helpers (also used by tests/test_deploy_stack.py)

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?$", re.S)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (`$$`, `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`,
    `${VAR:?e}`, `${VAR?e}`) over a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        parts = _BRACED.match(m.group("braced") or "")
        assert parts, f"bad substitution {m.group(0)!r}"
        name, op, arg = parts.group("name"), parts.group("op"), parts.group("arg")
        have = env.get(name)
        if op == ":-":
            return have if have else arg
        if op == "-":
            return arg if have is None else have
        if op in (":?", "?"):
            if have is None or (op == ":?" and not have):
                raise KeyError(f"{name}: {arg}")
            return have
        return have or ""

    return _VAR.sub(one, value)


def load_compose(*extra: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml (merged with the given override files, key by key for the parts
    this project overrides) with variables substituted from ``env`` (default: REQUIRED_ENV)."""
    env = dict(REQUIRED_ENV if env is None else env)
    config = interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    for path in extra:
        override = interpolate(yaml.safe_load(path.read_text()), env)
        for name, service in override.get("services", {}).items():
            base = config["services"].setdefault(name, {})
            for key, value in service.items():
                if isinstance(value, dict) and isinstance(base.get(key), dict):
                    base[key] = {**base[key], **value}
                else:
                    base[key] = value
    return config


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def docker_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (make system-deps installs it)")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIGN_", "GRAFANA_"))}
    full_env.update(REQUIRED_ENV if env is None else env)
    return subprocess.run(
        [binary, "--project-directory", str(REPO), "-f", str(COMPOSE), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """The metric names used in the dashboard's PromQL expressions."""
    names: set[str] = set()
    keywords = {
        "sum", "rate", "irate", "increase", "histogram_quantile", "by", "without", "on",
        "ignoring", "avg", "max", "min", "count", "le", "and", "or", "unless", "group_left",
        "group_right", "offset", "bool", "topk", "bottomk", "abs", "clamp_min", "clamp_max",
    }  # fmt: skip
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
            expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # groupings
            for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
                if token not in keywords:
                    names.add(token)
    return names


# ----------------------------------------------------------------------------------------
# docker-compose


@pytest.mark.parametrize("override", [None, GPU_OVERRIDE], ids=["cpu", "gpu-override"])
def test_docker_compose_config_accepts_the_file(override: Path | None) -> None:
    args = ["-f", str(override)] if override else []
    result = docker_compose(*args, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert {"redis", "ray-head", "evaluation", "prometheus", "grafana"} <= set(resolved["services"])
    devices = (
        resolved["services"]["ray-head"]
        .get("deploy", {})
        .get("resources", {})
        .get("reservations", {})
        .get("devices", [])
    )
    device = environment(resolved["services"]["ray-head"]).get("ALIGN_DEVICE")
    if override:
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        assert resolved["services"]["ray-head"]["image"].endswith("-cuda")
        assert device == "gpu"  # the app builder gives the replicas the gpu preset
    else:
        assert devices == []
        assert resolved["services"]["ray-head"]["image"].endswith("-cpu")
        assert device is None  # the config's device (auto: cpu without GPUs)


def test_docker_compose_config_names_the_missing_token() -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != "ALIGN_TOKENS"}
    result = docker_compose("config", env=env)
    assert result.returncode != 0
    assert "ALIGN_TOKENS" in result.stderr and "deploy/env.example" in result.stderr


def test_interpolation_helper_agrees_with_docker_compose() -> None:
    # The stack test reads commands and environments through `interpolate`; check it
    # against docker-compose's own resolution of the same file.
    result = docker_compose("-f", str(GPU_OVERRIDE), "config")
    assert result.returncode == 0, result.stderr
    theirs = yaml.safe_load(result.stdout)["services"]
    ours = load_compose(GPU_OVERRIDE)["services"]
    for name, service in ours.items():
        assert environment(service) == environment(theirs[name]), name
        assert service.get("command") == theirs[name].get("command"), name
        assert service.get("healthcheck", {}).get("test") == theirs[name].get(
            "healthcheck", {}
        ).get("test"), name


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dep, cond in depends.items():
            assert dep in services
            assert cond == {"condition": "service_healthy"}, (name, dep)
    assert set(services["evaluation"]["depends_on"]) == {"redis", "ray-head"}


def test_redis_persists_with_aof_on_a_volume() -> None:
    config = load_compose()
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume = next(v for v in redis["volumes"] if v.endswith(":/data"))
    assert volume.split(":")[0] in config["volumes"]  # a named volume, not the container


def test_volumes_for_data_weights_and_model_cache() -> None:
    services = load_compose()["services"]
    for name in ("ray-head", "evaluation"):
        mounts = {v.split(":")[1]: v for v in services[name]["volumes"]}
        env = environment(services[name])
        assert env["ALIGN_DATA_DIR"] == "/data" and mounts["/data"].endswith(":ro")
        assert env["HF_HOME"].startswith("/cache/") and "/cache" in mounts
        assert env["ALIGN_CACHE_DIR"].startswith("/cache/")
    ray_mounts = {v.split(":")[1] for v in services["ray-head"]["volumes"]}
    assert "/weights" in ray_mounts
    assert environment(services["ray-head"])["PYTHONPATH"] == "/weights/python"


def test_published_ports_match_the_documented_defaults() -> None:
    # Only the evaluation gRPC port (clients) and Grafana (admin, loopback by default) are
    # published (issue 10); deploy/README.md lists every port, published or internal.
    services = load_compose()["services"]
    published = {
        name: {int(p.split(":")[-1]) for p in s.get("ports", [])} for name, s in services.items()
    }
    assert published == {
        "redis": set(),
        "ray-head": set(),
        "evaluation": {50051},
        "prometheus": set(),
        "grafana": {3000},
    }
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]  # ALIGN_ADMIN_BIND default
    published = {**published, "internal": {9101, 9000, 8000, 8265, 8080, 6379, 9090}}
    readme = (REPO / "deploy" / "README.md").read_text()
    for port in set().union(*published.values()):
        assert str(port) in readme, f"port {port} is not documented in deploy/README.md"
    env = environment(services["evaluation"])
    assert env["ALIGN_EVAL_PORT"] == "50051" and env["ALIGN_EVAL_METRICS_PORT"] == "9101"
    assert env["ALIGN_REDIS_URL"] == f"redis://:{REQUIRED_ENV['REDIS_PASSWORD']}@redis:6379/0"
    serve = yaml.safe_load(SERVE_CONFIG.read_text())
    assert env["ALIGN_EMBEDDER"] == f"grpc://ray-head:{serve['grpc_options']['port']}"
    assert serve["http_options"]["port"] == 8000


def test_every_container_is_hardened_and_redis_needs_a_password() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service["deploy"]["resources"]["limits"]["memory"], name
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == REQUIRED_ENV["REDIS_PASSWORD"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert environment(services["redis"])["REDISCLI_AUTH"] == REQUIRED_ENV["REDIS_PASSWORD"]
    assert "${REDIS_PASSWORD:?" in COMPOSE.read_text()  # required: compose names it if unset
    assert "change-me" in " ".join(services["grafana"]["entrypoint"])


def test_placeholder_secrets_stop_the_evaluation_service(tmp_path: Path) -> None:
    env = dict(os.environ, ALIGN_TOKENS="alice:change-me-to-a-long-random-token")
    result = subprocess.run(
        [sys.executable, "-m", "align_services.evaluation", "--redis", "off"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "placeholder" in result.stderr
    env = dict(os.environ, ALIGN_TOKENS="alice:a-real-token-1234567")
    result = subprocess.run(
        [sys.executable, "-m", "align_services.evaluation",
         "--redis", "redis://:change-me-redis@127.0.0.1:1/0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "placeholder" in result.stderr


def test_env_example_sets_every_required_variable() -> None:
    text = (REPO / "deploy" / "env.example").read_text()
    defined = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", COMPOSE.read_text()))
    assert required == set(REQUIRED_ENV)
    assert required <= {d.lstrip("# ").strip() for d in defined}


# ----------------------------------------------------------------------------------------
# one Serve config


def test_one_serve_config_for_serve_deploy_compose_align_serve_and_kuberay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # compose: the ray-head script `serve deploy`s $ALIGN_SERVE_CONFIG = the repo's file
    ray_head = load_compose()["services"]["ray-head"]
    assert ray_head["command"] == ["bash", "deploy/docker/ray-head.sh"]
    assert environment(ray_head)["ALIGN_SERVE_CONFIG"] == "deploy/serve_config.yaml"
    script = (REPO / "deploy" / "docker" / "ray-head.sh").read_text()
    assert 'config="${ALIGN_SERVE_CONFIG:-deploy/serve_config.yaml}"' in script
    assert re.search(r'serve deploy --address "\$dashboard" "\$config"', script)
    # the image ships that file at the same relative path (WORKDIR /app)
    assert "COPY deploy/serve_config.yaml deploy/serve_config.yaml" in DOCKERFILE.read_text()
    assert "WORKDIR /app" in DOCKERFILE.read_text()
    # kuberay: the RayService embeds the same text
    rayservice = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    assert rayservice["spec"]["serveConfigV2"] == SERVE_CONFIG.read_text()
    # align serve (services/stack.py) loads deploy.load_config(None) -> the same file
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
    from align_services import stack
    from align_services.embedding import deploy

    monkeypatch.delenv("ALIGN_SERVE_CONFIG", raising=False)
    read: list[Path] = []
    original = deploy.load_config

    def recording(path: str | Path | None = None) -> dict[str, Any]:
        read.append(deploy.config_path(path).resolve())
        return original(path)

    monkeypatch.setattr(deploy, "load_config", recording)
    config = stack.serve_config(stack.build_parser().parse_args([]))
    assert read == [SERVE_CONFIG.resolve()]
    assert config["applications"] == [
        {**a, "args": {**a["args"], **config["applications"][0]["args"]}}
        for a in yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    ]


def test_kuberay_serve_config_is_the_repository_file() -> None:
    rayservice = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    embedded = rayservice["spec"]["serveConfigV2"]
    assert yaml.safe_load(embedded) == yaml.safe_load(SERVE_CONFIG.read_text())
    assert embedded == SERVE_CONFIG.read_text()


def test_kuberay_manifest_is_freshly_rendered() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "render_kuberay.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_render_kuberay_check_reports_a_stale_manifest(tmp_path: Path) -> None:
    stale = tmp_path / "rayservice.yaml"
    stale.write_text((KUBERAY / "rayservice.yaml").read_text().replace("num_replicas: 1", "x"))
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "render_kuberay.py"), "--check", "--output",
         str(stale)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "stale" in result.stderr and "render_kuberay.py" in result.stderr


# ----------------------------------------------------------------------------------------
# KubeRay manifests


def _docs() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc.get("metadata", {}).get("name", path.stem))] = doc
    return out


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec["containers"])


def test_kuberay_rayservice_head_and_gpu_worker_group() -> None:
    spec = _docs()[("RayService", "align-embedding")]["spec"]
    cluster = spec["rayClusterConfig"]
    constraints = (REPO / "deploy" / "docker" / "constraints.txt").read_text()
    assert f"ray=={cluster['rayVersion']}" in constraints
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    (head_c,) = _containers(head["template"]["spec"])
    head_ports = {p["name"]: p["containerPort"] for p in head_c["ports"]}
    assert head_ports["grpc"] == 9000 and head_ports["metrics"] == 8080
    (group,) = cluster["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] >= 1
    (worker,) = _containers(group["template"]["spec"])
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == "1"
    for c in (head_c, worker):
        assert re.fullmatch(r"[\w./-]+/align:[\w.]+-cuda", c["image"]), c["image"]
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
        for probe in ("livenessProbe", "readinessProbe"):
            cmd = c[probe]["exec"]["command"]
            assert cmd[:3] == ["python", "deploy/docker/healthcheck.py", "ray"]
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/data", "/weights", "/cache"}
    for pod in (head["template"]["spec"], group["template"]["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0


def test_kuberay_family_replicas_ask_for_a_gpu_so_the_gpu_group_scales_from_zero() -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
    from align_services.embedding.app import FAMILY_DEPLOYMENTS, replica_resources

    cluster = _docs()[("RayService", "align-embedding")]["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    (group,) = cluster["workerGroupSpecs"]
    (head_c,) = _containers(head["template"]["spec"])
    (worker,) = _containers(group["template"]["spec"])
    serve_config = yaml.safe_load(
        _docs()[("RayService", "align-embedding")]["spec"]["serveConfigV2"]
    )
    (app,) = serve_config["applications"]
    families = set(FAMILY_DEPLOYMENTS.values())
    assert not any("ray_actor_options" in d for d in app["deployments"] if d["name"] in families)
    assert group["minReplicas"] == 0  # no GPU node until replicas ask for one
    assert head["rayStartParams"]["num-cpus"] == "0"  # replicas never fit on the head
    # the app builder may run on the head or a worker: both pods pick gpu, even before
    # the cluster has any GPU (a GPU-less cluster with `auto` would choose cpu)
    for c in (head_c, worker):
        env = {e["name"]: e["value"] for e in c["env"]}
        device, options = replica_resources(app["args"], env, cluster_gpus=lambda: 0)
        assert device == "gpu", c["name"]
    # a replica's demand fits a GPU worker (so the autoscaler adds one for it), and all
    # of them fit one worker together
    gpus_per_worker = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    cpus_per_worker = float(worker["resources"]["limits"]["cpu"])
    assert 0 < options["num_gpus"] * len(families) <= gpus_per_worker
    ingress = next(d for d in app["deployments"] if d["name"] == "EmbeddingIngress")
    per_worker = options["num_cpus"] * len(families) + ingress["ray_actor_options"]["num_cpus"]
    assert per_worker <= cpus_per_worker


def test_kuberay_evaluation_and_redis_manifests() -> None:
    docs = _docs()
    deployment = docs[("Deployment", "align-evaluation")]
    (c,) = _containers(deployment["spec"]["template"]["spec"])
    env = {e["name"]: e for e in c["env"]}
    assert env["ALIGN_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@align-redis:6379/0"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "align-redis"
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    target = env["ALIGN_EMBEDDER"]["value"].removeprefix("grpc://")
    service_name, port = target.split(":")
    embedding = docs[("Service", service_name)]
    assert int(port) == embedding["spec"]["ports"][0]["port"] == 9000
    assert embedding["spec"]["selector"]["app.kubernetes.io/name"] == "align-ray"
    assert env["ALIGN_TOKENS"]["valueFrom"]["secretKeyRef"]["name"] == "align-tokens"
    assert c["readinessProbe"]["grpc"]["port"] == 50051 and c["livenessProbe"]
    assert c["resources"]["limits"] and c["image"].endswith("-cuda")
    redis = docs[("StatefulSet", "align-redis")]
    (r,) = _containers(redis["spec"]["template"]["spec"])
    assert r["args"][r["args"].index("--appendonly") + 1] == "yes"
    assert r["readinessProbe"] and r["livenessProbe"] and r["resources"]["limits"]
    assert docs[("Service", "align-redis")]["spec"]["ports"][0]["port"] == 6379
    assert r["args"][r["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert r["args"][r["args"].index("--maxmemory-policy") + 1] == "allkeys-lru"
    # a NetworkPolicy: deny by default; Redis only from the evaluation pods
    deny = docs[("NetworkPolicy", "align-default-deny")]["spec"]
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "align"}
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    (rule,) = docs[("NetworkPolicy", "align-redis-ingress")]["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "align-evaluation"}}}
    ]
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KUBERAY.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_kuberay_monitoring_scrapes_evaluation_and_every_ray_pod() -> None:
    docs = _docs()
    monitor = docs[("ServiceMonitor", "align-evaluation")]["spec"]
    service = docs[("Service", "align-evaluation")]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["port"] in port_names
    pods = docs[("PodMonitor", "align-ray")]["spec"]
    cluster = docs[("RayService", "align-embedding")]["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        assert pods["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        (c,) = template["spec"]["containers"]
        assert pods["podMetricsEndpoints"][0]["port"] in {p["name"] for p in c["ports"]}


# ----------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        patterns.append((re.compile(rf"^{rx}$"), negate))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rx, negate in patterns:
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_lint() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected"
    named = {rest.split()[2] for rest in stages if len(rest.split()) == 3}  # FROM x AS name
    for rest in stages:
        image = rest.split()[0]
        if image in named:  # an earlier stage of this file
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"FROM {image} is not pinned by tag"
    final = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    tail = instructions[final:]
    users = [(i, rest) for i, (w, rest) in enumerate(tail) if w == "USER"]
    cmd_at = max(i for i, (w, _) in enumerate(tail) if w in ("CMD", "ENTRYPOINT"))
    assert users and users[-1][0] < cmd_at, "USER must be set before CMD"
    assert users[-1][1] not in ("root", "0", "0:0")
    assert any(w == "HEALTHCHECK" for w, _ in tail)
    for word, rest in instructions:
        assert not (word == "ADD" and re.search(r"https?://", rest)), "ADD of a URL"
        if word == "COPY" and "--from=" not in rest:
            sources = rest.split()[:-1]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert not dockerignore_excludes(src), f"COPY {src}: excluded by .dockerignore"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "torch==2.14.1" in runs and "torchvision==0.29.1" in runs
    assert "weights" not in re.sub(r"/weights\S*", "", runs), "weights must not be baked in"


def test_dockerignore_keeps_secrets_data_and_caches_out() -> None:
    for path in (".venv", ".venv/bin/python", "data", "weights", ".cache", ".git",
                 "deploy/align.env", "tests", "client/align/__pycache__/x.pyc",
                 ".mypy_cache", "bench"):  # fmt: skip
        assert dockerignore_excludes(path), path
    for path in ("client/align/api.py", "services/stack.py", "pyproject.toml",
                 "deploy/serve_config.yaml", "deploy/docker/ray-head.sh"):  # fmt: skip
        assert not dockerignore_excludes(path), path


def test_ray_head_script_names_a_missing_config(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "docker" / "ray-head.sh")],
        env={**os.environ, "ALIGN_SERVE_CONFIG": str(tmp_path / "nope.yaml")},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "nope.yaml does not exist" in result.stderr and "ALIGN_SERVE_CONFIG" in result.stderr


# ----------------------------------------------------------------------------------------
# Prometheus and Grafana


def test_prometheus_scrapes_the_services_metrics_ports() -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in prom["scrape_configs"]
    }
    services = load_compose()["services"]
    eval_port = environment(services["evaluation"])["ALIGN_EVAL_METRICS_PORT"]
    ray_port = environment(services["ray-head"])["RAY_METRICS_EXPORT_PORT"]
    assert targets["align-evaluation"] == [f"evaluation:{eval_port}"]
    assert targets["ray"] == [f"ray-head:{ray_port}"]
    mount = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    assert (REPO / mount.split(":")[0]).resolve() == PROMETHEUS.resolve()


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    services = load_compose()["services"]
    mounts = {v.split(":")[1]: REPO / v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (ds,) = datasource["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "align.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (mounts[path] / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        assert panel["targets"], panel["title"]


def test_grafana_dashboard_covers_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and len({p["id"] for p in dashboard["panels"]}) == len(
        dashboard["panels"]
    )
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("request rate", "latency", "cache hit ratio", "embeddings per second",
                   "replicas", "gpu memory"):  # fmt: skip
        assert needed in titles, needed
    names = dashboard_metric_names(dashboard)
    assert {"align_requests_total", "ray_serve_deployment_replica_healthy",
            "ray_node_gram_used"} <= names  # fmt: skip
