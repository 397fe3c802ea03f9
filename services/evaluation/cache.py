"""Redis cache of embeddings and reports, keyed by content digests.

Values are written with ONE ``SET`` each (embeddings as a small JSON header plus the raw
float32 bytes, reports as the whole JSON text), so a reader sees either nothing or a
complete value, and a shutdown never leaves half a report behind.

Redis is an accelerator, never a source of truth: when it is down, slow or has evicted a
key, every operation returns "miss" (or does nothing), the failure is logged and counted
in ``align_cache_errors_total``, and results stay correct, only slower.

A small in-process LRU of reports sits in front of Redis (tier "memory"), so a report
just computed can be fetched again even while Redis is unreachable.

What is read is verified: a report must be UTF-8 JSON of a report object
(``model``/``dataset``/``metrics``/``provenance``), an embedding must decode to the
header's shape with finite-or-NaN float32 values. Anything else (truncated, corrupted,
written by something else) is a miss: the key is deleted (only if it still holds the
bad value) and counted in ``align_cache_corrupt_total{kind}``, so the next request
recomputes and rewrites it.

Cross-process single flight: a lock key ``SET NX PX ttl`` holding a random owner token,
renewed by its holder every ttl/3 (compare-and-expire) and released by
compare-and-delete, so a crashed holder blocks its peers for at most one ttl.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import ServiceMetrics

MAGIC = b"ALGNEMB1"
KEY_PREFIX = "align:v1:"

# Compare-and-delete: release a lock only if we still own it (also: delete a corrupt
# value only if it is still the one we read).
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

# Compare-and-expire: renew a lock only if we still own it.
_RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

# A lock that would live longer than ARGV[1] ms (no holder of ours sets that) or that
# never expires is stale: delete it.
_BREAK_STALE_LUA = """
local ttl = redis.call('pttl', KEYS[1])
if ttl == -1 or ttl > tonumber(ARGV[1]) then
  return redis.call('del', KEYS[1])
