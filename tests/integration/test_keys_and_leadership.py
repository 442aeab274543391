"""Redis keys under one prefix per deployment, and the one-holder lock of the dispatcher and scheduler.

Against the real Redis: two deployments that share a Redis database keep apart by their
prefix (each has an active dispatcher, its own wake-up list, its own rate limits); within
one deployment only one dispatcher is active; and a holder whose lock lapsed can neither
renew nor delete its successor's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis

from oaksend.errors import ConfigError
from oaksend.worker.clock import utcnow
from oaksend.worker.delivery.ratelimit import RateLimiter
from oaksend.worker.enqueue import wake
from oaksend.worker.keys import Keys
from oaksend.worker.leadership import Leadership
from oaksend.worker.settings import Settings, load_settings


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    try:
        c.ping()
    except redis.RedisError as exc:
        from tests.support import unavailable

        unavailable("Redis", exc)
    yield c
    c.close()


def _settings(redis_url: str, prefix: str) -> Settings:
    return Settings(redis_url=redis_url, redis_prefix=prefix, _env_file=None)  # type: ignore[call-arg]


def test_every_key_carries_the_prefix() -> None:
    keys = Keys("clinic-a")
    named = [keys.workers, keys.dispatcher_heartbeat, keys.dispatcher_lock, keys.scheduler_lock, keys.purge_lock,
             keys.wake, *keys.chatbot("sn1")]
    assert all(k.startswith("clinic-a:") for k in named)
    assert len(set(named)) == len(named)
    # The default is the keys oaksend has always used.
    assert Keys().wake == "oaksend:wake" and Keys().chatbot("sn1")[2] == "oaksend:pause:{sn1}"


@pytest.mark.parametrize("bad", ["", "a b", "a{b}", "x" * 65, "tenant\n"])
def test_a_prefix_that_would_break_keys_is_refused_naming_the_setting(bad: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAKSEND_REDIS_PREFIX", bad)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert str(caught.value).startswith("REDIS_PREFIX: ") and "\n" not in str(caught.value)


def test_two_deployments_on_one_redis_keep_apart(client: redis.Redis, redis_url: str) -> None:
    a = _settings(redis_url, f"dep-a-{uuid.uuid4().hex[:6]}")
    b = _settings(redis_url, f"dep-b-{uuid.uuid4().hex[:6]}")
    name = uuid.uuid4().hex
    lock_a = Leadership(client, a.keys.dispatcher_lock, name + "-a", role="dispatcher")
    lock_b = Leadership(client, b.keys.dispatcher_lock, name + "-b", role="dispatcher")
    try:
        assert lock_a.hold(5) and lock_b.hold(5), "each deployment has its own active dispatcher"
        wake(client, a.keys)
        assert client.llen(a.keys.wake) == 1 and client.llen(b.keys.wake) == 0
        now = utcnow()
        RateLimiter(client, a.keys).pause("sn-shared", now + timedelta(seconds=30), now)
        assert RateLimiter(client, a.keys).paused("sn-shared")
        assert not RateLimiter(client, b.keys).paused("sn-shared"), "a pause in A must not stop B's chatbot"
    finally:
        lock_a.release()
        lock_b.release()
        client.delete(a.keys.wake, *a.keys.chatbot("sn-shared"))


def test_one_active_holder_and_a_standby_takes_over(client: redis.Redis) -> None:
    key = f"test:{uuid.uuid4().hex}:lock"
    first = Leadership(client, key, "first", role="dispatcher")
    second = Leadership(client, key, "second", role="dispatcher")
    try:
        assert first.hold(5) and first.active
        assert not second.hold(5) and not second.active
        assert first.hold(5), "the holder renews"
        first.release()
        assert client.get(key) is None
        assert second.hold(5) and second.active
    finally:
        first.release()
        second.release()


def test_a_lapsed_holder_can_neither_renew_nor_delete_its_successors_lock(client: redis.Redis) -> None:
    key = f"test:{uuid.uuid4().hex}:lock"
    old = Leadership(client, key, "old", role="scheduler")
    new = Leadership(client, key, "new", role="scheduler")
    try:
        assert old.hold(0.2)
        time.sleep(0.3)  # old paused past its TTL (a stalled process); the key lapsed
        assert new.hold(5)
        assert not old.hold(5), "renewing must fail: the lock is someone else's now"
        assert not old.active
        old.active = True  # as if old still believed it held the lock when it shut down
        old.release()
        assert client.get(key) == b"new", "release compares the holder: the successor's lock stays"
    finally:
        new.release()
        old.release()
