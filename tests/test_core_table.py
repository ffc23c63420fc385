"""The block table: open-addressing index against a Python dict, growth, row budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from strategies import examples

import kvsim.core.table as T
from kvsim.core.table import (
    DELETING,
    M_FREE,
    MAX_LOAD,
    ROW_FIELDS,
    SERVING,
    WRITING,
    BlockTable,
    alloc_row,
    bytes_per_row,
    free_row,
    index_size_for,
    lookup,
)

N_INST = 4


def home_of(inst: int, key: int, slots: int) -> int:
    """The home slot of ``(inst, key)`` in an index of ``slots`` slots, as the table computes
    it (checked against an observed insertion by ``test_home_of_matches_the_table``)."""
    h = T._hash(inst, key)
    if hasattr(T, "_home"):
        return int(T._home(np.uint64(h), np.uint64(slots)))
    return int(h) & (slots - 1)


def colliding_keys(n: int, slots: int, *, inst: int = 0, width: int = 1) -> list[int]:
    """``n`` keys of instance ``inst`` whose home is one of the last ``width`` slots of an
    index of ``slots`` slots: one long cluster that wraps around to slot 0."""
    out: list[int] = []
    k = 0
    while len(out) < n:
        if home_of(inst, k, slots) >= slots - width:
            out.append(k)
        k += 1
    return out


def _empty_slot() -> int:
    return BlockTable.create(rows=4, instances=1, groups=1).t.slots[0]


def _occupied(table: BlockTable) -> np.ndarray:
    return np.nonzero(table.t.slots != _empty_slot())[0]


POOL_SLOTS = index_size_for(16)
COLLIDE = colliding_keys(16, POOL_SLOTS)
KEY_POOL = COLLIDE + list(range(8)) + [-1, -(2**63), 2**63 - 1]


def test_home_of_matches_the_table() -> None:
    rng = np.random.default_rng(0)
    for key in [*rng.integers(-(2**63), 2**63 - 1, 30).tolist(), 0, -1, 2**63 - 1]:
        for inst in (0, 3):
            table = BlockTable.create(rows=16, instances=N_INST, groups=1)
            alloc_row(table.t, inst, key, SERVING, 0)
            assert _occupied(table).tolist() == [home_of(inst, key, table.index_slots)]
    assert len({home_of(0, k, POOL_SLOTS) for k in COLLIDE}) == 1


def _check_table(table: BlockTable, model: dict[tuple[int, int], int],
                 probe_keys: list[int]) -> None:
    t = table.t
    for (i, k), r in model.items():
        assert lookup(t, i, k) == r, f"lookup({i}, {k}) lost its row {r}"
        assert t.key[r] == k and t.inst[r] == i and t.state[r] != 0
    for i in range(N_INST):
        for k in probe_keys:
            if (i, k) not in model:
                assert lookup(t, i, k) == -1, f"lookup({i}, {k}) found a row it never had"
    assert table.used_rows == len(model)
    assert len(_occupied(table)) == len(model), "index entries != live rows"
    assert table.index_slots == index_size_for(table.rows)
    assert table.rows / table.index_slots <= MAX_LOAD
    # every free row is on the free list exactly once
    free = []
    r = int(t.meta[M_FREE])
    while r >= 0:
        free.append(r)
        assert len(free) <= table.rows
        r = int(t.nxt[r])
    assert len(free) == len(set(free)) == table.rows - len(model)
    assert not set(free) & set(model.values())


class TableMachine(RuleBasedStateMachine):
    """alloc / free / grow / lookup against a dict of (instance, key) -> row."""

    def __init__(self) -> None:
        super().__init__()
        self.table = BlockTable.create(rows=4, instances=N_INST, groups=1)
        self.model: dict[tuple[int, int], int] = {}
        self.now = 0

    @rule(inst=st.integers(0, N_INST - 1), key=st.sampled_from(KEY_POOL),
          state=st.sampled_from([WRITING, SERVING, DELETING]))
    def alloc(self, inst: int, key: int, state: int) -> None:
        if (inst, key) in self.model:
            return
        if self.table.free_rows() == 0:
            full = alloc_row(self.table.t, inst, key, state, self.now)
            assert full == -1, "alloc_row handed out a row of a full table"
            self.table.ensure_rows(1)
        self.now += 1
        r = alloc_row(self.table.t, inst, key, state, self.now)
        assert r >= 0
        assert r not in self.model.values()
        t = self.table.t
        assert (t.key[r], t.inst[r], t.state[r], t.t_write[r]) == (key, inst, state, self.now)
        self.model[(inst, key)] = r

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        pair = data.draw(st.sampled_from(sorted(self.model)))
        r = self.model.pop(pair)
        free_row(self.table.t, r)
        assert self.table.t.state[r] == 0 and self.table.t.inst[r] == -1

    @rule(extra=st.integers(0, 40))
    def grow(self, extra: int) -> None:
        before = self.table.rows
        self.table.ensure_rows(extra)
        assert self.table.rows >= self.table.used_rows + extra
        assert self.table.rows >= before
        assert self.table.rows % before == 0  # growth doubles

    @invariant()
    def agrees_with_dict(self) -> None:
        _check_table(self.table, self.model, KEY_POOL)


TestTableMachine = TableMachine.TestCase
TestTableMachine.settings = settings(max_examples=examples(40), stateful_step_count=60,
                                     deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=examples(25), deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, N_INST - 1),
                              st.sampled_from(KEY_POOL)), max_size=200))
def test_sequence_against_dict(ops: list[tuple[bool, int, int]]) -> None:
    """A long op sequence (insert or delete) on a table that starts tiny and must grow."""
    table = BlockTable.create(rows=4, instances=N_INST, groups=1)
    model: dict[tuple[int, int], int] = {}
    for ins, i, k in ops:
        if ins and (i, k) not in model:
            table.ensure_rows(1)
            model[(i, k)] = alloc_row(table.t, i, k, SERVING, 0)
        elif not ins and (i, k) in model:
            free_row(table.t, model.pop((i, k)))
    _check_table(table, model, KEY_POOL)


@pytest.mark.parametrize("rows", [700, 1400])
def test_backward_shift_under_one_long_cluster(rows: int) -> None:
    """A long cluster of keys with one home slot (the last: the cluster wraps around),
    the same keys under every instance, deleted in random order."""
    rng = np.random.default_rng(rows)
    table = BlockTable.create(rows=rows, instances=N_INST, groups=1)
    slots = table.index_slots
    keys = colliding_keys(rows // (2 * N_INST), slots, width=4)
    model: dict[tuple[int, int], int] = {}
    for i in range(N_INST):  # instance 0's keys form one cluster; the others scatter into it
        for k in keys:
            model[(i, k)] = alloc_row(table.t, i, k, SERVING, 0)
    assert table.index_slots == slots  # no growth
    occ = set(_occupied(table).tolist())
    assert {slots - 1, 0, 1, len(keys) // 2} <= occ  # the cluster really wraps around
    pairs = list(model)
    for idx in rng.permutation(len(pairs))[: len(pairs) // 2]:
        free_row(table.t, model.pop(pairs[idx]))
    _check_table(table, model, keys[:64])
    for p in pairs[::2]:  # re-insert half of the removed ones, then remove everything
        if p not in model:
            model[p] = alloc_row(table.t, p[0], p[1], SERVING, 0)
    _check_table(table, model, keys[:64])
    for idx in rng.permutation(len(pairs)):
        if pairs[idx] in model:
            free_row(table.t, model.pop(pairs[idx]))
    _check_table(table, model, keys[:64])
    assert len(_occupied(table)) == 0


def test_growth_keeps_rows_and_free_list() -> None:
    table = BlockTable.create(rows=4, instances=N_INST, groups=1)
    model = {}
    for k in range(1000):
        table.ensure_rows(1)
        model[(k % N_INST, k // N_INST)] = alloc_row(table.t, k % N_INST, k // N_INST, SERVING, k)
    assert table.rows >= 1000
    for k in range(0, 1000, 3):
        free_row(table.t, model.pop((k % N_INST, k // N_INST)))
    before = table.rows
    table.ensure_rows(table.free_rows() + 1)  # forces growth with holes in the rows
    assert table.rows > before
    _check_table(table, model, list(range(300)))
    assert all(table.t.t_write[r] == 4 * k + i for (i, k), r in model.items())


@pytest.mark.parametrize("rows", [4, 700, 717, 1024, 1434, 5000, 5859, 20000, 97656])
def test_bytes_per_row_budget(rows: int) -> None:
    """At most 64 bytes of core state per row, for every table size (filled to its rows)."""
    table = BlockTable.create(rows=4, instances=1, groups=1)
    # fill by growing as a replay does, then size exactly at ``rows`` for the worst ratios
    for k in range(min(rows, 2000)):
        table.ensure_rows(1)
        alloc_row(table.t, 0, k, SERVING, 0)
    assert bytes_per_row(table) <= 64
    exact = BlockTable.create(rows=rows, instances=1, groups=1)
    bpr = bytes_per_row(exact)
    row_bytes = sum(getattr(exact.t, f).itemsize for f in ROW_FIELDS)  # no hidden padding
    assert bpr == pytest.approx(row_bytes + exact.t.slots.itemsize * exact.index_slots / exact.rows)
    assert bpr <= 64
