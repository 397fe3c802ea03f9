"""``python -m align_services.evaluation``: run the evaluation service.

Tokens come from ``ALIGN_TOKENS_FILE`` / ``ALIGN_TOKENS`` (or ``--tokens-file``).
SIGTERM stops accepting calls and lets in-flight ones finish within ``--grace``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from align.errors import AlignError

from .auth import load_tokens
from .logs import configure_logging
from .server import ServerConfig, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m align_services.evaluation", description=__doc__)
    p.add_argument("--host", default=env("ALIGN_EVAL_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(env("ALIGN_EVAL_PORT", "50051")))
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("ALIGN_EVAL_METRICS_PORT", "9101")),
        help="Prometheus /metrics port; -1 disables it",
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
    p.add_argument("--log-level", default=env("ALIGN_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
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
