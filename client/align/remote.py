"""The gRPC backend of :class:`align.api.Client`: scores on an align evaluation server.

    client = align.connect("eval.example.org:50051", token="...")   # or ALIGN_SERVER/ALIGN_TOKEN
    report = client.score("timm/tf_efficientnet_lite0", "things")

A folder dataset of your own (``score(model, Path("my/folder"))``, ``"./my/folder"``, or a
Dataset loaded from one) is uploaded: the server never reads a client's path
(align.uploads). Calls time out after ``timeout_s`` (default 2 hours).

The server plans and assembles reports with the same code as embedded ``align.score``
(`align.scoring`) and sends back ``Report.to_dict()``, so the numbers, cache keys and
provenance digests are the same; the provenance says ``backend: remote`` and ``cache:
hit|miss``. This module imports `align.scoring`, never `align.api` (no import cycle).

Calls are retried with exponential backoff while the server is
UNAVAILABLE; errors come back as the same exception classes the embedded library raises
(InvalidInputError naming the field, NotFoundError with close matches, ...).

``server`` forms: ``host:port`` (plain), ``grpc://host:port`` (plain),
``grpcs://host:port`` (TLS; ``root_certificates`` for a private CA).
grpc is imported only when a RemoteBackend is made.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    ERROR_METADATA_KEY,
    STATUS_CODES,
    AlignError,
    InvalidInputError,
    NotFoundError,
    error_from_payload,
)
from .report import Report
from .scoring import (
    ENGINE_OPTIONS,
    features_path,
    is_dataset,
    is_features_path,
    load_features,
    npz_key,
)
from .uploads import folder_files, is_local_folder, upload_digest


class ServiceUnavailableError(AlignError, ConnectionError):
    """The server (or a service behind it) could not be reached; retrying later may help."""


class AuthenticationError(AlignError, PermissionError):
    """The server refused the token (missing or wrong)."""


class RemoteError(AlignError):
    """Any other error status from the server (message and gRPC code kept)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


def _metadata_value(trailing: Any, key: str) -> str | None:
    for k, v in trailing or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def error_from_status(code: Any, details: str, trailing: Any = None) -> Exception:
    """The align exception for a gRPC error status (rebuilt from the ``align-error``
    trailing metadata when the server sent it)."""
    name = getattr(code, "name", str(code))
    payload_text = _metadata_value(trailing, ERROR_METADATA_KEY)
    payload: dict[str, Any] = {}
    if payload_text:
        try:
            payload = json.loads(payload_text)
        except json.JSONDecodeError:
            payload = {}
    kind = payload.get("type")
    rebuilt = error_from_payload(payload, details) if kind else None
    if rebuilt is not None:
        return rebuilt
    if kind:
        cls = next((c for c, _ in STATUS_CODES if c.__name__ == kind), None)
    else:
        cls = next((c for c, code in STATUS_CODES if code == name), None)
    if cls is InvalidInputError:
        field, sep, problem = details.partition(": ")
        return InvalidInputError(field if sep else "request", problem if sep else details)
    if cls is NotFoundError:
        err = NotFoundError("item", details)
        err.args = (details,)
        return err
    if cls is not None:
        return cls(details)
    if name == "UNAVAILABLE":
        return ServiceUnavailableError(details)
    if name == "UNAUTHENTICATED":
        return AuthenticationError(
            f"the server refused the token: {details} (set ALIGN_TOKEN or pass token=...)"
        )
    return RemoteError(name, details)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC channel options: messages up to ``max_message_bytes`` both ways."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def parse_server(server: str) -> tuple[str, bool]:
    """``(host:port, tls)`` from ``host:port``, ``grpc://host:port`` or ``grpcs://...``."""
    if not isinstance(server, str) or not server.strip():
        raise InvalidInputError("server", f"is {server!r}", "host:port of an align server")
    text = server.strip()
    tls = False
    if text.startswith("grpcs://"):
        text, tls = text[len("grpcs://") :], True
    elif text.startswith("grpc://"):
        text = text[len("grpc://") :]
    elif "://" in text:
        raise InvalidInputError("server", f"is {server!r}", "host:port, grpc://… or grpcs://…")
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidInputError("server", f"is {server!r}", "host:port, e.g. localhost:50051")
    return f"{host}:{port}", tls


