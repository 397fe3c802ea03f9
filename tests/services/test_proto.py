"""The wire contract: committed stubs match the .proto, and the byte formats decode as
numpy would read them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from align import _protogen
from align.v1 import align_pb2

REPO = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto_files():
    result = subprocess.run(
        [sys.executable, "-m", "align._protogen", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_check_names_the_stale_stub_when_the_proto_changes(tmp_path: Path):
    proto_root = tmp_path / "proto"
    shutil.copytree(REPO / "proto", proto_root)
    proto = proto_root / "align" / "v1" / "align.proto"
    text = proto.read_text()
    proto.write_text(
        text.replace("message HealthRequest {}", "message HealthRequest {\n  string x = 1;\n}")
    )
    problems = _protogen.check(proto_root=proto_root)
    assert problems, "a changed .proto must make the committed stubs stale"
    assert any("align_pb2.py" in p and "differs" in p for p in problems)


def test_check_reports_a_missing_stub(tmp_path: Path):
    stubs = tmp_path / "v1"
    shutil.copytree(_protogen.STUB_DIR, stubs)
    (stubs / "align_pb2_grpc.py").unlink()
    problems = _protogen.check(stub_dir=stubs)
    assert problems == [f"{stubs / 'align_pb2_grpc.py'} is missing"]


def test_embed_response_bytes_are_float32_little_endian_c_order():
    from align_services.evaluation.embedder import decode_features, encode_features

    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3)).astype(np.float32)
    X[2] = np.nan  # a missing stimulus travels as an all-NaN row
    data, shape = encode_features(X)
    reply = align_pb2.EmbedResponse.FromString(
        align_pb2.EmbedResponse(data=data, shape=shape, dtype="float32").SerializeToString()
    )
    # independent reading: the raw bytes as numpy's '<f4'
    raw = np.frombuffer(reply.data, dtype="<f4").reshape(tuple(reply.shape))
    np.testing.assert_array_equal(raw, X)
    np.testing.assert_array_equal(decode_features(reply.data, reply.shape), X)


def test_score_progress_final_is_a_oneof():
    msg = align_pb2.ScoreProgress(stage="metrics", done=1, total=2)
    assert msg.WhichOneof("final") is None
    msg.report_json = "{}"
    assert msg.WhichOneof("final") == "report_json"
