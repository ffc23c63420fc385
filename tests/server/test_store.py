"""The state stores (SQLite and a real Redis) behave the same, and restore a manager."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from kvsim.core.clock import ManualClock
from kvsim.core.manager import CacheManager
from kvsim.core.spec import GroupSpec, InstanceSpec
from kvsim.server.store import (
    BlockStore,
    SessionRecord,
    SqliteStore,
    StoreBatch,
    StoreError,
    open_store,
)


@pytest.fixture(params=["journal", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlockStore:
    if request.param in ("journal", "sqlite"):
        s = open_store(request.param, tmp_path)
    else:
        s = open_store(request.getfixturevalue("redis_url"))
    yield s
    s.close()
    t = open_store(s.url, tmp_path)
    t.clear()
    t.close()


def _reopen(s: BlockStore, tmp_path: Path) -> BlockStore:
    s.close()
    return open_store(s.url, tmp_path)


def _blocks(s: BlockStore) -> dict[str, dict[int, tuple[int, int, int, int]]]:
    out: dict[str, dict[int, tuple[int, int, int, int]]] = {}
    for r in s.load_blocks():
        out[r.instance_id] = {int(k): (int(w), int(a), int(c), int(lc)) for k, w, a, c, lc in
                              zip(r.keys, r.t_write, r.t_access, r.access_count, r.loc,
                                  strict=True)}
    return out


def test_batches_round_trip(store: BlockStore, tmp_path: Path) -> None:
    b = StoreBatch()
    assert not b
    b.record("addStorage", {"name": "nfs_01", "n": 1})
    b.put_blocks("i0", np.array([1, 2, 3]), t_write=np.array([10, 11, 12]),
                 t_access=np.array([20, 21, 22]), loc=np.array([1, 1, 2]))
    b.put_blocks("i1", np.array([-5]), t_write=np.array([1]), t_access=np.array([2]))
    b.open_session(SessionRecord(7, "i0", np.array([4, 5]), 99, 1, {"wire": "s-7"}))
    store.apply(b)
    b = StoreBatch()
    b.delete_blocks("i0", np.array([2]))
    b.record("createInstanceGroup", {"name": "g"})
    b.open_session(SessionRecord(8, "i1", np.array([6]), 100))
    b.close_session(7)
    store.apply(b)
    store.write_recency("i0", np.array([1, 2]), np.array([50, 60]), np.array([2, 7]))  # 2: gone
    store.write_recency("i0", np.array([3]), np.array([5]), np.array([0]))  # never backwards
    store = _reopen(store, tmp_path)
    assert store.load_records() == [("addStorage", {"name": "nfs_01", "n": 1}),
                                    ("createInstanceGroup", {"name": "g"})]
    assert _blocks(store) == {"i0": {1: (10, 50, 2, 1), 3: (12, 22, 0, 2)},
                              "i1": {-5: (1, 2, 0, 0)}}
    [s] = store.load_sessions()
    assert (s.session_id, s.instance_id, s.keys.tolist(), s.deadline_ns) == (8, "i1", [6], 100)
    store.compact([("snapshot", {"all": True})])
    assert store.load_records() == [("snapshot", {"all": True})]
    b = StoreBatch()
    b.drop_instance("i0")
    store.apply(b)
    assert set(_blocks(store)) == {"i1"}


def test_failed_batch_leaves_nothing(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "x.db")
    b = StoreBatch()
    b.put_blocks("i0", np.array([1, 2]), t_write=np.array([1, 2]), t_access=np.array([1, 2]))
    b.open_session(SessionRecord(1, "i0", np.array([3]), 5, extra={"bad": object()}))
    with pytest.raises(TypeError):
        s.apply(b)
    assert _blocks(s) == {} and s.load_sessions() == []
    s.close()


def test_bad_files_and_urls(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match=r"bad\.db"):
        SqliteStore(bad)
    with pytest.raises(StoreError, match="unknown state store"):
        open_store("postgres://x", tmp_path)
    with pytest.raises(StoreError, match="cannot reach Redis"):
        open_store("redis://127.0.0.1:1/0")
    rel = open_store("sqlite://sub/s.db", tmp_path)
    assert Path(rel.url.removeprefix("sqlite:///")) == tmp_path / "sub" / "s.db"
    rel.close()


def test_manager_restores_from_store(store: BlockStore, tmp_path: Path) -> None:
    """A manager's blocks and sessions, saved through batches, rebuild an equal manager."""
    def make(now: int) -> CacheManager:
        m = CacheManager(ManualClock(now))
        m.create_group(GroupSpec("g", quota_blocks=50))
        for i in ("a", "b"):
            m.register_instance(InstanceSpec(i, "g"))
        return m

    m = make(1_000)
    rng = np.random.default_rng(3)
    for _ in range(60):
        m.clock.advance(1_000)  # type: ignore[attr-defined]
        m.access(str(rng.choice(["a", "b"])), rng.integers(0, 80, size=4).cumsum())
    w = m.start_write("a", [900, 901], timeout_s=5)
    d = m.export_blocks()
    b = StoreBatch()
    for inst in ("a", "b"):
        sel = np.array([x == inst for x in d.instance_id]) & (d.state == 2)  # SERVING
        b.put_blocks(inst, d.key[sel], t_write=d.t_write[sel], t_access=d.t_access[sel],
                     access_count=d.access_count[sel], loc=d.loc[sel])
    for s in m.sessions():
        b.open_session(SessionRecord(s.session_id, s.instance_id, s.keys, s.deadline_ns))
    store.apply(b)
    store = _reopen(store, tmp_path)

    r = make(m.clock.now_ns())
    for rec in store.load_blocks():
        r.restore_blocks(rec.instance_id, rec.keys, t_write=rec.t_write, t_access=rec.t_access,
                         access_count=rec.access_count, loc=rec.loc)
    for s in store.load_sessions():
        r.restore_session(s.instance_id, s.keys, session_id=s.session_id,
                          deadline_ns=s.deadline_ns, loc=s.loc)
    a, c = m.export_blocks(), r.export_blocks()
    assert a.instance_id == c.instance_id
    np.testing.assert_array_equal(a.key, c.key)
    np.testing.assert_array_equal(a.state, c.state)
    sv = a.state == 2  # SERVING rows keep their times; WRITING ones restart theirs
    for col in ("t_write", "t_access", "access_count"):
        np.testing.assert_array_equal(getattr(a, col)[sv], getattr(c, col)[sv], err_msg=col)
    assert r.finish_write(w.session_id, [True, True]).committed == 2
    assert m.finish_write(w.session_id, [True, True]).committed == 2
    for _ in range(30):  # the same future on both
        m.clock.advance(1_000)  # type: ignore[attr-defined]
        r.clock.advance(1_000)  # type: ignore[attr-defined]
        keys = rng.integers(0, 80, size=4).cumsum()
        inst = str(rng.choice(["a", "b"]))
        assert m.access(inst, keys).hit_blocks == r.access(inst, keys).hit_blocks


