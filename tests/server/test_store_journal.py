"""The journal store: the same state as SQLite through compactions, a torn tail is
ignored, and every store refuses a deposed leader's writes once its successor fenced."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvsim.server.store import BlockStore, SessionRecord, StoreBatch, StoreFenced, open_store
from kvsim.server.store_journal import JournalStore


def _state(s: BlockStore) -> tuple[Any, ...]:
    blocks = {}
    records = s.load_records()
    for r in s.load_blocks():
        d = {int(k): (int(w), int(a), int(c), int(lc)) for k, w, a, c, lc in
             zip(r.keys, r.t_write, r.t_access, r.access_count, r.loc, strict=True)}
        if d:
            blocks[r.instance_id] = d
    sessions = [(x.session_id, x.instance_id, x.keys.tolist(), x.deadline_ns, x.loc, x.extra)
                for x in s.load_sessions()]
    return records, blocks, sessions


def _random_batches(seed: int, n: int) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    out: list[tuple[str, Any]] = []
    sid = 0
    open_sids: list[int] = []
    for step in range(n):
        r = rng.random()
        inst = rng.choice(["a", "b", "c"])
        if r < 0.15:
            keys = np.array(rng.sample(range(200), rng.randint(1, 20)), np.int64)
            out.append(("touch", (inst, keys, np.full(len(keys), step * 10 - 500, np.int64),
                                  np.full(len(keys), step, np.int64))))
            continue
        b = StoreBatch()
        if r < 0.6:
            keys = np.array(rng.sample(range(200), rng.randint(1, 30)), np.int64)
            t = np.arange(len(keys), dtype=np.int64) + step * 10
            b.put_blocks(inst, keys, t_write=t, t_access=t + 1, access_count=t % 7,
                         loc=t % 3)
        elif r < 0.8:
            b.delete_blocks(inst, np.array(rng.sample(range(200), rng.randint(1, 40)),
                                           np.int64))
        elif r < 0.88:
            sid += 1
            open_sids.append(sid)
            b.open_session(SessionRecord(sid, inst, np.arange(3, dtype=np.int64) + sid,
                                         step, step % 2, {"token": f"t{sid}",
                                                          "keys": [sid, sid + 1]}))
        elif r < 0.94 and open_sids:
            b.close_session(open_sids.pop(rng.randrange(len(open_sids))))
        elif r < 0.97:
            b.set_registry("snapshot", {"step": step, "x": [1, 2, {"y": "z"}]})
        elif r < 0.99:
            b.drop_instance(inst)
        else:
            b.record("op", {"step": step})
        out.append(("batch", b))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_journal_matches_sqlite_through_compactions(tmp_path: Path, seed: int) -> None:
    ref = open_store(f"sqlite:///{tmp_path / 'ref.db'}")
    # tiny segments and compaction threshold: many snapshots during the run
    j = JournalStore(tmp_path / "j", compact_bytes=4096, segment_bytes=2048)
    for i, (kind, x) in enumerate(_random_batches(seed, 600)):
        for s in (ref, j):
            if kind == "touch":
                s.write_recency(*x)
            else:
                s.apply(x)
        if i % 150 == 149:  # a restart in the middle
            th = j._compactor
            if th is not None:
                th.join(30)
            j.close()
            j = JournalStore(tmp_path / "j", compact_bytes=4096, segment_bytes=2048)
            assert _state(j) == _state(ref)
    assert j.compactions > 0 or any((tmp_path / "j").glob("snapshot-*"))
    assert _state(j) == _state(ref)
    j.snapshot()  # an explicit snapshot folds everything in
    j.close()
    j = JournalStore(tmp_path / "j")
    assert len(list((tmp_path / "j").glob("journal-*.log"))) <= 2
    assert _state(j) == _state(ref)
    j.close()
    ref.close()


def test_torn_tail_is_not_state(tmp_path: Path) -> None:
    """A record cut by a kill inside write() (never acknowledged) is ignored, and the
    next process's writes after it are read."""
    j = JournalStore(tmp_path / "j")
    b = StoreBatch()
    b.put_blocks("i", np.array([1, 2]), t_write=np.array([1, 2]), t_access=np.array([1, 2]))
    j.apply(b)
    j.close()
    seg = sorted((tmp_path / "j").glob("journal-*.log"))[-1]
    raw = seg.read_bytes()
    with open(seg, "ab") as f:  # half of a copy of the record: a torn write
        f.write(raw[: len(raw) // 2 + 3])
    j = JournalStore(tmp_path / "j")
    b = StoreBatch()
    b.put_blocks("i", np.array([3]), t_write=np.array([3]), t_access=np.array([3]))
    j.apply(b)
    j.close()
    j = JournalStore(tmp_path / "j")
    assert sorted(next(iter(j.load_blocks())).keys.tolist()) == [1, 2, 3]
    j.close()


@pytest.fixture(params=["journal", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal:///{tmp_path / 'j'}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    url: str = request.getfixturevalue("redis_url")
    return url + ("&" if "?" in url else "?") + f"prefix=fence{random.randrange(1 << 30)}"


def _put(s: BlockStore, key: int) -> None:
    b = StoreBatch()
    b.put_blocks("i", np.array([key]), t_write=np.array([1]), t_access=np.array([1]))
    s.apply(b)


def test_a_deposed_leader_cannot_write(store_url: str, tmp_path: Path) -> None:
    old = open_store(store_url, tmp_path)
    old.fence(1)
    _put(old, 1)
    new = open_store(store_url, tmp_path)
    new.fence(2)  # the successor fences before it loads
    with pytest.raises(StoreFenced):
        _put(old, 2)
    with pytest.raises(StoreFenced):
        old.write_recency("i", np.array([1]), np.array([5]), np.array([1]))
    with pytest.raises(StoreFenced):
        old.fence(1)  # an older epoch cannot take the store back
    _put(new, 3)
    keys = sorted(k for r in new.load_blocks() for k in r.keys.tolist())
    assert keys == [1, 3]
    old.close()
    new.clear()
    new.close()


def test_snapshot_plus_short_tail_folds_like_the_whole_journal(tmp_path: Path) -> None:
    """A big snapshot with a short tail (only the rows the tail names are folded) gives
    the state the whole journal gives."""
    rng = np.random.default_rng(5)
    a, b = JournalStore(tmp_path / "a"), JournalStore(tmp_path / "b")
    keys = np.sort(rng.choice(10**9, 20_000, replace=False)).astype(np.int64)
    t = np.arange(keys.shape[0], dtype=np.int64)
    for s in (a, b):
        bt = StoreBatch()
        bt.put_blocks("i", keys, t_write=t, t_access=t, access_count=t % 5, loc=t % 2)
        s.apply(bt)
    a.snapshot()
    for step in range(50):
        some = rng.choice(keys, 30)
        fresh = rng.integers(0, 10**9, 10)
        for s in (a, b):
            bt = StoreBatch()
            if step % 3 == 0:
                bt.delete_blocks("i", some)
            else:
                bt.put_blocks("i", np.concatenate([some, fresh]),
                              t_write=np.full(40, step), t_access=np.full(40, 10**6 + step))
            s.apply(bt)
            s.write_recency("i", some[:5], np.full(5, 10**7 + step), np.full(5, step))
    assert _state(a) == _state(b)
    a.close()
    b.close()


def test_fsync_policies_and_urls(tmp_path: Path) -> None:
    """``interval`` fsyncs in the background, ``always`` before wait_durable returns;
    the URL names the directory and the options, and refuses unknown ones."""
    import time

    from kvsim.server.store import StoreError
    from kvsim.server.store_journal import open_journal

    s = open_journal(f"journal:///{tmp_path / 'i'}?fsync=interval&fsync_ms=20", tmp_path)
    assert isinstance(s, JournalStore) and s.fsync == "interval"
    _put(s, 1)
    end = time.monotonic() + 10
    while s._synced < s._written and time.monotonic() < end:
        time.sleep(0.02)
    assert s._synced == s._written > 0
    s.close()
    s = open_journal("journal://rel/dir?fsync=always", tmp_path)
    assert s.path == tmp_path / "rel" / "dir"
    _put(s, 2)
    s.wait_durable()
    assert s._synced == s._written > 0
    s.close()
    for bad in ("journal://x?fsync=sometimes", "journal://x?color=red"):
        with pytest.raises(StoreError):
            open_journal(bad, tmp_path)
