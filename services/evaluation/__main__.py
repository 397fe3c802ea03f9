"""``python -m align_services.evaluation``: run the evaluation service.

Tokens come from ``ALIGN_TOKENS_FILE`` / ``ALIGN_TOKENS`` (or ``--tokens-file``).
SIGTERM stops accepting calls and lets in-flight ones finish within ``--grace``.
Listens on 127.0.0.1 unless ``--host`` (``ALIGN_EVAL_HOST``) says otherwise; the metrics
endpoint stays on ``--metrics-host`` (loopback by default). What clients may ask is
bounded (services/evaluation/limits.py; the ``--max-*`` flags).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from align.errors import AlignError

from .auth import load_tokens
from .limits import Limits, Policy
from .logs import configure_logging
from .server import ServerConfig, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m align_services.evaluation", description=__doc__)
    p.add_argument("--host", default=env("ALIGN_EVAL_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("ALIGN_EVAL_PORT", "50051")))
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("ALIGN_EVAL_METRICS_PORT", "9101")),
        help="Prometheus /metrics port; -1 disables it",
    )
    p.add_argument(
        "--metrics-host",
        default=env("ALIGN_EVAL_METRICS_HOST", "127.0.0.1"),
        help="interface of the metrics endpoint (compose: 0.0.0.0 on the private network)",
    )
    p.add_argument(
        "--redis",
        default=env("ALIGN_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL, or 'off' to run without Redis",
    )
    p.add_argument(
        "--embedder",
        default=env("ALIGN_EMBEDDER", "local"),
        help="'local' (in-process align.models) or grpc://host:port (Ray Serve gRPC proxy)",
    )
    p.add_argument("--embed-chunk-size", type=int, default=256)
    p.add_argument("--device", default=env("ALIGN_DEVICE"))
    p.add_argument("--tokens-file", default=env("ALIGN_TOKENS_FILE"))
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept calls without a token (only when no token is configured; local use)",
    )
    p.add_argument("--tls-cert", default=env("ALIGN_TLS_CERT"))
    p.add_argument("--tls-key", default=env("ALIGN_TLS_KEY"))
    p.add_argument("--workers", type=int, default=int(env("ALIGN_EVAL_WORKERS", "2")))
    p.add_argument("--per-token", type=int, default=int(env("ALIGN_EVAL_PER_TOKEN", "1")))
    p.add_argument("--max-stimuli", type=int, default=100_000)
    p.add_argument("--max-request-bytes", type=int, default=1 << 20)
    p.add_argument("--grace", type=float, default=30.0, help="seconds to finish in-flight work")
    p.add_argument("--data-dir", default=env("ALIGN_DATA_DIR"))
    p.add_argument(
        "--datasets-dir",
        action="append",
        default=[d for d in (env("ALIGN_DATASETS_DIR") or "").split(os.pathsep) if d],
        help="a folder of dataset folders offered by name (repeatable)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID=TARGET",
        help="offer a model id the operator configured, e.g. lab/r50=timm/resnet50@/ckpt.pth",
    )
    p.add_argument("--uploads-dir", default=env("ALIGN_UPLOADS_DIR"))
    p.add_argument(
        "--cache-ttl",
        type=int,
        default=int(env("ALIGN_CACHE_TTL", "0")) or None,
        help="seconds a cached report or embedding lives in Redis (default: no expiry)",
    )
    p.add_argument("--max-bootstrap", type=int, default=10_000)
    p.add_argument("--job-timeout", type=float, default=3600.0, help="seconds per computation")
    p.add_argument("--max-queued-per-token", type=int, default=8)
    p.add_argument("--log-level", default=env("ALIGN_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from pathlib import Path

    from align.errors import InvalidInputError
    from align.models import register_model

    from .auth import is_placeholder

    if args.redis and is_placeholder(args.redis):
        raise InvalidInputError(
            "ALIGN_REDIS_URL",
            "holds the deploy/env.example placeholder password",
            "REDIS_PASSWORD set to a long random value (openssl rand -hex 24)",
        )
    models: dict[str, str] = {}
    for entry in args.model:
        model_id, sep, target = entry.partition("=")
        if not sep or not model_id.strip() or not target.strip():
            raise InvalidInputError("--model", f"is {entry!r}", "ID=TARGET")
        models[model_id.strip()] = target.strip()
        register_model(model_id.strip(), target.strip())
    limits = Limits(
        max_n_bootstrap=args.max_bootstrap,
        job_timeout_s=args.job_timeout,
        max_queued_per_token=args.max_queued_per_token,
    )
    policy = Policy(
        limits=limits,
        datasets_dirs=tuple(Path(d).expanduser().resolve() for d in args.datasets_dir),
        models=models,
    )
    return ServerConfig(
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.metrics_host,
        policy=policy,
        uploads_dir=args.uploads_dir,
        report_ttl_s=args.cache_ttl,
        embedding_ttl_s=args.cache_ttl,
        redis_url=None if args.redis in ("", "off", "none") else args.redis,
        embedder=args.embedder,
        embed_chunk_size=args.embed_chunk_size,
        device=args.device,
        tokens=load_tokens(tokens_file=args.tokens_file),
        allow_anonymous=args.insecure_no_auth,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_workers=args.workers,
        per_token=args.per_token,
        max_stimuli=args.max_stimuli,
        max_request_bytes=args.max_request_bytes,
        grace_s=args.grace,
        data_dir=args.data_dir,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logger = configure_logging(args.log_level)
    try:
        config = config_from_args(args)
        asyncio.run(serve(config))
    except AlignError as exc:
        logger.error("cannot start the evaluation service", extra={"error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
