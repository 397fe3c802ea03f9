"""deploy/serve_config.yaml and the application builder agree (no Ray cluster needed)."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")

import yaml
from align.errors import InvalidInputError, NotFoundError
from align_services.embedding import app as app_module
from align_services.embedding import config, deploy
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


def _serve_builds(args: dict) -> object:
    """The application as Serve builds it from the config's args (Serve validates them
    into the builder's annotated model, EmbeddingArgs)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    return call_user_app_builder_with_args_if_necessary(app_module.build_app, args)


def test_config_deployments_are_those_the_builder_creates() -> None:
    raw = _raw_config()
    application = deploy.application(raw)
    built = _serve_builds(application["args"])
    configured = {d["name"] for d in application["deployments"]}
    assert _graph_deployment_names(built) == configured


def test_serve_validates_the_args_into_the_typed_model() -> None:
    args = _app_args()
    validated = config.EmbeddingArgs.model_validate(args)
    assert validated.families == tuple(args["families"])
    assert validated.limits.max_request_bytes == args["limits"]["max_request_bytes"]
    assert validated.max_models_per_replica == args["max_models_per_replica"]
    # the builder's one parameter is annotated with the model itself (not a string):
    # that is what makes Serve validate a config's args into it
    import inspect

    (parameter,) = inspect.signature(app_module.build_app).parameters.values()
    assert parameter.annotation is config.EmbeddingArgs


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"limits": {"max_request_bytes": 0}}, "args.limits.max_request_bytes", "greater than 0"),
        ({"max_models_per_replica": 0}, "args.max_models_per_replica", "equal to 1"),
        ({"retries": "many"}, "args.retries", "integer"),
        ({"limit": {}}, "args", "unknown keys ['limit']"),
        ({"limits": {"max_stimulus": 3}}, "args.limits", "only ['max_request_bytes'"),
        ({"families": "timm"}, "args.families", "a list"),
    ],
)  # fmt: skip
def test_bad_args_fail_the_build_naming_the_key(changes: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        _serve_builds({**_app_args(), **changes})
    assert info.value.field == field
    assert words in str(info.value)


def test_an_unknown_family_is_not_found_with_close_matches() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'open_clip'"):
        _serve_builds({**_app_args(), "families": ["timm", "openclip"]})


def test_null_sections_take_their_defaults() -> None:
    args = config.EmbeddingArgs.model_validate({"limits": None, "resources": None, "families": []})
    assert args.limits == config.Limits()
    assert args.families == config.ALL_FAMILIES
    assert args.resources.preset("gpu") == config.DEFAULT_RESOURCES["gpu"]


def test_config_user_config_is_accepted_by_the_replicas() -> None:
    for entry in deploy.application(_raw_config())["deployments"]:
        if "user_config" in entry:
            cfg = config.BatchConfig.from_mapping(entry["user_config"])
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
    assert timm["ray_actor_options"] == {"num_cpus": 0.25}
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
        config.Limits.from_mapping(limits)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("user_config", "field"),
    [
        ({"max_batch_stimuli": 0}, "user_config.max_batch_stimuli"),
        ({"batch_wait_timeout_s": -1}, "user_config.batch_wait_timeout_s"),
        ({"torch_threads": 0}, "user_config.torch_threads"),
        ({"merge_requests": "sometimes"}, "user_config.merge_requests"),
        ({"max_batch": 8}, "user_config"),
    ],
)
def test_bad_user_config_names_the_field(user_config: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        config.BatchConfig.from_mapping(user_config)
    assert info.value.field == field


def test_user_config_reads_yaml_booleans_as_written() -> None:
    # a quoted "false" is false (bool("false") would be True)
    assert config.BatchConfig.from_mapping({"merge_requests": "false"}).merge_requests is False
    assert config.BatchConfig.from_mapping(None) == config.BatchConfig()


def test_broken_yaml_names_file_and_line(tmp_path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - name: embedding\n    args: [unclosed\n")
    with pytest.raises(InvalidInputError, match=r"serve\.yaml, line \d+"):
        deploy.load_config(bad)


# ----------------------------------------------------------------------------------------
# Device of the family replicas: args.device / ALIGN_DEVICE -> args.resources[device]

FAMILIES = {"TimmEmbedder", "OpenClipEmbedder", "TextEmbedder"}


def _app_args() -> dict:
    return deploy.application(_raw_config())["args"]


def _no_cluster_query() -> float:
    raise AssertionError("the cluster is queried only for device: auto")


def test_align_device_gpu_selects_the_configured_gpu_preset() -> None:
    args = _app_args()
    device, options = config.replica_resources(
        args, environ={"ALIGN_DEVICE": "gpu"}, cluster_gpus=_no_cluster_query
    )
    assert device == "gpu"
    assert options == args["resources"]["gpu"]
    assert options["num_gpus"] > 0  # what puts a replica on a GPU (and scales GPU nodes)


@pytest.mark.parametrize("env", [{}, {"ALIGN_DEVICE": ""}, {"ALIGN_DEVICE": "cpu"}])
def test_without_align_device_gpu_and_without_gpus_the_cpu_preset(env: dict) -> None:
    args = _app_args()
    device, options = config.replica_resources(args, environ=env, cluster_gpus=lambda: 0)
    assert device == "cpu"
    assert options == args["resources"]["cpu"]
    assert options.get("num_gpus", 0) == 0


@pytest.mark.parametrize(
    ("arg", "env", "cluster_gpus", "expected"),
    [
        ("auto", None, 0.0, "cpu"),
        ("auto", None, 2.0, "gpu"),  # auto: the cluster's GPUs at build time
        ("gpu", None, 0.0, "gpu"),  # explicit gpu: the autoscaler adds GPU nodes
        ("cpu", None, 8.0, "cpu"),
        ("cpu", "gpu", 0.0, "gpu"),  # the env var wins over args.device
        ("gpu", "cpu", 8.0, "cpu"),
        ("cpu", "cuda:1", 0.0, "gpu"),  # ALIGN_DEVICE as a torch device
        ("auto", "auto", 1.0, "gpu"),
    ],
)
def test_device_choice(arg: str, env: str | None, cluster_gpus: float, expected: str) -> None:
    args = {**_app_args(), "device": arg}
    environ = {} if env is None else {"ALIGN_DEVICE": env}
    device, _ = config.replica_resources(args, environ, cluster_gpus=lambda: cluster_gpus)
    assert device == expected


GPU = {"ALIGN_DEVICE": "gpu"}
NEG_CPUS = {"gpu": {"num_gpus": 1, "num_cpus": -1}}


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        ({}, {"ALIGN_DEVICE": "tpu"}, "ALIGN_DEVICE"),
        ({"device": "GPUs"}, {}, "args.device"),
        ({"resources": {"gpu": {"num_gpus": 0}}}, GPU, "args.resources.gpu.num_gpus"),
        ({"resources": {"cpu": {"num_gpus": 1}}}, {}, "args.resources.cpu.num_gpus"),
        ({"resources": NEG_CPUS}, GPU, "args.resources.gpu.num_cpus"),
        ({"resources": {"tpu": {}}}, {}, "args.resources"),
    ],
)  # fmt: skip
def test_bad_device_settings_name_the_field(args: dict, env: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        config.replica_resources(args, environ=env, cluster_gpus=lambda: 0)
    assert info.value.field == field


def test_config_family_deployments_leave_ray_actor_options_to_the_builder() -> None:
    # Serve uses a config entry's ray_actor_options as a whole instead of the code's:
    # a family entry with them would pin the device and bypass the preset.
    for entry in deploy.application(_raw_config())["deployments"]:
        if entry["name"] in FAMILIES:
            assert "ray_actor_options" not in entry, entry["name"]


def _built_actor_options(args: dict) -> dict[str, dict]:
    from ray.serve._private.build_app import build_app

    built = build_app(app_module.build_app(args), name="embedding")
    return {d.name: dict(d.ray_actor_options or {}) for d in built.deployments}


def test_build_app_gives_each_family_the_gpu_preset_under_align_device_gpu(monkeypatch) -> None:
    monkeypatch.setenv("ALIGN_DEVICE", "gpu")
    monkeypatch.setattr(app_module, "_cluster_gpus", lambda: 0.0)  # GPU nodes come later
    args = _app_args()
    options = _built_actor_options(args)
    for name in FAMILIES:
        assert options[name]["num_gpus"] == args["resources"]["gpu"]["num_gpus"], name
        assert options[name]["num_cpus"] == args["resources"]["gpu"]["num_cpus"], name
    assert options["EmbeddingIngress"].get("num_gpus", 0) == 0


def test_build_app_gives_each_family_the_cpu_preset_without_gpus(monkeypatch) -> None:
    monkeypatch.delenv("ALIGN_DEVICE", raising=False)
    monkeypatch.setattr(app_module, "_cluster_gpus", lambda: 0.0)  # a cluster without GPUs
    args = _app_args()  # device: auto
    options = _built_actor_options(args)
    for name in FAMILIES:
        assert options[name].get("num_gpus", 0) == 0, name
        assert options[name]["num_cpus"] == args["resources"]["cpu"]["num_cpus"], name
