"""Kept for imports of the old path: the error mapping is :mod:`align_services.grpc_errors`,
shared with the embedding application."""

from align_services.grpc_errors import EmbedderUnavailableError, describe, status_for

__all__ = ["EmbedderUnavailableError", "describe", "status_for"]