end
return 0
"""

_REPORT_FIELDS = ("model", "dataset", "metrics", "provenance")


def check_report_text(blob: bytes) -> str:
    """The report JSON text of a cached value; ValueError when it is not one."""
    text = blob.decode("utf-8")
    value = json.loads(text)
    if not isinstance(value, dict) or any(k not in value for k in _REPORT_FIELDS):
        raise ValueError("not a report object")
    if not isinstance(value["metrics"], dict) or not isinstance(value["provenance"], dict):
        raise ValueError("report metrics/provenance are not objects")
    return text


def encode_embedding(array: np.ndarray, meta: dict[str, Any]) -> bytes:
    """``MAGIC | u32 header length | JSON header | float32 little-endian C-order bytes``."""
    a = np.ascontiguousarray(array, dtype="<f4")
    header = json.dumps({"shape": list(a.shape), "dtype": "<f4", "meta": meta}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + a.tobytes()


def decode_embedding(blob: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    if not blob.startswith(MAGIC):
        raise ValueError("not an align embedding blob")
    (n,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    if start + n > len(blob):
        raise ValueError("embedding blob is truncated inside its header")
    header = json.loads(blob[start : start + n])
    if not isinstance(header, dict) or header.get("dtype") != "<f4":
        raise ValueError("embedding header is not an object with dtype <f4")
    shape = tuple(int(s) for s in header["shape"])
    if len(shape) != 2 or min(shape) < 0:
        raise ValueError(f"embedding header has shape {shape}")
    if (len(blob) - start - n) % 4:
        raise ValueError("embedding blob is truncated inside a float")
    data = np.frombuffer(blob, dtype="<f4", offset=start + n)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"embedding blob holds {data.size} floats, header says {shape}")
    if np.isinf(data).any():
        raise ValueError("embedding holds infinite values")
    meta = header.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError("embedding meta is not an object")
    return data.reshape(shape).astype(np.float32, copy=True), dict(meta)


@dataclass
class CachedEmbedding:
    features: np.ndarray
    meta: dict[str, Any]


class Cache:
    """Async Redis cache; ``url=None`` disables Redis (memory tier only)."""

    def __init__(
        self,
        url: str | None,
        metrics: ServiceMetrics,
        logger: logging.Logger | None = None,
        *,
        report_ttl_s: int | None = None,
        embedding_ttl_s: int | None = None,
        memory_reports: int = 256,
        connect_timeout_s: float = 0.5,
        op_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.metrics = metrics
        self.log = logger or logging.getLogger("align_services.evaluation.cache")
        self.report_ttl_s = report_ttl_s
        self.embedding_ttl_s = embedding_ttl_s
        self._memory: OrderedDict[str, str] = OrderedDict()
        self._memory_max = memory_reports
        self._client: Any = None
        if url:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No client-side retries: a failed op is a miss now, not a stall of seconds.
            self._client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=op_timeout_s,
                retry=Retry(NoBackoff(), 0),
                retry_on_error=[],
                health_check_interval=0,
            )

    @property
    def enabled(self) -> bool:
        return self._client is not None

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # pragma: no cover - best effort at shutdown
                pass

    def _failed(self, op: str, key: str, exc: BaseException) -> None:
        self.metrics.cache_errors.labels(op=op).inc()
        self.log.warning(
            "redis %s failed; continuing without the cache",
            op,
            extra={"op": op, "key": key, "error": f"{type(exc).__name__}: {exc}"},
        )

    async def _call(self, op: str, key: str, coro: Any) -> tuple[bool, Any]:
        try:
            return True, await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(op, key, exc)
            return False, None

    # -- reports ---------------------------------------------------------------------
    def _remember(self, key: str, text: str) -> None:
        self._memory[key] = text
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_max:
            self._memory.popitem(last=False)

    async def get_report(self, key: str) -> str | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.metrics.cache_hits.labels(kind="report", tier="memory").inc()
            return self._memory[key]
        if self._client is not None:
            ok, blob = await self._call(
                "get_report", key, self._client.get(KEY_PREFIX + "report:" + key)
            )
            if ok and blob is not None:
                try:
                    text = check_report_text(blob)
                except (ValueError, UnicodeDecodeError) as exc:
                    await self._corrupt("report", KEY_PREFIX + "report:" + key, blob, exc)
                else:
                    self._remember(key, text)
                    self.metrics.cache_hits.labels(kind="report", tier="redis").inc()
                    return text
        self.metrics.cache_misses.labels(kind="report").inc()
        return None

    async def put_report(self, key: str, text: str) -> bool:
        """Store a finished report: one SET of the whole JSON (atomic for readers)."""
        self._remember(key, text)
        if self._client is None:
            return False
        ok, _ = await self._call(
            "put_report",
            key,
            self._client.set(KEY_PREFIX + "report:" + key, text.encode(), ex=self.report_ttl_s),
        )
        return ok

    # -- embeddings ------------------------------------------------------------------
    async def get_embedding(self, key: str) -> CachedEmbedding | None:
        if self._client is not None:
            ok, blob = await self._call(
                "get_embedding", key, self._client.get(KEY_PREFIX + "emb:" + key)
            )
            if ok and blob is not None:
                try:
                    features, meta = decode_embedding(blob)
                except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
                    await self._corrupt("embedding", KEY_PREFIX + "emb:" + key, blob, exc)
                else:
                    self.metrics.cache_hits.labels(kind="embedding", tier="redis").inc()
                    return CachedEmbedding(features, meta)
        self.metrics.cache_misses.labels(kind="embedding").inc()
        return None

    async def put_embedding(self, key: str, features: np.ndarray, meta: dict[str, Any]) -> bool:
        if self._client is None:
            return False
        blob = encode_embedding(features, meta)
        ok, _ = await self._call(
            "put_embedding",
            key,
            self._client.set(KEY_PREFIX + "emb:" + key, blob, ex=self.embedding_ttl_s),
        )
        return ok

    async def _corrupt(self, kind: str, rkey: str, blob: bytes, exc: BaseException) -> None:
        """A value that does not decode: count it, delete it if it is still there."""
        self.metrics.cache_corrupt.labels(kind=kind).inc()
        self.log.warning(
            "corrupt cache value deleted; recomputing",
            extra={"kind": kind, "key": rkey, "error": f"{type(exc).__name__}: {exc}"},
        )
        if self._client is not None:
            await self._call("delete_corrupt", rkey, self._client.eval(_RELEASE_LUA, 1, rkey, blob))

    async def delete_embedding(self, key: str) -> None:
        """Drop an embedding that decoded but does not fit its use (wrong row count)."""
        self.metrics.cache_corrupt.labels(kind="embedding").inc()
        if self._client is not None:
            await self._call("delete_corrupt", key, self._client.delete(KEY_PREFIX + "emb:" + key))

    # -- cross-process single flight ---------------------------------------------------
    async def acquire_lock(self, key: str, ttl_ms: int) -> tuple[str, bool]:
        """Try to own the computation of ``key`` across processes.

        Returns ``(owner_token, acquired)``. When Redis fails we act as if we own it
        (correct, at worst computed twice).
        """
        token = secrets.token_hex(8)
        if self._client is None:
            return token, True
        ok, got = await self._call(
            "lock", key, self._client.set(KEY_PREFIX + "lock:" + key, token, nx=True, px=ttl_ms)
        )
        if not ok:
            return token, True
        return token, bool(got)

    async def lock_exists(self, key: str) -> bool:
        if self._client is None:
            return False
        ok, n = await self._call("lock", key, self._client.exists(KEY_PREFIX + "lock:" + key))
        return bool(ok and n)

    async def renew_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        """Extend our lock by ``ttl_ms`` if we still hold it."""
        if self._client is None:
            return True
        ok, n = await self._call(
            "renew_lock",
            key,
            self._client.eval(_RENEW_LUA, 1, KEY_PREFIX + "lock:" + key, token, int(ttl_ms)),
        )
        return bool(ok and n)

    async def break_stale_lock(self, key: str, ttl_ms: int) -> bool:
        """Delete the lock of ``key`` when it would outlive any renewing holder's ttl."""
        if self._client is None:
            return False
        ok, n = await self._call(
            "break_lock",
            key,
            self._client.eval(_BREAK_STALE_LUA, 1, KEY_PREFIX + "lock:" + key, int(ttl_ms)),
        )
        if ok and n:
            self.metrics.stale_locks.inc()
            self.log.warning("stale lock removed", extra={"key": key})
        return bool(ok and n)

    async def release_lock(self, key: str, token: str) -> None:
        if self._client is None:
            return
        await self._call(
            "unlock", key, self._client.eval(_RELEASE_LUA, 1, KEY_PREFIX + "lock:" + key, token)
        )

    async def ping(self) -> bool:
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except Exception:
            return False
