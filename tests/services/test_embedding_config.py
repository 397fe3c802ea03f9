"""deploy/serve_config.yaml and the application builder agree (no Ray cluster needed)."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")

import yaml
from align.errors import InvalidInputError, NotFoundError
from align_services.embedding import app as app_module
from align_services.embedding import deploy
from ray.serve.schema import ServeDeploySchema


def _raw_config() -> dict:
    return yaml.safe_load(deploy.DEFAULT_CONFIG.read_text())


def _graph_deployment_names(application: object) -> set[str]:
    """Names of the deployments Serve builds from an application (Serve's own builder)."""
    from ray.serve._private.build_app import build_app

    return {d.name for d in build_app(application, name="embedding").deployments}


def test_config_is_a_valid_serve_deploy_config() -> None:
    schema = ServeDeploySchema.model_validate(_raw_config())
    (application,) = schema.applications
    assert application.name == "embedding"
    assert application.route_prefix == "/embedding"
    assert schema.grpc_options.port == 9000
    assert (
        "align.v1.align_pb2_grpc.add_EmbeddingServiceServicer_to_server"
        in schema.grpc_options.grpc_servicer_functions
    )


def test_config_servicer_functions_import() -> None:
    from ray._common.utils import import_attr

    for path in _raw_config()["grpc_options"]["grpc_servicer_functions"]:
        assert callable(import_attr(path)), path


def test_config_deployments_are_those_the_builder_creates() -> None:
    raw = _raw_config()
    application = deploy.application(raw)
    built = app_module.build_app(application["args"])
    configured = {d["name"] for d in application["deployments"]}
    assert _graph_deployment_names(built) == configured


def test_config_user_config_is_accepted_by_the_replicas() -> None:
    for entry in deploy.application(_raw_config())["deployments"]:
        if "user_config" in entry:
            cfg = app_module.BatchConfig.from_mapping(entry["user_config"])
            # @serve.batch rejects a request bigger than max_batch_size, so bigger
            # requests bypass the batcher; max_ongoing_requests must let a batch fill.
            assert entry["max_ongoing_requests"] >= cfg.max_batch_stimuli, entry["name"]


def test_override_changes_only_what_it_names() -> None:
    raw = _raw_config()
    before = copy.deepcopy(raw)
    out = deploy.override(
        raw,
        grpc_port=1234,
        deployments={"TimmEmbedder": {"ray_actor_options": {"num_cpus": 0.25}}},
    )
    assert raw == before  # the input is not modified
    assert out["grpc_options"]["port"] == 1234
    timm = next(d for d in deploy.application(out)["deployments"] if d["name"] == "TimmEmbedder")
    assert timm["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0}
    assert out["http_options"] == raw["http_options"]


def test_override_unknown_deployment_names_close_matches() -> None:
    with pytest.raises(NotFoundError, match="TimmEmbedder"):
        deploy.override(_raw_config(), deployments={"TimEmbedder": {"num_replicas": 2}})


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"max_stimuli_per_request": 0}, "limits.max_stimuli_per_request"),
        ({"max_stimulus": 3}, "limits"),
    ],
)
def test_bad_limits_name_the_field(limits: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        app_module.Limits.from_mapping(limits)
    assert info.value.field == field


def test_broken_yaml_names_file_and_line(tmp_path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - name: embedding\n    args: [unclosed\n")
    with pytest.raises(InvalidInputError, match=r"serve\.yaml, line \d+"):
        deploy.load_config(bad)
