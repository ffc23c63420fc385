"""The Redis state store: the same records as :class:`~kvsim.server.store.SqliteStore`.

Layout under a key prefix (``?prefix=NAME`` in the URL, default ``kvsim``):

* ``P:registry``: a list of JSON ``[op, payload]`` records;
* ``P:blocks:INSTANCE``: a hash from the block key (decimal) to 28 packed bytes
  (write time, last access, access count, storage slot);
* ``P:instances``: the set of instances that have a blocks hash;
* ``P:sessions``: a hash from the session id to a JSON record.

A batch is one ``MULTI``/``EXEC`` transaction. Several server processes may share
one Redis (leader election: :mod:`kvsim.server.leader`); only the leader writes.

Example:
    >>> RedisStore.parse("redis://127.0.0.1:6390/2?prefix=a")
    ('redis://127.0.0.1:6390/2', 'a')
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import numpy as np
import orjson

from kvsim.server.store import (
    BlockRecords,
    SessionRecord,
    StoreBatch,
    StoreError,
    StoreFenced,
)

_FENCE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < cur then return cur end
redis.call('SET', KEYS[1], ARGV[1])
return -1
"""
_REC = struct.Struct("<qqqi")  # t_write, t_access, access count, storage slot


class RedisStore:
    """State in a Redis server (see the module docstring).

    Args:
        url: ``redis://HOST:PORT/DB?prefix=NAME``.
    """

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        conn_url, self.prefix = self.parse(url)
        try:
            self._r: Any = redis.Redis.from_url(conn_url, socket_timeout=10)
            self._r.ping()
        except redis.RedisError as e:
            raise StoreError(f"{conn_url}: cannot reach Redis ({e})") from None
        self._closed = False
        self._epoch = 0  # this writer's leader epoch (0: unfenced, single writer)
        self._fence_script = self._r.register_script(_FENCE)

    @staticmethod
    def parse(url: str) -> tuple[str, str]:
        """Split the URL into the connection URL and the key prefix."""
        u = urlparse(url)
        q = parse_qs(u.query)
        prefix = q.pop("prefix", ["kvsim"])[0]
        rest = urlencode({k: v[0] for k, v in q.items()})
        return urlunparse(u._replace(query=rest)), prefix

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def client(self) -> Any:
        """The redis-py client (leader leases share it)."""
        return self._r

    def apply(self, batch: StoreBatch) -> None:
        """Apply ``batch`` in one MULTI/EXEC transaction."""
        if not batch:
            return
        drop = []
        if batch.drop_all:
            drop = [k for k in self._r.smembers(self._k("instances"))]
        p = self._r.pipeline(transaction=True)
        if self._epoch:
            self._check_fence(p)
        if batch.replace_records:
            p.delete(self._k("registry"))
        if batch.drop_all:
            for inst_b in drop:
                p.delete(self._k("blocks", inst_b.decode()))
            p.delete(self._k("instances"), self._k("sessions"))
        for op, payload in batch.records:
            p.rpush(self._k("registry"), json.dumps([op, payload], sort_keys=True))
        if batch.drop_instances:
            sessions = self._r.hgetall(self._k("sessions"))
        for inst in batch.drop_instances:
            p.delete(self._k("blocks", inst))
            p.srem(self._k("instances"), inst)
            gone = [sid for sid, raw in sessions.items()
                    if json.loads(raw).get("instance_id") == inst]
            if gone:
                p.hdel(self._k("sessions"), *gone)
        for inst, keys in batch.deletes:
            if len(keys):
                p.hdel(self._k("blocks", inst), *[str(k) for k in keys.tolist()])
        for inst, keys, tw, ta, acc, loc in batch.puts:
            if len(keys):
                p.hset(self._k("blocks", inst), mapping={
                    str(k): _REC.pack(w, a, c, lc)
                    for k, w, a, c, lc in zip(keys.tolist(), tw.tolist(), ta.tolist(),
                                              acc.tolist(), loc.tolist(), strict=True)})
                p.sadd(self._k("instances"), inst)
        for sid in batch.closed:
            p.hdel(self._k("sessions"), str(sid))
        for s in batch.opened:
            p.hset(self._k("sessions"), str(s.session_id), orjson.dumps({
                "instance_id": s.instance_id, "keys": np.asarray(s.keys).tolist(),
                "deadline_ns": s.deadline_ns, "loc": s.loc, "extra": s.extra},
                option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY))
        self._execute(p)

    def _check_fence(self, p: Any) -> None:
        """WATCH the fence key and refuse when a later leader fenced (the transaction
        then fails if the fence moves before EXEC)."""
        ek = self._k("epoch")
        p.watch(ek)
        cur = p.get(ek)
        if cur is not None and int(cur) > self._epoch:
            p.reset()
            raise StoreFenced(f"{self.url}: a newer leader (epoch {int(cur)}) fenced this "
                              f"one (epoch {self._epoch}) off")
        p.multi()

    def _execute(self, p: Any) -> None:
        import redis

        try:
            p.execute()
        except redis.WatchError:
            raise StoreFenced(f"{self.url}: a newer leader fenced this one (epoch "
                              f"{self._epoch}) off during a write") from None

    def fence(self, epoch: int) -> None:
        """Write as leader ``epoch`` from now on and refuse the writes of any older one
        (``P:epoch`` only grows; every write of a fenced store WATCHes it).

        Raises:
            StoreFenced: a later epoch has fenced already.
        """
        cur = self._fence_script(keys=[self._k("epoch")], args=[int(epoch)])
        if int(cur) >= 0:
            raise StoreFenced(f"{self.url}: leader epoch {epoch} is older than the store's "
                              f"fence {int(cur)}")
        self._epoch = int(epoch)

    def write_recency(self, instance_id: str, keys: np.ndarray, t_access: np.ndarray,
                      access_count: np.ndarray) -> None:
        """Update the recency of existing blocks: read them and write them back in one
        optimistic transaction (WATCH), so a block deleted meanwhile is never revived."""
        if not len(keys):
            return
        h = self._k("blocks", instance_id)
        names = [str(k) for k in np.asarray(keys).tolist()]
        ts, ns = np.asarray(t_access).tolist(), np.asarray(access_count).tolist()

        ek = self._k("epoch")

        def update(p: Any) -> None:
            if self._epoch:
                fence = p.get(ek)
                if fence is not None and int(fence) > self._epoch:
                    raise StoreFenced(f"{self.url}: a newer leader (epoch {int(fence)}) "
                                      f"fenced this one (epoch {self._epoch}) off")
            cur = p.hmget(h, names)
            upd = {}
            for name, t, n, raw in zip(names, ts, ns, cur, strict=True):
                if raw is None:
                    continue
                w, a, _, lc = _REC.unpack(raw)
                upd[name] = _REC.pack(w, max(a, t), n, lc)
            p.multi()
            if upd:
                p.hset(h, mapping=upd)

        self._r.transaction(update, h, ek)

    def load_records(self) -> list[tuple[str, dict[str, Any]]]:
        """The registry journal, in order."""
        out = []
        for raw in self._r.lrange(self._k("registry"), 0, -1):
            op, payload = json.loads(raw)
            out.append((op, payload))
        return out

    def compact(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        """Replace the journal by ``records`` atomically."""
        p = self._r.pipeline(transaction=True)
        if self._epoch:
            self._check_fence(p)
        p.delete(self._k("registry"))
        if records:
            p.rpush(self._k("registry"), *[json.dumps([op, pl], sort_keys=True)
                                           for op, pl in records])
        self._execute(p)

    def load_blocks(self) -> Iterator[BlockRecords]:
        """Every persisted block, one instance at a time."""
        for raw_inst in sorted(self._r.smembers(self._k("instances"))):
            inst = raw_inst.decode()
            data = self._r.hgetall(self._k("blocks", inst))
            n = len(data)
            cols = np.empty((n, 5), dtype=np.int64)
            for i, (k, v) in enumerate(data.items()):
                cols[i, 0] = int(k)
                cols[i, 1:] = _REC.unpack(v)
            yield BlockRecords(inst, cols[:, 0].copy(), cols[:, 1].copy(), cols[:, 2].copy(),
                               cols[:, 3].copy(), cols[:, 4].copy())

    def load_sessions(self) -> list[SessionRecord]:
        """Every unfinished session."""
        out = []
        for sid, raw in self._r.hgetall(self._k("sessions")).items():
            d = json.loads(raw)
            out.append(SessionRecord(int(sid), d["instance_id"],
                                     np.asarray(d["keys"], dtype=np.int64), int(d["deadline_ns"]),
                                     int(d["loc"]), d.get("extra") or {}))
        return sorted(out, key=lambda s: s.session_id)

    def clear(self) -> None:
        """Forget everything under the prefix."""
        keys = list(self._r.scan_iter(match=self._k("*"), count=1000))
        if keys:
            self._r.delete(*keys)

    def close(self) -> None:
        """Drop the connection (again: no-op)."""
        if self._closed:
            return
        self._r.close()
        self._closed = True
