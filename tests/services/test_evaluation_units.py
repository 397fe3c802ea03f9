"""Pieces of the evaluation service on their own: tokens, fair scheduler, cache value
format, error mapping."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import grpc
import numpy as np
import pytest
from align.errors import (
    DataMissingError,
    InvalidInputError,
    NotFoundError,
    NumericalError,
    ResourceLimitError,
)
from align_services.evaluation.auth import Authenticator, load_tokens, parse_tokens_file
from align_services.evaluation.cache import decode_embedding, encode_embedding
from align_services.evaluation.errors import EmbedderUnavailableError, status_for
from align_services.evaluation.pool import FairScheduler


def test_tokens_file_names_and_comments(tmp_path: Path):
    f = tmp_path / "tokens"
    f.write_text("# team tokens\nalice:aaaaaaaa-1111\n\nbbbbbbbb-2222\n")
    assert parse_tokens_file(f) == {"aaaaaaaa-1111": "alice", "bbbbbbbb-2222": "token4"}


def test_bad_token_line_names_file_and_line(tmp_path: Path):
    f = tmp_path / "tokens"
    f.write_text("alice:aaaaaaaa-1111\nbob:short\n")
    with pytest.raises(InvalidInputError) as info:
        parse_tokens_file(f)
    assert info.value.field == f"{f}:2"


def test_env_tokens_and_bearer_check():
    tokens = load_tokens(environ={"ALIGN_TOKENS": "ci:cccccccc-3333, dddddddd-4444"})
    auth = Authenticator(tokens)
    assert auth.identify([("authorization", "Bearer cccccccc-3333")]) == "ci"
    assert auth.identify([("authorization", "bearer dddddddd-4444")]) == "env2"
    assert auth.identify([("authorization", "Bearer cccccccc-333")]) is None
    assert auth.identify([("authorization", "cccccccc-3333")]) is None
    assert auth.identify([]) is None


def test_no_tokens_refuses_to_start_unless_explicitly_anonymous():
    with pytest.raises(InvalidInputError) as info:
        Authenticator({})
    assert "ALIGN_TOKENS" in str(info.value)
    assert Authenticator({}, allow_anonymous=True).identify([]) == "anonymous"


def test_scheduler_caps_each_token_and_reports_queue_positions():
    async def scenario() -> tuple[list[str], list[int], list[str]]:
        s = FairScheduler(max_workers=2, per_token=1)
        a1, a2, a3 = s.enqueue("alice"), s.enqueue("alice"), s.enqueue("alice")
        b1 = s.enqueue("bob")
        granted = [
            n for n, t in (("a1", a1), ("a2", a2), ("a3", a3), ("b1", b1)) if t.granted.is_set()
        ]
        positions = [a2.position, a3.position]
        a1.release()  # alice's next one may run now
        later = [n for n, t in (("a2", a2), ("a3", a3)) if t.granted.is_set()]
        s.shutdown()
        return granted, positions, later

    granted, positions, later = asyncio.run(scenario())
    assert granted == ["a1", "b1"]  # bob is not stuck behind alice's batch
    assert positions == [1, 2]
    assert later == ["a2"]


def test_embedding_value_is_a_header_plus_float32_little_endian_bytes():
    X = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    blob = encode_embedding(X, {"model": "m"})
    (n,) = struct.unpack_from("<I", blob, 8)
    raw = np.frombuffer(blob[12 + n :], dtype="<f4").reshape(3, 4)
    np.testing.assert_array_equal(raw, X.astype(np.float32))
    back, meta = decode_embedding(blob)
    np.testing.assert_array_equal(back, X.astype(np.float32))
    assert meta == {"model": "m"}
    with pytest.raises(ValueError):
        decode_embedding(blob[:-4])  # truncated: never served


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidInputError("layer", "is ''"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFoundError("model", "x", ["y"]), grpc.StatusCode.NOT_FOUND),
        (DataMissingError("no images"), grpc.StatusCode.FAILED_PRECONDITION),
        (ResourceLimitError("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (NumericalError("nan"), grpc.StatusCode.FAILED_PRECONDITION),
        (EmbedderUnavailableError("h:1", "down"), grpc.StatusCode.UNAVAILABLE),
        (RuntimeError("bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_error_mapping(exc: Exception, code: grpc.StatusCode):
    assert status_for(exc) == code
