"""The embedding ingress wraps every RPC once: the shared error mapping, count and latency.

The ingress class runs here without Ray (its handlers for these calls need no family
replica); the end-to-end path through Serve's gRPC proxy is in test_embedding_service.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
grpc = pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")

from align.errors import ERROR_METADATA_KEY, InvalidInputError, error_from_payload  # noqa: E402
from align.v1 import align_pb2  # noqa: E402
from align_services.embedding.ingress import EmbeddingIngress  # noqa: E402


class Context:
    """What the ingress may do to Serve's gRPC context, recorded."""

    def __init__(self) -> None:
        self.code: Any = None
        self.details = ""
        self.trailing: list[tuple[str, str]] = []

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing: list[tuple[str, str]]) -> None:
        self.trailing = list(trailing)


class Metric:
    """A stand-in for a Ray metric: the tags of every inc/observe."""

    def __init__(self) -> None:
        self.tags: list[dict[str, str]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.tags.append(dict(tags or {}))

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert value >= 0
        self.tags.append(dict(tags or {}))


@pytest.fixture
def ingress() -> Any:
    instance = EmbeddingIngress.func_or_class({"TimmEmbedder": None})  # type: ignore[attr-defined]
    for name in ("_m_rpcs", "_m_rpc_seconds", "_m_requests", "_m_latency"):
        setattr(instance, name, Metric())
    return instance


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_an_align_error_becomes_its_status_with_the_error_as_metadata(ingress) -> None:
    ctx = Context()
    reply = _run(ingress.Embed(align_pb2.EmbedRequest(model=""), ctx))
    assert reply == align_pb2.EmbedResponse()
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ctx.details.startswith("model: is empty")
    ((key, payload),) = ctx.trailing
    assert key == ERROR_METADATA_KEY
    rebuilt = error_from_payload(json.loads(payload), ctx.details)
    assert isinstance(rebuilt, InvalidInputError) and rebuilt.field == "model"
    assert ingress._m_rpcs.tags == [{"method": "Embed", "code": "INVALID_ARGUMENT"}]
    assert ingress._m_rpc_seconds.tags == [{"method": "Embed"}]
    # per model too; an id the registry does not know is one shared label
    assert ingress._m_requests.tags == [{"model": "<unknown>", "code": "INVALID_ARGUMENT"}]
    assert ingress._m_latency.tags == []  # Embed latency by model: successful calls only


def test_an_unknown_model_is_not_found(ingress) -> None:
    ctx = Context()
    _run(ingress.Embed(align_pb2.EmbedRequest(model="timm/no_such_architecture"), ctx))
    assert ctx.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_architecture" in ctx.details


def test_an_unexpected_error_is_internal_and_its_text_stays_on_the_server(ingress, caplog) -> None:
    async def broken(request: Any) -> Any:
        raise RuntimeError("secret detail")

    ingress._embed = broken
    ctx = Context()
    with caplog.at_level("ERROR", logger="ray.serve"):
        _run(ingress.Embed(align_pb2.EmbedRequest(model="x"), ctx))
    assert ctx.code == grpc.StatusCode.INTERNAL
    assert "secret" not in ctx.details and "incident" in ctx.details
    assert ctx.trailing == []
    incident = ctx.details.split("incident ")[1].split(")")[0]
    assert any(getattr(r, "incident", None) == incident for r in caplog.records)
    assert ingress._m_rpcs.tags == [{"method": "Embed", "code": "INTERNAL"}]


def test_through_a_handle_the_error_is_raised_and_still_counted(ingress) -> None:
    with pytest.raises(InvalidInputError, match="model"):
        _run(ingress.Embed(align_pb2.EmbedRequest(model="")))
    assert ingress._m_rpcs.tags == [{"method": "Embed", "code": "INVALID_ARGUMENT"}]


def test_every_rpc_is_counted_by_method(ingress) -> None:
    from grpc_health.v1 import health_pb2

    ctx = Context()
    health = _run(ingress.Health(align_pb2.HealthRequest(), ctx))
    assert health.status == "ok" and health.details["max_stimuli_per_request"] == "4096"
    check = _run(ingress.Check(health_pb2.HealthCheckRequest(), ctx))
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    models = _run(ingress.ListModels(align_pb2.ListModelsRequest(pattern="nomatch/*"), ctx))
    assert list(models.models) == []
    assert ctx.code is None  # nothing failed
    assert ingress._m_rpcs.tags == [
        {"method": method, "code": "OK"} for method in ("Health", "Check", "ListModels")
    ]
    assert ingress._m_requests.tags == []  # the per-model series are Embed's alone
