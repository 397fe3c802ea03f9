"""The evaluation service: a grpc.aio server over ``align.evaluate`` with a Redis cache.

Run it with ``python -m align_services.evaluation`` (see ``--help``). The wire contract
is ``proto/align/v1/align.proto`` (``EvaluationService``); ``align.remote`` is its client.
"""

from .server import EvaluationServer, ServerConfig, ThreadedServer, serve

__all__ = ["EvaluationServer", "ServerConfig", "ThreadedServer", "serve"]
