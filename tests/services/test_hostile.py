"""Hostile input against the evaluation service (issue 10): a real redis-server, gRPC over
loopback, the evaluation server in this process (so that every file it opens is seen by
an audit hook), real THINGS triplets and images and the real SPoSE embedding.

Every case is one distinct request a hostile or careless client may send. Each must get
a clear gRPC error (the status and words of its message are asserted), must open
nothing under the canary folder (a tree outside every root the server may read, holding
a valid dataset, features, a checkpoint and images: a leak would read them), and must
leave the server answering a correct score afterwards: the SPoSE odd-one-out accuracy,
checked against an independent implementation, served from the cache that the case must
not have poisoned.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from align.v1 import align_pb2, align_pb2_grpc

from tests.services.redis_fixtures import ALICE, BOB, TOKENS, RedisServer
from tests.services.test_evaluation import GatedFeatures, odd_one_out_accuracy, things_triplets

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

GOOD_OPTIONS = '{"n_bootstrap": 50}'


# -- what the server opens --------------------------------------------------------------------


class OpenAudit:
    """Paths opened or listed by this process while ``watching`` (a sys audit hook:
    builtins.open, io.open, os.open, os.listdir, os.scandir, numpy and PIL included)."""

    def __init__(self) -> None:
        self.watching = False
        self.seen: list[str] = []
        self.lock = threading.Lock()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.watching or event not in ("open", "os.listdir", "os.scandir"):
            return
        if args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            with self.lock:
                self.seen.append(path)

    def touched(self, root: Path) -> list[str]:
        prefixes = (str(root), str(root.resolve()))
        with self.lock:
            return [p for p in self.seen if p.startswith(prefixes)]


_AUDIT: OpenAudit | None = None


def audit() -> OpenAudit:
    global _AUDIT
    if _AUDIT is None:  # audit hooks cannot be removed: one per process
        _AUDIT = OpenAudit()
    return _AUDIT


# -- the world: a canary tree outside the roots, a datasets root, the server -----------------


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width x height (a decompression bomb's
    header; the pixel data is never reached)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _rdm_folder(folder: Path, images: list[Path], rdm: np.ndarray) -> None:
    (folder / "images").mkdir(parents=True)
    for p in images:
        shutil.copy(p, folder / "images" / p.name)
    np.save(folder / "rdm.npy", rdm)


@dataclass
class World:
    outside: Path  # the canary tree: nothing here may be read
    root: Path  # the operator's datasets root
    server: Any
    redis: RedisServer
    expected: float  # SPoSE odd-one-out accuracy on THINGS, independent implementation
    spose_rows: np.ndarray  # SPoSE rows of the lab dataset's 12 concepts
    lab_rdm: np.ndarray
    model: str

    def stub(self) -> Any:
        channel = grpc.insecure_channel(
            self.server.address,
            options=[("grpc.max_send_message_length", 256 << 20)],
        )
        return channel, align_pb2_grpc.EvaluationServiceStub(channel)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, spose_npy: Path
) -> Iterator[World]:
    from align.datasets import load_dataset
    from align.models import register_model
    from align_services.evaluation.limits import Limits, Policy
    from align_services.evaluation.server import ServerConfig, ThreadedServer
    from align_services.evaluation.uploads import UploadLimits

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    tmp = tmp_path_factory.mktemp("hostile")
    things = load_dataset("things", data_dir=data_dir)
    spose = np.load(spose_npy)
    picks = [i for i, p in enumerate(things.image_paths or ()) if p is not None][:12]
    if len(picks) < 12:
        pytest.skip("need 12 THINGS images under the data folder")
    images = [Path(str((things.image_paths or ())[i])) for i in picks]
    rows = spose[picks]
    # a human-derived RDM of those concepts (cosine distances of their SPoSE rows)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    rdm = 1.0 - unit @ unit.T
    np.fill_diagonal(rdm, 0.0)
    rdm = (rdm + rdm.T) / 2

    # the canary tree
    outside = tmp / "outside"
    _rdm_folder(outside / "canary_ds", images, rdm)
    shutil.copy(spose_npy, outside / "feats.npy")
    (outside / "ckpt.pth").write_bytes(b"not a checkpoint")
    np.save(outside / "vice.npy", np.ones((1854, 42)))
    (outside / "secret.txt").write_text("s3cret-line-that-must-never-be-echoed\n")
    # the operator's root
    root = tmp / "labsets"
    _rdm_folder(root / "lab12", images, rdm)
    (root / "symlinked").symlink_to(outside / "canary_ds")
    _rdm_folder(root / "leaky_images", images, rdm)
    (root / "leaky_images" / "dataset.json").write_text(
        json.dumps({"images": str(outside / "canary_ds" / "images")})
    )
    _rdm_folder(root / "leaky_matrix", images, rdm)
    (root / "leaky_matrix" / "dataset.json").write_text(
        json.dumps({"matrix": "../../outside/canary_ds/rdm.npy"})
    )
    _rdm_folder(root / "linked_image", images, rdm)
    first = root / "linked_image" / "images" / images[0].name
    first.unlink()
    first.symlink_to(outside / "canary_ds" / "images" / images[0].name)
    _rdm_folder(root / "linked_matrix", images, rdm)
    (root / "linked_matrix" / "rdm.npy").unlink()
    (root / "linked_matrix" / "rdm.npy").symlink_to(outside / "canary_ds" / "rdm.npy")

    model = "test/hostile-spose66"
    register_model(model, f"features:{spose_npy}")
    redis = RedisServer(tmp / "redis")
    redis.start()
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        redis_url=redis.url,
        tokens=dict(TOKENS),
        data_dir=str(data_dir),
        grace_s=5.0,
        max_workers=2,
        lock_ttl_s=3.0,
        uploads_dir=str(tmp / "uploads"),
        upload_limits=UploadLimits(max_total_bytes=4 << 20, max_image_pixels=2048 * 2048),
        policy=Policy(
            limits=Limits(max_queued_per_token=2, max_n_bootstrap=2000),
            datasets_dirs=(root,),
        ),
    )
    server = ThreadedServer(config)
    expected = odd_one_out_accuracy(spose, things_triplets(data_dir))
    try:
        yield World(outside, root, server, redis, expected, rows, rdm, model)
    finally:
        server.stop(grace=2.0)
        redis.stop()


def call_score(world: World, request: Any, token: str | None = ALICE) -> Any:
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    channel, stub = world.stub()
    with channel:
        try:
            return list(stub.Score(request, metadata=metadata, timeout=120))
        except grpc.RpcError as exc:
            return exc


def call_upload(world: World, request: Any, token: str = ALICE) -> Any:
    channel, stub = world.stub()
    with channel:
        try:
            return stub.UploadDataset(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=60
            )
        except grpc.RpcError as exc:
            return exc


def good_request(world: World, **kw: Any) -> Any:
    fields: dict[str, Any] = dict(model=world.model, dataset="things", options_json=GOOD_OPTIONS)
    fields.update(kw)
    return align_pb2.ScoreRequest(**fields)


def assert_correct_score(world: World, **kw: Any) -> Any:
    """The server answers a correct score (from its cache, unless ``refresh``)."""
    reply = call_score(world, good_request(world, **kw), token=BOB)
    assert not isinstance(reply, grpc.RpcError), reply
    report = json.loads(reply[-1].report_json)
    assert report["metrics"]["odd_one_out"]["accuracy"] == pytest.approx(world.expected, abs=1e-6)
    return reply[-1]


# -- the cases ---------------------------------------------------------------------------------


def upload_request(files: list[tuple[str, bytes]], digest: str | None = None) -> Any:
    from align.uploads import upload_digest

    return align_pb2.UploadDatasetRequest(
        digest=digest or upload_digest(files),
        files=[align_pb2.UploadedFile(name=n, data=d) for n, d in files],
    )


def _jpeg(world: World) -> bytes:
    return next((world.root / "lab12" / "images").iterdir()).read_bytes()


def _score_ds(name: str | Callable[[World], str]) -> Callable[[World], Any]:
    def build(world: World) -> Any:
        ds = name(world) if callable(name) else name
        return ("score", good_request(world, dataset=ds))

    return build


def _score_model(name: str | Callable[[World], str]) -> Callable[[World], Any]:
    def build(world: World) -> Any:
        model = name(world) if callable(name) else name
        return ("score", good_request(world, model=model))

    return build


def _score_opts(options: str, **kw: Any) -> Callable[[World], Any]:
    return lambda world: ("score", good_request(world, options_json=options, **kw))


def _features(world: World, data: bytes, shape: list[int], dtype: str) -> Any:
    return (
        "score",
        align_pb2.ScoreRequest(
            model="array:x",
            dataset="things",
            features=data,
            features_shape=shape,
            features_dtype=dtype,
            options_json=GOOD_OPTIONS,
        ),
    )


def _upload(files: Callable[[World], list[tuple[str, bytes]]], digest: str | None = None):
    return lambda world: ("upload", upload_request(files(world), digest))


OUT = lambda w: str(w.outside)  # noqa: E731

CASES: list[tuple[str, Callable[[World], Any], str, list[str]]] = [
    # -- dataset paths
    ("dataset absolute path", _score_ds(lambda w: str(w.outside / "canary_ds")),
     "INVALID_ARGUMENT", ["dataset", "reads no paths"]),
    ("dataset folder: form", _score_ds(lambda w: f"folder:{w.outside / 'canary_ds'}"),
     "INVALID_ARGUMENT", ["dataset"]),
    ("dataset relative path", _score_ds("../outside/canary_ds"), "INVALID_ARGUMENT", ["dataset"]),
    ("dataset dot-dot inside a name", _score_ds("lab12/../../outside/canary_ds"),
     "INVALID_ARGUMENT", ["dataset"]),
    ("dataset ~user", _score_ds("~root"), "INVALID_ARGUMENT", ["dataset"]),
    ("dataset ~/", _score_ds("~/canary_ds"), "INVALID_ARGUMENT", ["dataset"]),
    ("dataset backslash path", _score_ds("..\\outside\\canary_ds"), "INVALID_ARGUMENT",
     ["dataset"]),
    ("dataset /etc/passwd", _score_ds("/etc/passwd"), "INVALID_ARGUMENT", ["dataset"]),
    ("root entry that is a symlink out", _score_ds("symlinked"), "NOT_FOUND", ["symlinked"]),
    ("manifest images outside", _score_ds("leaky_images"), "INVALID_ARGUMENT",
     ["leaky_images", "absolute"]),
    ("manifest matrix outside", _score_ds("leaky_matrix"), "INVALID_ARGUMENT",
     ["leaky_matrix", "outside"]),
    ("image symlinked outside", _score_ds("linked_image"), "INVALID_ARGUMENT",
     ["linked_image", "outside"]),
    ("matrix symlinked outside", _score_ds("linked_matrix"), "INVALID_ARGUMENT",
     ["linked_matrix", "outside"]),
    ("upload id never uploaded", _score_ds("upload:" + "0" * 64), "NOT_FOUND", ["upload"]),
    # -- model paths and checkpoints
    ("features: path model", _score_model(lambda w: f"features:{w.outside / 'feats.npy'}"),
     "INVALID_ARGUMENT", ["model", "reads no paths"]),
    ("bare path model", _score_model(lambda w: str(w.outside / "feats.npy")),
     "INVALID_ARGUMENT", ["model"]),
    ("timm absolute checkpoint", _score_model(lambda w: f"timm/resnet18@{w.outside}/ckpt.pth"),
     "INVALID_ARGUMENT", ["model"]),
    ("timm relative checkpoint", _score_model("timm/resnet18@ckpt.pth"), "INVALID_ARGUMENT",
     ["model"]),
    ("open_clip checkpoint path", _score_model("open_clip/ViT-B-32@../outside/ckpt.pth"),
     "INVALID_ARGUMENT", ["model"]),
    ("text model folder", _score_model("text/x@~/models"), "INVALID_ARGUMENT", ["model"]),
    # -- absurd options
    ("n_bootstrap 10**9", _score_opts('{"n_bootstrap": 1000000000}'), "RESOURCE_EXHAUSTED",
     ["n_bootstrap", "2000"]),
    ("lambda grid of 1000", _score_opts(json.dumps({"lambdas": [0.1] * 1000}), metrics=["probe"]),
     "RESOURCE_EXHAUSTED", ["lambdas"]),
    ("1000 folds", _score_opts('{"k": 1000}', metrics=["probe"]), "RESOURCE_EXHAUSTED", ["k"]),
    ("10**9 iterations", _score_opts('{"max_iter": 1000000000}', metrics=["probe"]),
     "RESOURCE_EXHAUSTED", ["max_iter"]),
    ("batch size 10**9", _score_opts('{"batch_size": 1000000000}', metrics=["probe"]),
     "RESOURCE_EXHAUSTED", ["batch_size"]),
    ("data_dir from the client", lambda w: ("score", good_request(
        w, options_json=json.dumps({"data_dir": str(w.outside)}), metrics=["concepts"])),
     "INVALID_ARGUMENT", ["data_dir", "remote"]),
    ("vice file from the client", lambda w: ("score", good_request(
        w, options_json=json.dumps({"vice": str(w.outside / "vice.npy")}), metrics=["concepts"])),
     "INVALID_ARGUMENT", ["vice"]),
    ("n_threads", _score_opts('{"n_threads": 512}', metrics=["probe"]), "INVALID_ARGUMENT",
     ["n_threads"]),
    ("device", _score_opts('{"device": "cuda:7"}', metrics=["probe"]), "INVALID_ARGUMENT",
     ["device"]),
    ("NaN option", _score_opts('{"confidence": NaN}'), "INVALID_ARGUMENT", ["NaN"]),
    ("deeply nested options", _score_opts('{"seed": ' + "[" * 5000 + "]" * 5000 + "}"),
     "INVALID_ARGUMENT", ["options_json"]),
    ("100 kB of options", _score_opts(json.dumps({"similarity": "x" * 100_000})),
     "RESOURCE_EXHAUSTED", ["options_json"]),
    ("negative bootstrap", _score_opts('{"n_bootstrap": -5}'), "INVALID_ARGUMENT",
     ["n_bootstrap"]),
    # -- malformed and oversized payloads
    ("oversized features", lambda w: _features(w, b"\0" * (1854 * 283 * 4), [1854, 283], "<f4"),
     "RESOURCE_EXHAUSTED", ["bytes"]),
    ("features byte count wrong", lambda w: _features(w, b"\0" * 100, [1854, 66], "<f4"),
     "INVALID_ARGUMENT", ["features"]),
    ("negative features shape", lambda w: _features(w, b"\0" * 8, [-1, 66], "<f4"),
     "INVALID_ARGUMENT", ["features_shape"]),
    ("object dtype", lambda w: _features(w, b"\0" * 8, [1, 1], "|O"), "INVALID_ARGUMENT",
     ["features_dtype"]),
    ("200 metrics", lambda w: ("score", good_request(w, metrics=[f"m{i}" for i in range(200)])),
     "RESOURCE_EXHAUSTED", ["metrics"]),
    ("layer of 10k characters", lambda w: ("score", good_request(w, layer="x" * 10_000)),
     "INVALID_ARGUMENT", ["layer"]),
    ("report key path", lambda w: ("report", align_pb2.GetReportRequest(key="../" * 20 + "x")),
     "INVALID_ARGUMENT", ["key"]),
    # -- uploads
    ("upload name with ..", _upload(lambda w: [("../../etc/passwd", b"x")]),
     "INVALID_ARGUMENT", ["files"]),
    ("upload image name with ..", _upload(lambda w: [("images/../x.png", b"x")]),
     "INVALID_ARGUMENT", ["files"]),
    ("upload absolute name", _upload(lambda w: [(str(w.outside / "x.png"), b"x")]),
     "INVALID_ARGUMENT", ["files"]),
    ("upload image bomb", _upload(lambda w: [("images/bomb.png", png_header_bomb(60000, 60000)),
                                             ("rdm.npy", b"x")]),
     "RESOURCE_EXHAUSTED", ["pixels"]),
    ("upload text disguised as png", _upload(lambda w: [("images/a.png", b"GIF89a not a png"),
                                                        ("rdm.npy", b"x")]),
     "INVALID_ARGUMENT", ["images/a.png"]),
    ("upload jpeg named png", _upload(lambda w: [("images/a.png", _jpeg(w)), ("rdm.npy", b"x")]),
     "INVALID_ARGUMENT", ["images/a.png"]),
    ("upload manifest pointing out", _upload(lambda w: [
        ("dataset.json", json.dumps({"images": str(w.outside)}).encode()),
        ("images/a.jpg", _jpeg(w))]), "INVALID_ARGUMENT", ["dataset.json"]),
    ("upload digest mismatch", _upload(lambda w: [("images/a.jpg", _jpeg(w))], "ab" * 32),
     "INVALID_ARGUMENT", ["digest"]),
    ("upload digest not hex", _upload(lambda w: [("images/a.jpg", _jpeg(w))], "../" * 21 + "x"),
     "INVALID_ARGUMENT", ["digest"]),
    ("upload over the size cap", _upload(lambda w: [("images/a.jpg", _jpeg(w)),
                                                    ("rdm.csv", b"0" * (9 << 19))]),
     "RESOURCE_EXHAUSTED", ["bytes"]),
    ("upload that is not a dataset", _upload(lambda w: [("images/a.jpg", _jpeg(w)),
                                                        ("triplets.csv", b"a,b,c\n")]),
     "INVALID_ARGUMENT", ["triplets.csv"]),
    # -- tokens
    ("missing token", lambda w: ("score-token", (good_request(w), None)), "UNAUTHENTICATED",
     ["authorization"]),
    ("wrong token", lambda w: ("score-token", (good_request(w), "alice-token-0124")),
     "UNAUTHENTICATED", ["authorization"]),
    ("placeholder token", lambda w: ("score-token", (good_request(w),
                                                     "change-me-to-a-long-random-token")),
     "UNAUTHENTICATED", ["authorization"]),
    ("empty bearer", lambda w: ("score-token", (good_request(w), "")), "UNAUTHENTICATED",
     ["authorization"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_request_is_refused_reads_nothing_outside_and_poisons_nothing(
    world: World, build: Any, code: str, words: list[str]
):
    kind, request = build(world)
    watcher = audit()
    watcher.seen.clear()
    watcher.watching = True
    try:
        if kind == "score":
            reply = call_score(world, request)
        elif kind == "score-token":
            reply = call_score(world, request[0], token=request[1])
        elif kind == "upload":
            reply = call_upload(world, request)
        else:
            channel, stub = world.stub()
            with channel:
                try:
                    reply = stub.GetReport(
                        request, metadata=[("authorization", f"Bearer {ALICE}")], timeout=30
                    )
                except grpc.RpcError as exc:
                    reply = exc
    finally:
        watcher.watching = False
    assert isinstance(reply, grpc.RpcError), f"expected {code}, got an answer"
    assert reply.code().name == code, reply.details()
    for word in words:
        assert word in reply.details(), reply.details()
    assert "s3cret" not in (reply.details() or "")
    assert watcher.touched(world.outside) == [], "opened outside the roots"
    assert_correct_score(world)


def test_at_least_30_distinct_hostile_requests():
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


# -- behaviours: uploads that work, queues, cancellation, corrupt cache, stale lock -------------


def test_uploaded_folder_scores_like_embedded_and_a_repeat_upload_is_free(
    world: World, tmp_path: Path
):
    import align
    from align.uploads import folder_files, upload_digest

    folder = tmp_path / "mine"
    _rdm_folder(folder, sorted((world.root / "lab12" / "images").iterdir()), world.lab_rdm)
    files = folder_files(folder)
    digest = upload_digest(files)
    first = call_upload(world, upload_request(files))
    assert not isinstance(first, grpc.RpcError), first
    assert first.stored and first.present and first.dataset == f"upload:{digest}"
    # asking again with no files: the server holds it, nothing is sent
    again = call_upload(world, align_pb2.UploadDatasetRequest(digest=digest))
    assert again.present and not again.stored
    X = world.spose_rows.astype("<f8")
    reply = call_score(
        world,
        align_pb2.ScoreRequest(
            model="array:lab12",
            dataset=first.dataset,
            metrics=["rsa"],
            features=X.tobytes(),
            features_shape=list(X.shape),
            features_dtype="<f8",
            options_json=GOOD_OPTIONS,
        ),
    )
    assert not isinstance(reply, grpc.RpcError), reply
    from align.report import Report

    remote = Report.from_json(reply[-1].report_json)
    embedded = align.score(X, str(folder), metrics=["rsa"], cache=False, n_bootstrap=50)
    assert remote.metrics["rsa"] == embedded.metrics["rsa"]
    # independent: the model RDM is the human RDM itself (cosine distances of the same
    # SPoSE rows), so Spearman's rho is exactly 1
    assert remote.value("rsa", "score") == pytest.approx(1.0, abs=1e-9)
    assert str(world.root) not in reply[-1].report_json  # no server path in the report


def test_lab_folder_under_a_root_is_offered_by_name(world: World):
    X = world.spose_rows.astype("<f8")
    reply = call_score(
        world,
        align_pb2.ScoreRequest(
            model="array:lab12",
            dataset="lab12",
            metrics=["rsa"],
            features=X.tobytes(),
            features_shape=list(X.shape),
            features_dtype="<f8",
            options_json=GOOD_OPTIONS,
        ),
    )
    assert not isinstance(reply, grpc.RpcError), reply
    report = json.loads(reply[-1].report_json)
    assert report["dataset"] == "lab12"
    assert report["metrics"]["rsa"]["score"] == pytest.approx(1.0, abs=1e-9)
    assert str(world.root) not in reply[-1].report_json


def test_flooding_one_token_is_capped_and_others_still_served(world: World, spose_npy: Path):
    gated = GatedFeatures(spose_npy)
    try:
        with ThreadPoolExecutor(2) as pool:
            # two distinct computations of alice's hold her two places
            held = [
                pool.submit(call_score, world, good_request(world, model=gated.id,
                                                            options_json=f'{{"seed": {i}}}'))
                for i in range(2)
            ]  # fmt: skip
            gated.wait_entered()
            tick = threading.Event()
            for _ in range(1500):
                if world.server.server._servicer._active.get("alice", 0) >= 2:
                    break
                tick.wait(0.02)
            assert world.server.server._servicer._active.get("alice", 0) == 2
            third = call_score(world, good_request(world, options_json='{"seed": 9}'))
            assert isinstance(third, grpc.RpcError)
            assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "per token" in third.details()
            assert_correct_score(world)  # bob is served meanwhile
            gated.open()
            for f in held:
                assert not isinstance(f.result(timeout=120), grpc.RpcError)
    finally:
        gated.open()
    assert_correct_score(world)


def test_cancelled_stream_stops_the_work_nobody_waits_for(world: World, spose_npy: Path):
    gated = GatedFeatures(spose_npy)
    metrics = world.server.metrics
    before = metrics.total("align_work_cancelled_total")
    channel, stub = world.stub()
    try:
        call = stub.Score(
            good_request(world, model=gated.id),
            metadata=[("authorization", f"Bearer {ALICE}")],
            timeout=120,
        )
        next(call)  # the stream is open
        gated.wait_entered()
        call.cancel()
        wait = threading.Event()
        for _ in range(1500):
            if metrics.total("align_work_cancelled_total") > before:
                break
            wait.wait(0.02)
        assert metrics.total("align_work_cancelled_total") == before + 1
        assert not world.server.server._servicer._flights  # no flight left behind
    finally:
        gated.open()
        channel.close()
    assert_correct_score(world)


def _report_key(world: World) -> str:
    return assert_correct_score(world).report_key


def test_corrupt_report_in_redis_is_a_miss_deleted_counted_and_recomputed(world: World):
    import redis

    key = _report_key(world)
    r = redis.Redis.from_url(world.redis.url)
    servicer = world.server.server._servicer
    metrics = world.server.metrics
    for bad in (b"\xff\xfe not utf-8", b'{"metrics": {"odd_one_out": {"accuracy": 1.0}}}',
                b'{"model": "x", "dataset": "things", "metr'):  # fmt: skip
        r.set(f"align:v1:report:{key}", bad)
        servicer.cache._memory.clear()  # force the Redis tier
        before = metrics.value("align_cache_corrupt_total", {"kind": "report"})
        assert_correct_score(world)  # recomputed, correct, not the poisoned 1.0
        assert metrics.value("align_cache_corrupt_total", {"kind": "report"}) == before + 1
        stored = r.get(f"align:v1:report:{key}")
        assert stored is not None and json.loads(stored)["metrics"]["odd_one_out"][
            "accuracy"
        ] == pytest.approx(world.expected, abs=1e-6)


def test_corrupt_embedding_in_redis_is_a_miss_deleted_and_recomputed(world: World):
    import redis
    from align_services.evaluation.cache import MAGIC

    key = _report_key(world)
    r = redis.Redis.from_url(world.redis.url)
    emb_keys = [k for k in r.scan_iter("align:v1:emb:*")]
    assert emb_keys, "the good score stored an embedding"
    metrics = world.server.metrics
    servicer = world.server.server._servicer
    for bad in (MAGIC + b"\x05\x00\x00\x00{bad}", MAGIC + b"\xff\xff\xff\x7f", b"garbage"):
        for k in emb_keys:  # first round: all of them (ours is among them), then ours
            r.set(k, bad)
        r.delete(f"align:v1:report:{key}")
        servicer.cache._memory.clear()
        before = metrics.value("align_cache_corrupt_total", {"kind": "embedding"})
        assert_correct_score(world)
        assert metrics.value("align_cache_corrupt_total", {"kind": "embedding"}) == before + 1
        rewritten = [k for k in emb_keys if r.get(k) not in (None, bad)]
        assert len(rewritten) == 1  # ours: rewritten with the real embedding
        emb_keys = rewritten


def test_stale_lock_is_broken_and_the_work_proceeds(world: World):
    import redis

    key = _report_key(world)
    r = redis.Redis.from_url(world.redis.url)
    r.delete(f"align:v1:report:{key}")
    world.server.server._servicer.cache._memory.clear()
    # a lock left by a crashed holder of an older server: no expiry at all
    r.set(f"align:v1:lock:{key}", "crashed-holder")
    before = world.server.metrics.total("align_stale_locks_total")
    assert_correct_score(world)
    assert world.server.metrics.total("align_stale_locks_total") == before + 1
    assert r.get(f"align:v1:lock:{key}") is None  # released after the work


def test_lock_is_renewed_while_the_work_runs(world: World, spose_npy: Path):
    import redis

    gated = GatedFeatures(spose_npy)
    r = redis.Redis.from_url(world.redis.url)
    try:
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(call_score, world, good_request(world, model=gated.id))
            gated.wait_entered()
            locks = list(r.scan_iter("align:v1:lock:*"))
            assert len(locks) == 1
            # The holder renews every ttl/3 (1 s of 3 s): watch Redis until the lock's
            # remaining time goes UP (a renewal); it must never have expired meanwhile.
            last, renewed, tick = r.pttl(locks[0]), False, threading.Event()
            assert 0 < last <= 3000
            for _ in range(1000):
                now = r.pttl(locks[0])
                assert now > 0, "the lock expired while the work ran"
                if now > last:
                    renewed = True
                    break
                last = now
                tick.wait(0.01)
            assert renewed
            gated.open()
            assert not isinstance(fut.result(timeout=120), grpc.RpcError)
        assert r.get(locks[0]) is None  # compare-and-delete on release
    finally:
        gated.open()


def test_placeholder_tokens_stop_the_server_from_starting(tmp_path: Path):
    from align.errors import InvalidInputError
    from align_services.evaluation.auth import load_tokens

    tokens = tmp_path / "tokens"
    tokens.write_text("alice:change-me-to-a-long-random-token\n")
    with pytest.raises(InvalidInputError) as info:
        load_tokens(tokens_file=tokens, environ={})
    assert "placeholder" in str(info.value)
    with pytest.raises(InvalidInputError):
        load_tokens(tokens="bob:change-me-too", environ={})


def test_client_and_server_upload_digests_agree():
    from align.uploads import upload_digest as client_digest
    from align_services.evaluation.uploads import upload_digest as server_digest

    files = [("images/b.png", b"\x89PNG..."), ("rdm.npy", b"abc"), ("images/a.jpg", b"\xff")]
    assert client_digest(files) == server_digest(files) == server_digest(files[::-1])
    lines = sorted(f"{n} {hashlib.sha256(d).hexdigest()}\n" for n, d in files)
    assert client_digest(files) == hashlib.sha256("".join(lines).encode()).hexdigest()


def test_image_formats_outside_the_allow_list_are_refused():
    from align.errors import InvalidInputError
    from align_services.evaluation.uploads import UploadLimits, check_files
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="BMP")
    with pytest.raises(InvalidInputError) as info:
        check_files([("images/a.bmp", buf.getvalue())], UploadLimits())
    assert "files" in str(info.value)


def test_remote_client_uploads_a_folder_and_a_repeat_sends_only_the_digest(
    world: World, tmp_path: Path
):
    import align
    from align.remote import RemoteBackend

    folder = tmp_path / "mine2"
    _rdm_folder(folder, sorted((world.root / "lab12" / "images").iterdir())[:10],
                world.lab_rdm[:10, :10])  # fmt: skip
    X = world.spose_rows[:10].astype("<f8")
    metrics = world.server.metrics

    def uploads() -> float:
        return metrics.value("align_requests_total", {"method": "UploadDataset", "code": "OK"})

    before = uploads()
    with RemoteBackend(world.server.address, ALICE, progress=False, retries=0) as b:
        first = b.score(X, folder, metrics=["rsa"], options={"n_bootstrap": 50})
        assert uploads() == before + 2  # asked, then sent the files
        second = b.score(X, str(folder), metrics=["rsa"], options={"n_bootstrap": 50})
        assert uploads() == before + 3  # asked only: the server holds that content
    embedded = align.score(X, str(folder), metrics=["rsa"], cache=False, n_bootstrap=50)
    assert first.metrics == second.metrics == embedded.metrics
    assert first.dataset.startswith("upload:")


def test_a_job_past_its_time_budget_is_stopped_with_a_clear_error(
    eval_service: Any, spose_npy: Path
):
    from align_services.evaluation.limits import Limits, Policy

    server = eval_service(policy=Policy(limits=Limits(job_timeout_s=1.0)))
    gated = GatedFeatures(spose_npy)  # its embedding waits until the gate opens: forever here
    try:
        request = align_pb2.ScoreRequest(
            model=gated.id, dataset="things", options_json=GOOD_OPTIONS
        )
        with grpc.insecure_channel(server.address) as channel:
            stub = align_pb2_grpc.EvaluationServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Score(request, metadata=[("authorization", f"Bearer {ALICE}")],
                                timeout=120))  # fmt: skip
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "time budget" in info.value.details()
    finally:
        gated.open()


def test_cache_ttl_expires_reports_and_embeddings(
    eval_service: Any, redis_server: Any, spose_npy: Path
):
    import redis
    from align.models import register_model

    register_model("test/ttl-spose66", f"features:{spose_npy}")
    server = eval_service(report_ttl_s=600, embedding_ttl_s=600)
    request = align_pb2.ScoreRequest(
        model="test/ttl-spose66", dataset="things", options_json=GOOD_OPTIONS
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = align_pb2_grpc.EvaluationServiceStub(channel)
        last = list(stub.Score(request, metadata=[("authorization", f"Bearer {ALICE}")],
                               timeout=120))[-1]  # fmt: skip
    r = redis.Redis.from_url(redis_server.url)
    assert 0 < r.ttl(f"align:v1:report:{last.report_key}") <= 600
    (emb,) = list(r.scan_iter("align:v1:emb:*"))
    assert 0 < r.ttl(emb) <= 600
