"""The evaluation service's gRPC embedder (``--embedder grpc://host:port``) against a
minimal EmbeddingService on loopback (Ray Serve itself is covered by the embedding
tests): chunked requests by dataset stimulus ids, the ``application: embedding``
metadata, and the same report as the in-process embedder."""

from __future__ import annotations

import json
import warnings
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from align.v1 import align_pb2, align_pb2_grpc

from tests.services.redis_fixtures import ALICE

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]


class RowsEmbeddingService(align_pb2_grpc.EmbeddingServiceServicer):
    """Serves rows of a features file by the dataset's stimulus ids; records requests."""

    def __init__(self, model_id: str, X: np.ndarray, data_dir: Path) -> None:
        from align.datasets import load_dataset
        from align.models import get_spec
        from align.results import to_jsonable

        self.model_id = model_id  # the id this server offers (an operator alias of a spec)
        self.spec = get_spec(model_id)
        self.pre = json.dumps(to_jsonable(self.spec.preprocessing))
        self.X = X.astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_dataset("things", data_dir=data_dir)
        self.row = {s: i for i, s in enumerate(ds.stimulus_ids)}
        self.chunks: list[int] = []
        self.applications: list[str | None] = []

    def ListModels(self, request: Any, context: Any) -> Any:
        info = align_pb2.ModelInfo(
            id=self.model_id,
            family=self.spec.family,
            digest=self.spec.digest,
            layers=list(self.spec.layers),
            modality="image",
            preprocessing_json=self.pre,
        )
        ok = request.pattern in ("*", self.model_id)
        return align_pb2.ListModelsResponse(models=[info] if ok else [])

    def Embed(self, request: Any, context: Any) -> Any:
        md = dict(context.invocation_metadata())
        self.applications.append(md.get("application"))
        self.chunks.append(len(request.stimulus_ids))
        rows = self.X[[self.row[s] for s in request.stimulus_ids]]
        return align_pb2.EmbedResponse(
            data=rows.astype("<f4").tobytes(),
            shape=list(rows.shape),
            model=self.model_id,
            layer=request.layer,
            model_digest=self.spec.digest,
            spec_digest=self.spec.digest,
            dtype="float32",
        )


def test_grpc_embedder_chunks_by_stimulus_id_and_matches_local(
    eval_service: Any, spose_npy: Path, data_dir: Path
):
    from align.models import register_model

    from tests.ports import free_port

    model = "test/spose66-grpc"  # an operator-registered id: clients send no server paths
    register_model(model, f"features:{spose_npy}")
    service = RowsEmbeddingService(model, np.load(spose_npy), data_dir)
    port = free_port()
    embedding_server = grpc.server(futures.ThreadPoolExecutor(4))
    align_pb2_grpc.add_EmbeddingServiceServicer_to_server(service, embedding_server)
    embedding_server.add_insecure_port(f"127.0.0.1:{port}")
    embedding_server.start()
    try:
        remote_emb = eval_service(embedder=f"grpc://127.0.0.1:{port}", embed_chunk_size=500)
        local_emb = eval_service()
        request = align_pb2.ScoreRequest(
            model=model, dataset="things", options_json='{"n_bootstrap": 50}'
        )
        meta = [("authorization", f"Bearer {ALICE}")]
        reports = []
        for server in (remote_emb, local_emb):
            with grpc.insecure_channel(server.address) as channel:
                stub = align_pb2_grpc.EvaluationServiceStub(channel)
                last = list(stub.Score(request, metadata=meta, timeout=60))[-1]
            reports.append(json.loads(last.report_json))
    finally:
        embedding_server.stop(0)
    assert service.chunks == [500, 500, 500, 354]  # 1854 stimuli in bounded chunks
    assert set(service.applications) == {"embedding"}
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["provenance"]["weights_digest"] == reports[1]["provenance"]["weights_digest"]
