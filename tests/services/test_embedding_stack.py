"""``align serve`` (align_services.stack): configuration and input errors, without
starting Ray (the running stack is exercised by the Serve fixture and by hand)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
pytest.importorskip("redis", reason="redis-py is not installed (extra 'serve')")

from align.errors import InvalidInputError
from align_services import stack
from align_services.embedding import deploy


@pytest.fixture(autouse=True)
def _process_environment_restored() -> Iterator[None]:
    """``stack.main`` configures its own process (Ray token auth, single-machine mode) in
    os.environ, as the real ``align serve`` process must; here it runs inside the test
    session, whose later Ray clusters must not inherit that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def _deployment(config: dict, name: str) -> dict:
    return next(d for d in deploy.application(config)["deployments"] if d["name"] == name)


def test_gpu_flag_sets_the_app_device_to_gpu(monkeypatch) -> None:
    # the app builder then gives each family replica the config's gpu preset
    monkeypatch.delenv("ALIGN_DEVICE", raising=False)
    args = stack.build_parser().parse_args(["--gpu", "--grpc-port", "9100"])
    config = stack.serve_config(args)
    assert deploy.application(config)["args"]["device"] == "gpu"
    for name in ("TimmEmbedder", "OpenClipEmbedder", "TextEmbedder"):
        assert "ray_actor_options" not in _deployment(config, name)  # else they would win
    assert config["grpc_options"]["port"] == 9100


def test_gpu_flag_against_align_device_cpu_is_named(monkeypatch) -> None:
    monkeypatch.setenv("ALIGN_DEVICE", "cpu")  # inherited by Ray, it would win over --gpu
    with pytest.raises(InvalidInputError) as info:
        stack.serve_config(stack.build_parser().parse_args(["--gpu"]))
    assert info.value.field == "--gpu" and "ALIGN_DEVICE" in str(info.value)


def test_without_gpu_flag_the_config_file_decides(monkeypatch) -> None:
    monkeypatch.delenv("ALIGN_DATA_DIR", raising=False)  # else passed on as an app arg
    config = stack.serve_config(stack.build_parser().parse_args([]))
    assert config == deploy.override(deploy.load_config(), http_host="127.0.0.1")


def test_unreachable_redis_url_is_named() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    args = stack.build_parser().parse_args(["--redis-url", url])
    with pytest.raises(InvalidInputError) as info:
        stack.start_redis(stack.Stack(), args)
    assert info.value.field == "--redis-url"
    assert url in str(info.value)


def test_missing_config_file_exits_2_naming_it(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.yaml"
    assert stack.main(["--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