def _writer(path: str, ready: mp.synchronize.Event) -> None:
    s = open_store(path)
    i = 0
    while True:
        b = StoreBatch()
        b.put_blocks("i0", np.array([i]), t_write=np.array([i]), t_access=np.array([i]))
        s.apply(b)
        getattr(s, "wait_durable", lambda: None)()
        with open(path.split("///")[-1].split("?")[0].removesuffix(".db") + ".acked",
                  "a") as fh:  # acknowledged after the commit
            fh.write(f"{i}\n")
        i += 1
        if i == 50:
            ready.set()


@pytest.mark.parametrize("kind", ["sqlite", "journal", "journal-fsync"])
def test_store_survives_sigkill(tmp_path: Path, kind: str) -> None:
    """Every batch acknowledged before a SIGKILL is in the store afterwards."""
    path = {"sqlite": f"sqlite:///{tmp_path / 'k.db'}",
            "journal": f"journal:///{tmp_path / 'k'}",
            "journal-fsync": f"journal:///{tmp_path / 'k'}?fsync=always"}[kind]
    acked_file = str(tmp_path / "k") + ".acked"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_writer, args=(path, ready))
    p.start()
    assert ready.wait(60), "writer did not start"
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    acked = [int(x) for x in Path(acked_file).read_text().split()]
    s = open_store(path)
    held = set(_blocks(s)["i0"])
    s.close()
    assert len(acked) >= 50
    assert set(acked) <= held


def test_large_batches_span_several_statements(store: BlockStore, tmp_path: Path) -> None:
    """Puts and deletes of more rows than one multi-row statement holds (and the same
    key twice in one batch: the later row wins) land in full."""
    n = 1234
    keys = np.arange(n, dtype=np.int64) * 7
    b = StoreBatch()
    b.put_blocks("i0", keys, t_write=keys + 1, t_access=keys + 2, access_count=keys % 5,
                 loc=keys % 3)
    b.put_blocks("i0", keys[:3], t_write=keys[:3], t_access=keys[:3] + 99)
    store.apply(b)
    d = StoreBatch()
    d.delete_blocks("i0", keys[::2])
    store.apply(d)
    s2 = _reopen(store, tmp_path)
    try:
        recs = {r.instance_id: r for r in s2.load_blocks()}
        r = recs["i0"]
        order = np.argsort(r.keys)
        got = r.keys[order]
        np.testing.assert_array_equal(got, keys[1::2])
        ta = dict(zip(r.keys.tolist(), r.t_access.tolist(), strict=True))
        assert ta[7] == 7 + 99 and ta[21] == 21 + 2
        loc = dict(zip(r.keys.tolist(), r.loc.tolist(), strict=True))
        assert loc[7] == 0 and loc[21] == 21 % 3
    finally:
        if s2 is not store:
            s2.close()
