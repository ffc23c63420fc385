"""Leader leases: a file lock and a real Redis; failover within the lease."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from kvsim.server.leader import FileLease, LeaderElector, RedisLease


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def test_file_lease_exclusive(tmp_path: Path) -> None:
    p = tmp_path / "leader.lock"
    a, b = FileLease(p, owner="a"), FileLease(p, owner="b")
    assert a.try_acquire() and a.renew()
    assert not b.try_acquire() and not b.renew()
    assert b.holder() == "a"
    a.release()
    assert b.holder() is None
    assert b.try_acquire() and b.holder() == "b"
    b.release()


def _hold(path: str) -> None:
    lease = FileLease(path, owner="child")
    assert lease.try_acquire()
    while True:
        time.sleep(1)


def test_file_lease_freed_by_sigkill(tmp_path: Path) -> None:
    path = str(tmp_path / "leader.lock")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_hold, args=(path,))
    p.start()
    me = FileLease(path, owner="me")
    assert _wait(lambda: FileLease(path).holder() == "child", 30)
    assert not me.try_acquire()
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert _wait(me.try_acquire, 5)
    me.release()


def test_file_lease_late_renewal_of_an_unclaimed_lease(tmp_path: Path) -> None:
    """A holder that stalled past its ttl (a long compile holding the GIL) keeps a lease
    nobody took meanwhile; one another node took is lost for good."""
    p = tmp_path / "leader.lock"
    a, b = FileLease(p, ttl_ms=100, owner="a"), FileLease(p, ttl_ms=100, owner="b")
    assert a.try_acquire()
    time.sleep(0.25)  # expired, unclaimed
    assert a.renew() and a.holder() == "a" and a.epoch == 1
    assert not b.try_acquire()  # the renewal made it current again
    time.sleep(0.25)
    assert b.try_acquire() and b.epoch == 2  # claimed after expiry: a's renewal fails
    assert not a.renew() and b.holder() == "b"


def test_file_lease_record_is_written_whole(tmp_path: Path, monkeypatch) -> None:
    """The record is one fixed-size pwrite, never truncate-then-write (a holder killed
    between the two left an empty file, and the next taker restarted the epochs at 1,
    below the store's fence)."""
    p = tmp_path / "leader.lock"
    a = FileLease(p, owner="a")

    def no_truncate(*_a: object) -> None:
        raise AssertionError("the lease record must not be truncated")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    assert a.try_acquire() and a.renew()
    assert p.stat().st_size == 4096
    a.release()
    b = FileLease(p, owner="b")
    assert b.try_acquire() and b.epoch == 2


def test_redis_lease(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url.split("?")[0])
    key = "lease:" + redis_url.rsplit("=", 1)[1]
    a = RedisLease(client, key, ttl_ms=300, owner="a")
    b = RedisLease(client, key, ttl_ms=300, owner="b")
    assert a.try_acquire() and not b.try_acquire()
    assert a.renew() and a.holder() == "a"
    b.release()  # not the holder: nothing happens
    assert a.holder() == "a"
    # a stops renewing: the lease lapses within its ttl and b takes it
    assert _wait(b.try_acquire, 2.0)
    assert not a.renew() and b.holder() == "b"
    b.release()
    assert b.holder() is None
    client.close()


def test_elector_failover_and_demote(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url.split("?")[0])
    key = "lease:" + redis_url.rsplit("=", 1)[1]
    changes: list[tuple[str, bool]] = []
    a = LeaderElector(RedisLease(client, key, ttl_ms=400, owner="a"),
                      lambda v: changes.append(("a", v))).start()
    b = LeaderElector(RedisLease(client, key, ttl_ms=400, owner="b"),
                      lambda v: changes.append(("b", v))).start()
    try:
        assert a.is_leader and not b.is_leader
        a.demote(hold_off_s=5)
        assert not a.is_leader
        t0 = time.monotonic()
        assert _wait(lambda: b.is_leader, 2.0)
        assert time.monotonic() - t0 < 0.4 + 0.2 + 0.5  # within lease + period (+ slack)
        # b dies without releasing (its thread stops renewing): a takes over after the ttl
        b._stop.set()
        b._thread.join(5)  # type: ignore[union-attr]
        a._demoted_until = 0.0
        assert _wait(lambda: a.is_leader, 2.0)
    finally:
        a.stop()
        b.stop()
        client.close()
    assert ("a", True) in changes and ("b", True) in changes and ("a", False) in changes


def test_elector_without_backend_is_follower() -> None:
    class Broken:
        owner = "x"
        ttl_ms = 100

        def try_acquire(self) -> bool:
            raise ConnectionError("down")

        def renew(self) -> bool:
            raise ConnectionError("down")

        def release(self) -> None:
            pass

        def holder(self) -> str | None:
            return None

    e = LeaderElector(Broken())
    assert e.step() is False and not e.is_leader


@pytest.mark.parametrize("ttl", [300])
def test_redis_lease_survives_holder_pause_shorter_than_ttl(redis_url: str, ttl: int) -> None:
    client = redis.Redis.from_url(redis_url.split("?")[0])
    key = "lease:" + redis_url.rsplit("=", 1)[1]
    a = RedisLease(client, key, ttl_ms=ttl, owner="a")
    b = RedisLease(client, key, ttl_ms=ttl, owner="b")
    assert a.try_acquire()
    for _ in range(5):
        time.sleep(ttl / 3000)
        assert a.renew()
        assert not b.try_acquire()
    a.release()
    client.close()