class RemoteBackend:
    """Scores through an align evaluation server over gRPC (see module docstring)."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        tls: bool | None = None,
        root_certificates: bytes | str | Path | None = None,
        progress: bool | None = None,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float | None = 7200.0,
        max_message_bytes: int = 256 << 20,
    ) -> None:
        import grpc

        from .v1 import align_pb2, align_pb2_grpc

        self._grpc = grpc
        self._pb = align_pb2
        self.target, url_tls = parse_server(server)
        self.server = server
        self.tls = url_tls if tls is None else tls
        self.token = token
        self.progress = progress
        if retries < 0:
            raise InvalidInputError("retries", f"is {retries}", "0 or more")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        options = channel_options(max_message_bytes)
        if self.tls:
            roots = root_certificates
            if isinstance(roots, (str, Path)):
                roots = Path(roots).read_bytes()
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._stub = align_pb2_grpc.EvaluationServiceStub(self._channel)

    def __repr__(self) -> str:
        return f"RemoteBackend({self.server!r}, tls={self.tls})"

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------
    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _retrying(self, call: Any) -> Any:
        """Run ``call()``; retry on UNAVAILABLE with exponential backoff and jitter."""
        grpc = self._grpc
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code()
                details = exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                    time.sleep(delay * (0.5 + random.random() / 2))
                    attempt += 1
                    continue
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise ServiceUnavailableError(
                        f"cannot reach the align server at {self.target} after "
                        f"{attempt + 1} attempts ({details}). Is it running and is "
                        "ALIGN_SERVER right? Retry later, or unset ALIGN_SERVER to run embedded."
                    ) from None
                trailing = exc.trailing_metadata()
                raise error_from_status(code, details, trailing) from None

    # -- the Backend protocol ------------------------------------------------------------
    def score(
        self,
        model: Any,
        dataset: Any,
        *,
        metrics: Sequence[str] | None = None,
        layer: str = "penultimate",
        data_dir: str | Path | None = None,
        cache: Any = True,
        options: Mapping[str, Any] | None = None,
    ) -> Report:
        """Score on the server. ``data_dir`` is ignored (the server reads its own data);
        ``cache=False`` asks the server to recompute instead of serving its cache."""
        opts = {k: v for k, v in dict(options or {}).items() if v is not None}
        show = opts.pop("progress", self.progress)
        for name in ENGINE_OPTIONS:  # how the server embeds is the server's business
            opts.pop(name, None)
        folder = is_local_folder(dataset)
        if folder is not None:  # the server reads no client paths: send the folder
            dataset = self.upload_dataset(folder)
        request = self._score_request(model, dataset, metrics, layer, opts, cache is False)
        return self._retrying(lambda: self._stream(request, show))

    def upload_dataset(self, folder: str | Path) -> str:
        """Send a folder dataset (judgments + JPEG/PNG images) to the server; returns its id
        there (``upload:<sha256>``). Content-addressed: when the server already holds the
        same content, nothing but the digest is sent."""
        files = folder_files(Path(folder))
        digest = upload_digest(files)
        pb = self._pb

        def ask() -> Any:
            return self._stub.UploadDataset(
                pb.UploadDatasetRequest(digest=digest),
                metadata=self._metadata,
                timeout=self.timeout_s,
            )

        reply = self._retrying(ask)
        if not reply.present:
            request = pb.UploadDatasetRequest(
                digest=digest, files=[pb.UploadedFile(name=n, data=d) for n, d in files]
            )
            reply = self._retrying(
                lambda: self._stub.UploadDataset(
                    request, metadata=self._metadata, timeout=self.timeout_s
                )
            )
        return str(reply.dataset)

    def _score_request(
        self,
        model: Any,
        dataset: Any,
        metrics: Sequence[str] | None,
        layer: str,
        options: Mapping[str, Any],
        refresh: bool,
    ) -> Any:
        from .results import to_jsonable

        if is_dataset(dataset):
            ds_id = str(dataset.id)
            if ds_id.startswith("folder:"):
                raise InvalidInputError(
                    "dataset",
                    f"{ds_id} is a local folder the server cannot read",
                    "a dataset id the server knows (see list_datasets())",
                )
        elif isinstance(dataset, (str, Path)) and str(dataset):
            ds_id = str(dataset)
        else:
            raise InvalidInputError("dataset", f"is {dataset!r:.60}", "a dataset id")
        try:
            options_json = json.dumps(to_jsonable(dict(options)), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                "options", f"cannot be sent as JSON ({exc})", "JSON values"
            ) from None
        fields: dict[str, Any] = dict(
            dataset=ds_id,
            metrics=list(metrics or []),
            options_json=options_json,
            refresh=refresh,
        )
        if isinstance(model, np.ndarray) or is_features_path(model):
            if isinstance(model, np.ndarray):
                X, key, label = model, None, ""
            else:
                path = features_path(model)
                X, key = load_features(path, key=npz_key(layer))
                label = f"features:{path}"
            X = np.asarray(X)
            if X.ndim != 2 or X.dtype not in (np.float32, np.float64):
                raise InvalidInputError(
                    "features", f"is {X.dtype} with shape {X.shape}", "a 2-d float32/64 array"
                )
            le = X.astype(X.dtype.newbyteorder("<"), copy=False)
            fields.update(
                model=label,
                layer=key or "",
                features=np.ascontiguousarray(le).tobytes(),
                features_shape=list(X.shape),
                features_dtype=le.dtype.str,
            )
        elif isinstance(model, str) and model:
            fields.update(model=model, layer=layer)
        elif hasattr(model, "spec") and hasattr(model.spec, "id"):
            fields.update(model=str(model.spec.id), layer=layer)
        else:
            raise InvalidInputError(
                "model", f"is {type(model).__name__}", "a model id, a features path or an array"
            )
        return self._pb.ScoreRequest(**fields)

    def _stream(self, request: Any, show: bool | None) -> Report:
        from tqdm import tqdm

        enabled = sys.stderr.isatty() if show is None else bool(show)
        bar = tqdm(total=0, disable=not enabled, desc="align", unit="", leave=False)
        try:
            calls = self._stub.Score(request, metadata=self._metadata, timeout=self.timeout_s)
            for msg in calls:
                if msg.WhichOneof("final") == "report_json":
                    # the server rebuilt it for this request: provenance has backend
                    # "remote", cache "hit"|"miss" and the report key
                    return Report.from_json(msg.report_json)
                desc = msg.stage
                if msg.queue_position:
                    desc = f"queued #{msg.queue_position}"
                bar.set_description(f"align {desc}", refresh=False)
                if msg.total:
                    bar.total = int(msg.total)
                    bar.n = int(msg.done)
                bar.set_postfix_str(msg.message[:60], refresh=True)
        finally:
            bar.close()
        raise ServiceUnavailableError(
            f"the align server at {self.target} ended the Score stream without a report"
        )

    # -- more of the service -------------------------------------------------------------
    def list_datasets(self) -> list[dict[str, Any]]:
        reply = self._retrying(
            lambda: self._stub.ListDatasets(
                self._pb.ListDatasetsRequest(), metadata=self._metadata, timeout=self.timeout_s
            )
        )
        return [
            {
                "id": d.id,
                "kind": d.kind,
                "present": d.present,
                "path": d.path,
                "description": d.description,
            }
            for d in reply.datasets
        ]

    def get_report(self, key: str) -> Report:
        reply = self._retrying(
            lambda: self._stub.GetReport(
                self._pb.GetReportRequest(key=key), metadata=self._metadata, timeout=self.timeout_s
            )
        )
        return Report.from_json(reply.report_json)


__all__ = [
    "AuthenticationError",
    "RemoteBackend",
    "RemoteError",
    "ServiceUnavailableError",
    "error_from_status",
    "parse_server",
]
