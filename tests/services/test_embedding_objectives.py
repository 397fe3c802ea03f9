"""The embedding service serves the `objectives` extra's families like any other: an ONNX
graph (on the image replicas) and GloVe (on the text replicas) return what the embedded
library returns, with the spec's digest and declared preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")
pytest.importorskip("onnxruntime", reason="the `objectives` extra is not installed")

from align.v1 import align_pb2

from tests.services.test_embedding_service import (
    _embed,
    _in_process,
    _matrix,
    _things_images,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _need(model_id: str) -> None:
    from align.errors import DataMissingError
    from align.models import get_spec

    try:
        get_spec(model_id)
    except DataMissingError as e:
        pytest.skip(f"{model_id} not installed: {e}")


def test_onnx_graph_is_served_like_the_library_embeds_it(serve_embedding, data_dir) -> None:
    from align.models import get_spec

    model = "onnx/sscd-mobilenetv4"
    _need(model)
    blobs = [p.read_bytes() for p in _things_images(data_dir, 3)]
    reply = _embed(serve_embedding, align_pb2.EmbedRequest(model=model, images=blobs))
    got = _matrix(reply)
    np.testing.assert_allclose(got, _in_process(model, blobs), rtol=1e-5, atol=1e-6)
    spec = get_spec(model)
    assert got.shape == (3, 960)
    assert reply.spec_digest == spec.digest
    assert json.loads(reply.spec_json)["preprocessing"]["input_size"] == [288, 288]


def test_glove_is_served_on_the_text_replicas(serve_embedding) -> None:
    model = "glove/6b-50d"
    _need(model)
    words = ["dog", "air conditioner", "violin"]
    got = _matrix(_embed(serve_embedding, align_pb2.EmbedRequest(model=model, words=words)))
    np.testing.assert_array_equal(got, _in_process(model, words))
