"""The evaluation service's Redis cache and cross-process lock against a REAL redis-server
(tests/services/redis_fixtures.py), through the public ``Cache`` API: Redis down at
start-up, Redis coming back after an outage, lock expiry and takeover, compare-and-delete
never removing another holder's lock, renewal only by the owner. Waits are on real
conditions (a key's existence, a server answering), each with a deadline, never a
fixed sleep standing for an event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis", reason="redis-py is not installed (extra 'serve')")
pytest.importorskip(
    "prometheus_client", reason="prometheus-client is not installed (extra 'serve')"
)

from align_services.evaluation.cache import KEY_PREFIX, Cache
from align_services.evaluation.metrics import ServiceMetrics

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

REPORT = '{"model": "m", "dataset": "d", "metrics": {"x": {"accuracy": 0.5}}, "provenance": {}}'


def make_cache(url: str, **kw: Any) -> tuple[Cache, ServiceMetrics]:
    metrics = ServiceMetrics()
    kw.setdefault("memory_reports", 0)  # every read goes to Redis
    return Cache(url, metrics, **kw), metrics


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    """Poll a real condition until it holds (fails with ``what`` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.01)


def redis_keys(url: str) -> set[str]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return {k.decode() for k in client.keys("*")}
    finally:
        client.close()


# -- Redis down, Redis back ---------------------------------------------------------------


def test_redis_down_at_start_up_is_a_miss_then_works_once_it_is_up(redis_server: Any) -> None:
    redis_server.stop()

    async def run() -> None:
        cache, metrics = make_cache(redis_server.url)
        try:
            assert cache.enabled
            assert await cache.ping() is False
            assert await cache.get_report("k") is None  # a miss, not an exception
            assert await cache.put_report("k", REPORT) is False
            _, owned = await cache.acquire_lock("k", 1000)
            assert owned  # Redis down: act as the owner (correct, at worst computed twice)
            errors = metrics.total("align_cache_errors_total")
            assert errors >= 3
            redis_server.start()  # the same port
            await until(cache.ping, "the cache reconnects to the started Redis")
            assert await cache.put_report("k", REPORT) is True
            assert await cache.get_report("k") == REPORT
            assert metrics.total("align_cache_errors_total") == errors  # no new failures
        finally:
            await cache.close()

    asyncio.run(run())
    assert f"{KEY_PREFIX}report:k" in redis_keys(redis_server.url)


def test_redis_coming_back_after_an_outage_is_used_again(redis_server: Any) -> None:
    async def run() -> None:
        cache, metrics = make_cache(redis_server.url)
        try:
            assert await cache.put_report("before", REPORT) is True
            redis_server.stop()
            assert await cache.get_report("before") is None  # down: a miss
            assert await cache.put_report("during", REPORT) is False
            assert metrics.total("align_cache_errors_total") >= 2
            redis_server.start()  # back, empty (no persistence)
            await until(cache.ping, "the cache reconnects after the outage")
            assert await cache.put_report("after", REPORT) is True
            assert await cache.get_report("after") == REPORT
            # what was written before the outage died with that Redis process
            assert await cache.get_report("before") is None
        finally:
            await cache.close()

    asyncio.run(run())
    assert redis_keys(redis_server.url) == {f"{KEY_PREFIX}report:after"}


# -- the single-flight lock -----------------------------------------------------------


def test_lock_is_exclusive_until_it_expires_then_another_server_takes_over(
    redis_server: Any,
) -> None:
    async def run() -> None:
        a, _ = make_cache(redis_server.url)
        b, _ = make_cache(redis_server.url)
        try:
            token_a, owned_a = await a.acquire_lock("job", 300)
            assert owned_a
            _, owned_b = await b.acquire_lock("job", 300)
            assert not owned_b  # a holds it
            assert await b.lock_exists("job")
            # a stops renewing (a crashed holder): the lock expires by itself
            await until(lambda: _not(b.lock_exists("job")), "the lock's ttl runs out")
            token_b, owned_b = await b.acquire_lock("job", 60_000)
            assert owned_b and token_b != token_a  # takeover
            # the old holder cannot renew what is no longer its lock
            assert await a.renew_lock("job", token_a, 60_000) is False
            assert await b.renew_lock("job", token_b, 60_000) is True
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


def test_release_never_deletes_another_servers_lock(redis_server: Any) -> None:
    async def run() -> None:
        a, _ = make_cache(redis_server.url)
        b, _ = make_cache(redis_server.url)
        try:
            token_a, _ = await a.acquire_lock("job", 200)
            await until(lambda: _not(a.lock_exists("job")), "a's lock expires")
            token_b, owned_b = await b.acquire_lock("job", 60_000)
            assert owned_b
            await a.release_lock("job", token_a)  # late release by the old holder
            assert await b.lock_exists("job")  # compare-and-delete: b's lock survives
            await b.release_lock("job", token_b)
            assert not await b.lock_exists("job")  # its owner's release does delete it
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_renewal_keeps_the_lock_past_its_first_ttl(redis_server: Any) -> None:
    import redis

    async def run() -> None:
        a, _ = make_cache(redis_server.url)
        try:
            token, owned = await a.acquire_lock("job", 500)
            assert owned
            assert await a.renew_lock("job", token, 60_000)
        finally:
            await a.close()

    asyncio.run(run())
    client = redis.Redis.from_url(redis_server.url)
    try:
        pttl = client.pttl(f"{KEY_PREFIX}lock:job")
    finally:
        client.close()
    assert 500 < pttl <= 60_000  # the renewal replaced the 500 ms ttl


def test_a_lock_without_expiry_is_broken_as_stale(redis_server: Any) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.set(f"{KEY_PREFIX}lock:job", "someone-else")  # no ttl: no live holder sets this
    client.close()

    async def run() -> None:
        a, metrics = make_cache(redis_server.url)
        try:
            _, owned = await a.acquire_lock("job", 1000)
            assert not owned
            assert await a.break_stale_lock("job", 1000) is True
            assert metrics.total("align_stale_locks_total") == 1.0
            _, owned = await a.acquire_lock("job", 1000)
            assert owned
            # a live lock with a normal ttl is left alone
            assert await a.break_stale_lock("job", 1000) is False
        finally:
            await a.close()

    asyncio.run(run())


# -- the whole server with Redis down at start-up ------------------------------------------


def test_server_started_while_redis_is_down_scores_then_caches_once_redis_is_up(
    eval_service: Any, redis_server: Any, spose_npy: Path
) -> None:
    from align.remote import RemoteBackend

    from tests.services.redis_fixtures import ALICE

    redis_server.stop()
    server = eval_service()
    with RemoteBackend(server.address, ALICE, progress=False, retries=0) as b:
        down = b.score(str(spose_npy), "things", options={"n_bootstrap": 20})
        assert down.provenance["cache"] == "miss"
        assert server.metrics.total("align_cache_errors_total") > 0
        redis_server.start()
        up = b.score(str(spose_npy), "things", options={"n_bootstrap": 21})
        assert up.provenance["cache"] == "miss"
    assert up.value("odd_one_out", "accuracy") == down.value("odd_one_out", "accuracy")
    key = up.provenance["report_key"]
    assert f"{KEY_PREFIX}report:{key}" in redis_keys(redis_server.url)
    # another server (empty memory tier) is served from Redis
    other = eval_service()
    with RemoteBackend(other.address, ALICE, progress=False, retries=0) as b:
        again = b.score(str(spose_npy), "things", options={"n_bootstrap": 21})
    assert again.provenance["cache"] == "hit" and again.metrics == up.metrics
    assert other.metrics.total("align_report_computations_total") == 0.0
