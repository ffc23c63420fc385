"""Readers, writers and hashing of kvsim.trace."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MISSING_MOONCAKE, needs_mooncake
from conftest import MOONCAKE_PATH as MOONCAKE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsim.trace import (
    KIND_READ,
    KIND_REQUEST,
    KIND_WRITE,
    QT_BATCH,
    QT_PREFIX,
    QT_SW,
    Trace,
    TraceError,
    TraceWarning,
    chain_ids,
    detect_format,
    read_trace,
    token_block_keys,
    trace_diff,
    write_trace,
)
from kvsim.trace.hashing import (
    block_content_ids,
    chain_ids_reference,
    is_prefix_chained,
    mix64,
)
from kvsim.trace.readers import session_roots


def write_lines(path: Path, records: list[object | str]) -> Path:
    """Write JSONL: dicts are serialised, strings written as they are."""
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else orjson.dumps(r).decode()) + "\n")
    return path


def mc(ts: int = 0, il: int = 1024, ol: int = 1, h: list[int] | None = None) -> dict:
    return {"timestamp": ts, "input_length": il, "output_length": ol, "hash_ids": h or [1, 2]}


# ---------------------------------------------------------------------- Mooncake
@pytest.fixture(scope="module")
def mooncake() -> Trace:
    if not MOONCAKE.is_file():
        pytest.skip(MISSING_MOONCAKE)
    return read_trace(MOONCAKE)


@needs_mooncake
def test_mooncake_real_file(mooncake: Trace) -> None:
    t = mooncake
    t.validate()
    assert t.block_size == 512
    assert t.n_requests == 12_031
    assert t.n_keys == 276_491
    assert int(t.input_len.sum()) == 144_793_823
    assert t.instances == ("default",)
    assert t.ts_ns[0] == 0 and t.ts_ns[-1] == 3_536_999 * 1_000_000
    assert t.keys.dtype == np.int64 and t.offsets.dtype == np.int64
    # keys = hash_ids[: input_length // 512]
    first = orjson.loads(MOONCAKE.read_bytes().split(b"\n", 1)[0])
    assert t.request_keys(0).tolist() == first["hash_ids"][: first["input_length"] // 512]
    assert (t.key_counts() <= t.input_len // 512).all()


@needs_mooncake
def test_mooncake_tail_keep_and_chain(mooncake: Trace) -> None:
    keep = read_trace(MOONCAKE, tail="keep")
    assert keep.n_keys == 288_500
    assert detect_format(MOONCAKE) == "mooncake"
    # The real file is prefix-chained: auto leaves the ids alone, on re-hashes them.
    on = read_trace(MOONCAKE, chain="on")
    assert np.array_equal(on.offsets, mooncake.offsets)
    assert not np.array_equal(on.keys, mooncake.keys)
    assert np.array_equal(on.keys, chain_ids(mooncake.keys, mooncake.offsets))
    named = read_trace(MOONCAKE, instance="kimi")
    assert named.instances == ("kimi",)


def test_mooncake_small_and_block_size(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "m.jsonl", [mc(0, 1100, 5, [1, 2, 3]), "", "   ", mc(7, 10, 1, [9])])
    t = read_trace(p)
    assert t.n_requests == 2
    assert t.request_keys(0).tolist() == [1, 2] and t.request_keys(1).tolist() == []
    assert t.ts_ns.tolist() == [0, 7_000_000]
    assert t.output_len.tolist() == [5, 1]
    t4 = read_trace(p, block_size=4)
    assert t4.block_size == 4 and t4.request_keys(1).tolist() == [9]
    assert read_trace(p, tail="keep").request_keys(0).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="block_size must be positive"):
        read_trace(p, block_size=0)


def test_float_timestamps_and_gzip(tmp_path: Path) -> None:
    import gzip

    p = tmp_path / "m.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write(orjson.dumps(mc(1.5)) + b"\n" + orjson.dumps(mc(2)) + b"\n")
    t = read_trace(p)
    assert t.ts_ns.tolist() == [1_500_000, 2_000_000]


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"timestamp": 0, "input_length": "abc", "output_length": 1, "hash_ids": []}',
            "field 'input_length': expected a non-negative integer, got \"abc\"",
        ),
        (
            '{"timestamp": 0, "input_length": -4, "output_length": 1, "hash_ids": []}',
            "field 'input_length': expected a non-negative integer, got -4",
        ),
        (
            '{"timestamp": 0, "input_length": 4.5, "output_length": 1, "hash_ids": []}',
            "field 'input_length': expected a non-negative integer, got 4.5",
        ),
        ('{"timestamp": 0, "input_length": 4, "hash_ids": []}', "missing field 'output_length'"),
        (
            '{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": 5}',
            "field 'hash_ids': expected a list of integers, got 5",
        ),
        (
            '{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [1, "x"]}',
            "field 'hash_ids': expected integer ids in [-2**63, 2**64), got \"x\"",
        ),
        (
            '{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [1, 2.5]}',
            "field 'hash_ids': expected integer ids in [-2**63, 2**64), got 2.5",
        ),
        (
            '{"timestamp": "now", "input_length": 4, "output_length": 1, "hash_ids": []}',
            "field 'timestamp': expected a number, got \"now\"",
        ),
        ('{"timestamp": 0, "input_length": 4, ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got [1,2]"),
    ],
)
def test_malformed_line_names_file_line_field(tmp_path: Path, line: str, message: str) -> None:
    good = [mc(i) for i in range(15)]
    p = write_lines(tmp_path / "trace.jsonl", [*good[:10], "", *good[10:], line, mc(99)])
    with pytest.raises(TraceError) as e:
        read_trace(p, "mooncake")
    assert str(e.value).startswith(f"{p}:17: ")
    assert message in str(e.value)


def test_invalid_json_names_file_line_and_column(tmp_path: Path) -> None:
    cut = write_lines(tmp_path / "cut.jsonl", [mc(0), '{"timestamp": 1, "hash_ids": [1', mc(2)])
    with pytest.raises(TraceError) as e:
        read_trace(cut, "mooncake")
    # the line's own newline is not "line 2" of anything: the error is at its end
    assert str(e.value) == (f"{cut}:2: invalid JSON at the end of the line (column 32): "
                            "unexpected end of data")
    extra = write_lines(tmp_path / "extra.jsonl", [mc(0), '{"timestamp": 1} x'])
    with pytest.raises(TraceError, match=r"extra.jsonl:2: invalid JSON at column 18: "):
        read_trace(extra, "mooncake")


def test_blank_lines_between_records_are_reported(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "gaps.jsonl", [mc(0), "", "  ", mc(1), "", mc(2), "", ""])
    with pytest.warns(UserWarning, match=r"gaps.jsonl: skipped 3 blank line\(s\) between "
                      r"records \(the first at line 2\)"):
        t = read_trace(p, "mooncake")
    assert t.n_requests == 3
    # trailing blank lines alone are not worth a warning
    tail = write_lines(tmp_path / "tail.jsonl", [mc(0), mc(1), "", ""])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_trace(tail, "mooncake").n_requests == 2


def test_bad_value_in_a_later_chunk_names_its_line(tmp_path: Path) -> None:
    # > 1M ids so that the bad one is validated in a later numpy chunk.
    big = [mc(0, 512 * 5000, 1, list(range(5000))) for _ in range(220)]
    bad = mc(0, 512 * 3, 1, [1, 2, None])
    p = write_lines(tmp_path / "big.jsonl", [*big, bad])
    with pytest.raises(TraceError, match=r"big.jsonl:221: field 'hash_ids'.*got null"):
        read_trace(p)


def test_empty_unrecognised_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TraceError, match=r"empty.jsonl: empty trace"):
        read_trace(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n")
    with pytest.raises(TraceError, match=r"blank.jsonl: empty trace"):
        read_trace(blank)
    with pytest.raises(TraceError, match=r"blank.jsonl: empty trace"):
        read_trace(blank, "mooncake")
    odd = write_lines(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(
        TraceError, match=r"odd.jsonl:1: unrecognised trace format \(fields: bar, foo\)"
    ):
        read_trace(odd)
    with pytest.raises(TraceError, match=r"nope.jsonl: cannot read"):
        read_trace(tmp_path / "nope.jsonl")
    with pytest.raises(TraceError, match="unknown trace format 'csv'"):
        read_trace(odd, "csv")
    notpq = tmp_path / "x.parquet"
    notpq.write_text("hello")
    with pytest.raises(TraceError, match=r"x.parquet: cannot read parquet"):
        read_trace(notpq)


# ---------------------------------------------------------------------- time order
def test_out_of_order_sorted_stably_with_warning(tmp_path: Path) -> None:
    rows = [mc(5, h=[1]), mc(3, h=[2]), mc(5, h=[3]), mc(1, h=[4]), mc(3, h=[5]), mc(9, h=[6])]
    p = write_lines(tmp_path / "t.jsonl", rows)
    with pytest.warns(
        TraceWarning, match=r"3 rows out of timestamp order \(first at .*t.jsonl:2\)"
    ):
        t = read_trace(p, block_size=1)
    assert t.ts_ns.tolist() == [1e6, 3e6, 3e6, 5e6, 5e6, 9e6]
    assert t.keys.tolist() == [4, 2, 5, 1, 3, 6]  # ties keep file order
    t.validate()
    with pytest.raises(TraceError, match=r"t.jsonl:2: timestamp out of order \(3 rows"):
        read_trace(p, block_size=1, strict=True)


def test_sorted_file_gives_no_warning(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "t.jsonl", [mc(1), mc(1), mc(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_trace(p, strict=True)


# ---------------------------------------------------------------------- Bailian
def bl(chat: int, parent: int, ts: float, h: list[int], **kw: object) -> dict:
    rec = {
        "chat_id": chat,
        "parent_chat_id": parent,
        "timestamp": ts,
        "input_length": 16 * len(h) + 3,
        "output_length": 7,
        "type": "text",
        "turn": 1,
        "hash_ids": h,
    }
    rec.update(kw)
    return rec


def test_bailian_sessions_types_and_chaining(tmp_path: Path) -> None:
    rows = [
        bl(10, -1, 0.5, [1, 2, 3]),
        bl(11, 10, 1.25, [1, 2, 3, 4], turn=2),
        bl(20, -1, 2.0, [7, 2], type="image"),  # 2 at position 1 after another parent
        bl(12, 11, 3.0, [1, 2, 3, 4, 5], turn=3),
        bl(30, 99, 4.0, [8], type="file"),  # parent not in the file: its own root
    ]
    p = write_lines(tmp_path / "b.jsonl", rows)
    assert detect_format(p) == "bailian"
    t = read_trace(p)
    assert t.block_size == 16
    assert t.session is not None and t.session.tolist() == [10, 10, 20, 10, 30]
    assert t.turn is not None and t.turn.tolist() == [1, 2, 1, 3, 1]
    assert t.type_names == ("text", "image", "file")
    assert t.type_code is not None and t.type_code.tolist() == [0, 0, 1, 0, 2]
    assert t.ts_ns.tolist() == [500_000_000, 1_250_000_000, 2_000_000_000, 3e9, 4e9]
    # Ids are per block (2 follows both 1 and 7): auto chains them.
    raw = read_trace(p, chain="off")
    assert raw.request_keys(2).tolist() == [7, 2]
    assert not is_prefix_chained(raw.keys, raw.offsets)
    assert np.array_equal(t.keys, chain_ids(raw.keys, raw.offsets))
    assert t.request_keys(0)[1] != t.request_keys(2)[1]
    assert t.request_keys(1)[:3].tolist() == t.request_keys(0).tolist()
    assert np.array_equal(read_trace(p, chain="on").keys, t.keys)
    assert read_trace(p, tail="keep", chain="off").n_keys == raw.n_keys  # 3 tail tokens


def test_bailian_prefix_chained_ids_are_kept(tmp_path: Path) -> None:
    rows = [bl(1, -1, 0.0, [1, 2, 3]), bl(2, 1, 1.0, [1, 2, 3, 4]), bl(3, -1, 2.0, [1, 5])]
    p = write_lines(tmp_path / "b.jsonl", rows)
    assert read_trace(p).keys.tolist() == [1, 2, 3, 1, 2, 3, 4, 1, 5]


def test_bailian_errors(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "b.jsonl", [bl(1, -1, 0.0, [1]), bl(2, 1, 1.0, [1], type=3)])
    with pytest.raises(TraceError, match=r"b.jsonl:2: field 'type': expected a string, got 3"):
        read_trace(p)
    rec = bl(2, 1, 1.0, [1])
    del rec["turn"]
    p = write_lines(tmp_path / "c.jsonl", [bl(1, -1, 0.0, [1]), rec])
    with pytest.raises(TraceError, match=r"c.jsonl:2: missing field 'turn'"):
        read_trace(p)


def test_session_roots_deep_chain() -> None:
    n = 1000
    chat = np.arange(100, 100 + n)
    parent = np.concatenate([[-1], chat[:-1]])
    assert (session_roots(chat, parent) == 100).all()
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    assert (session_roots(chat[perm], parent[perm]) == 100).all()


# ---------------------------------------------------------------------- KVCM
def kv(ts: int, keys: list[int], **kw: object) -> dict:
    rec: dict[str, object] = {"instance_id": "a", "trace_id": "t", "timestamp_us": ts, "keys": keys}
    rec.update(kw)
    return rec


def test_kvcm_masks_in_all_forms(tmp_path: Path) -> None:
    rows = [
        kv(1, [1, 2, 3], block_mask=[True, False, True]),
        kv(2, [1, 2, 3], block_mask=2),
        kv(3, [1, 2, 3], block_mask={"offset": 1}),
        kv(4, [1, 2, 3], block_mask={"bool_masks": {"values": [False, True, True]}}),
        kv(5, [1, 2]),
        kv(6, [1, 2], block_mask=None),
        kv(7, [1, 2], block_mask=9),  # offsets beyond the keys are clamped
    ]
    p = write_lines(tmp_path / "k.jsonl", rows)
    assert detect_format(p) == "kvcm"
    t = read_trace(p)
    assert t.mask is not None
    expect = [[1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0], [0, 0], [1, 1]]
    assert t.mask.astype(int).tolist() == [b for row in expect for b in row]
    no_mask = write_lines(tmp_path / "n.jsonl", [kv(1, [1]), kv(2, [2], block_mask=None)])
    assert read_trace(no_mask).mask is None


def test_kvcm_fields(tmp_path: Path) -> None:
    big = 2**64 - 5
    rows = [
        kv(
            10,
            [big, 2**63, 5],
            query_type="QT_BATCH_GET",
            type="get",
            input_len=50,
            output_len=3,
            total_keys=3,
        ),
        {
            "instance_id": "b",
            "timestamp_ns": 10_500,
            "keys": [1],
            "query_type": 2,
            "sw_size": 4,
            "type": "write",
        },
        kv(11, [1, 2], query_type="QT_REVERSE_ROLL_SW_MATCH", sw_size=1, type="request"),
        kv(12, [], query_type="prefix_match"),
        {"timestamp_us": 13, "keys": [3]},
    ]
    p = write_lines(tmp_path / "k.jsonl", rows)
    t = read_trace(p)
    assert t.block_size == 16
    assert t.instances == ("a", "b", "")
    assert t.instance.tolist() == [0, 1, 0, 0, 2]
    assert t.ts_ns.tolist() == [10_000, 10_500, 11_000, 12_000, 13_000]
    assert t.request_keys(0).tolist() == [-5, -(2**63), 5]  # two's complement
    assert t.kind.tolist() == [KIND_READ, KIND_WRITE, KIND_REQUEST, KIND_REQUEST, KIND_REQUEST]
    assert t.query_type.tolist() == [QT_BATCH, QT_SW, QT_SW, QT_PREFIX, QT_PREFIX]
    assert t.sw_size.tolist() == [0, 4, 1, 0, 0]
    assert t.input_len.tolist() == [50, 16, 32, 0, 16]
    assert t.output_len.tolist() == [3, 0, 0, 0, 0]
    only_a = read_trace(p, instance="a")
    assert only_a.n_requests == 3 and only_a.instances == ("a",)
    assert (only_a.instance == 0).all()
    with pytest.raises(TraceError, match="no requests of instance 'zz'"):
        read_trace(p, instance="zz")
    assert read_trace(p, block_size=4).input_len.tolist()[1] == 4


@pytest.mark.parametrize(
    ("rec", "message"),
    [
        (kv(1, [1, 2], block_mask=[True]), "field 'block_mask': expected 2 booleans"),
        (kv(1, [1], block_mask=-1), "field 'block_mask': expected a non-negative offset"),
        (kv(1, [1], block_mask={"x": 1}), "field 'block_mask': expected {\"offset\": n}"),
        (kv(1, [1], query_type="fuzzy"), "field 'query_type': expected prefix_match"),
        (kv(1, [1], type="delete"), 'field \'type\': expected "request", "get" or "write"'),
        (kv(1, [1], instance_id=7), "field 'instance_id': expected a string, got 7"),
        (kv(1.5, [1]), "field 'timestamp_us': expected an integer, got 1.5"),
        (
            {"timestamp_ns": "x", "keys": [1]},
            "field 'timestamp_ns': expected an integer, got \"x\"",
        ),
        ({"instance_id": "a", "keys": [1]}, "missing field 'timestamp_us'"),
        ({"instance_id": "a", "timestamp_us": 1}, "missing field 'keys'"),
        (
            '{"instance_id": "a", "timestamp_us": 1, "keys": [18446744073709551616]}',
            # orjson >= 3.10 parses it as a float and prints it as 1.8446744073709552e+19
            "field 'keys': expected integer ids in [-2**63, 2**64), got 1.8446744073709552e",
        ),
    ],
)
def test_kvcm_errors(tmp_path: Path, rec: dict | str, message: str) -> None:
    p = write_lines(tmp_path / "k.jsonl", [kv(0, [1]), rec])
    with pytest.raises(TraceError) as e:
        read_trace(p, "kvcm")
    assert str(e.value).startswith(f"{p}:2: ") and message in str(e.value)


# ---------------------------------------------------------------------- parquet
def rich_trace() -> Trace:
    t = Trace.from_lists(
        ts_ns=[0, 1_000_000, 1_000_000, 2_500_000_123],
        keys=[[1, 2, 3], [1, 2], [], [-7, 2**62]],
        input_len=[50, 40, 3, 33],
        output_len=[1, 2, 3, 4],
        block_size=16,
        instance=["x", "y", "x", "x"],
    )
    from dataclasses import replace

    return replace(
        t,
        kind=np.array([0, 1, 2, 0], dtype=np.int8),
        query_type=np.array([0, 1, 0, 2], dtype=np.int8),
        sw_size=np.array([0, 0, 0, 1], dtype=np.int32),
        mask=np.array([1, 1, 0, 0, 1, 0, 1], dtype=bool),
        session=np.array([5, 6, 5, 5], dtype=np.int64),
        turn=np.array([1, 1, 2, 3], dtype=np.int32),
        type_code=np.array([0, 0, 0, 1], dtype=np.int16),
        type_names=("text", "image"),
        meta={"origin": "test"},
    )


def test_parquet_round_trip_everything(tmp_path: Path) -> None:
    t = rich_trace()
    p = tmp_path / "r.parquet"
    write_trace(t, p)
    back = read_trace(p)
    assert trace_diff(t, back) == []
    assert back.meta == {"origin": "test"} and back.source == str(p)
    schema = pq.read_schema(p)
    assert schema.field("keys").type == pa.list_(pa.int64())
    assert schema.field("instance").type == pa.string()
    assert schema.metadata[b"kvsim.block_size"] == b"16"
    assert read_trace(p, block_size=32).block_size == 32
    assert read_trace(p, instance="y").n_requests == 1


def test_parquet_written_by_others(tmp_path: Path) -> None:
    """A minimal file from plain pyarrow: no metadata, several chunks, null mask rows."""
    table = pa.table(
        {
            "ts_ns": pa.array([3, 1, 2], pa.int64()),
            "instance": ["b", "a", "b"],
            "keys": pa.array([[1, 2], [3], []], pa.list_(pa.int64())),
            "input_len": [32, 16, 0],
            "output_len": [0, 0, 0],
            "mask": pa.array([[True, False], None, []], pa.list_(pa.bool_())),
        }
    )
    p = tmp_path / "o.parquet"
    pq.write_table(table, p, row_group_size=1)
    with pytest.warns(TraceWarning, match="2 rows out of timestamp order") as rec:
        t = read_trace(p)
    assert rec[0].filename == __file__  # attributed to the caller, not to kvsim
    assert t.block_size == 16
    assert t.ts_ns.tolist() == [1, 2, 3]
    assert t.instances == ("b", "a")
    assert t.instance.tolist() == [1, 0, 0]
    assert t.keys.tolist() == [3, 1, 2]
    assert t.mask is not None and t.mask.tolist() == [False, True, False]
    assert t.session is None and t.type_code is None
    with pytest.raises(TraceError, match=r"o.parquet: row 2: timestamp out of order"):
        read_trace(p, strict=True)


def test_parquet_errors(tmp_path: Path) -> None:
    p = tmp_path / "m.parquet"
    pq.write_table(pa.table({"ts_ns": [1], "keys": pa.array([[1]])}), p)
    with pytest.raises(TraceError, match=r"m.parquet: missing column 'instance'"):
        read_trace(p)
    pq.write_table(
        pa.table(
            {
                "ts_ns": [1, None],
                "instance": ["a", "a"],
                "keys": [[1], [2]],
                "input_len": [1, 1],
                "output_len": [0, 0],
            }
        ),
        p,
    )
    with pytest.raises(TraceError, match=r"column 'ts_ns' has 1 null values"):
        read_trace(p)
    pq.write_table(
        pa.table(
            {
                "ts_ns": [1],
                "instance": ["a"],
                "keys": [[1, 2]],
                "input_len": [1],
                "output_len": [0],
                "mask": [[True]],
            }
        ),
        p,
    )
    with pytest.raises(TraceError, match=r"row 1: mask has 1 entries for 2 keys"):
        read_trace(p)
    empty = write_trace_empty(tmp_path / "e.parquet")
    with pytest.raises(TraceError, match="empty trace"):
        read_trace(empty)


def write_trace_empty(p: Path) -> Path:
    write_trace(Trace.from_lists(ts_ns=[], keys=[]), p)
    return p


# ---------------------------------------------------------------------- round trips
JSONL_COLUMNS = {
    "mooncake": ("ts_ns", "offsets", "keys", "input_len", "output_len"),
    "bailian": (
        "ts_ns",
        "offsets",
        "keys",
        "input_len",
        "output_len",
        "session",
        "turn",
        "type_code",
        "type_names",
    ),
    "kvcm": (
        "ts_ns",
        "instance",
        "instances",
        "offsets",
        "keys",
        "input_len",
        "output_len",
        "kind",
        "query_type",
        "sw_size",
        "mask",
    ),
}


def test_round_trip_jsonl_formats(tmp_path: Path) -> None:
    t = rich_trace()
    one = t.select(np.flatnonzero(t.instance == 0))
    from dataclasses import replace

    one = replace(one, instance=np.zeros(one.n_requests, np.int32), instances=("x",))
    for fmt, cols in JSONL_COLUMNS.items():
        src = t if fmt == "kvcm" else one
        p = tmp_path / f"{fmt}.jsonl"
        write_trace(src, p, fmt)
        assert detect_format(p) == fmt
        back = read_trace(p, block_size=16, chain="off")
        assert trace_diff(src, back, columns=cols) == [], fmt


def test_round_trip_mooncake_real(tmp_path: Path, mooncake: Trace) -> None:
    for fmt in ("mooncake", "kvcm", "parquet"):
        p = tmp_path / f"m.{fmt}"
        write_trace(mooncake, p, fmt)
        back = read_trace(p, fmt, block_size=512)
        assert trace_diff(mooncake, back, columns=JSONL_COLUMNS["mooncake"]) == [], fmt


def test_mooncake_writer_keeps_sub_ms_times(tmp_path: Path) -> None:
    t = Trace.from_lists(ts_ns=[1_000_000, 1_500_001], keys=[[1], [2]], block_size=512)
    p = tmp_path / "m.jsonl"
    write_trace(t, p, "mooncake")
    assert [orjson.loads(x)["timestamp"] for x in p.read_text().split()] == [1, 1.500001]
    assert read_trace(p).ts_ns.tolist() == [1_000_000, 1_500_001]


def test_writes_are_atomic(tmp_path: Path) -> None:
    from dataclasses import replace

    t = rich_trace()
    broken = replace(t, kind=np.array([0, 0, 0, 9], dtype=np.int8))  # no such kind
    p = tmp_path / "out.jsonl"
    p.write_text("old\n")
    with pytest.raises(KeyError):
        write_trace(broken, p, "kvcm")
    assert p.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]  # no temp file left
    with pytest.raises(TraceError, match="cannot write"):
        write_trace(t, tmp_path / "no" / "such" / "dir.parquet")
    with pytest.raises(TraceError, match="unknown trace format 'csv'"):
        write_trace(t, tmp_path / "x.csv", "csv")


def traces_strategy() -> st.SearchStrategy[Trace]:
    @st.composite
    def build(draw: st.DrawFn) -> Trace:
        n = draw(st.integers(1, 12))
        keys = [draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6)) for _ in range(n)]
        ts = sorted(draw(st.lists(st.integers(0, 2**50), min_size=n, max_size=n)))
        insts = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
        t = Trace.from_lists(
            ts_ns=ts,
            keys=keys,
            block_size=16,
            instance=insts,
            output_len=draw(st.lists(st.integers(0, 999), min_size=n, max_size=n)),
        )
        from dataclasses import replace

        total = t.n_keys
        return replace(
            t,
            kind=np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int8),
            query_type=np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int8),
            sw_size=np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), np.int32),
            mask=np.array(draw(st.lists(st.booleans(), min_size=total, max_size=total)), bool)
            if draw(st.booleans())
            else None,
        )

    return build()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(t=traces_strategy())
def test_round_trip_property(tmp_path: Path, t: Trace) -> None:
    for fmt in ("parquet", "kvcm"):
        p = tmp_path / f"h.{fmt}"
        write_trace(t, p, fmt)
        back = read_trace(p, fmt)
        assert trace_diff(t, back) == [], fmt


# ---------------------------------------------------------------------- hashing
def ref_mix(z: int) -> int:
    """SplitMix64 output function, straight from the hashing module's docstring."""
    m = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def signed(u: int) -> int:
    return u - (1 << 64) if u >> 63 else u


def test_hash_golden_vectors() -> None:
    # splitmix64(0) is the first output of the canonical SplitMix64 generator.
    assert mix64(np.array([0], np.uint64))[0] == 0xE220A8397B1DCDAF
    assert mix64(np.array([0, 1, 2**64 - 1], np.uint64)).view(np.int64).tolist() == [
        -2152535657050944081,
        -7995527694508729151,
        -1956407806741107680,
    ]
    assert chain_ids([0, 1, 2, 3]).tolist() == [
        -6411193824288604561,
        -1481249976195441455,
        -6025178760540688667,
        2787843813531762695,
    ]
    assert chain_ids([-1, 2**63]).tolist() == [6755974106381971767, -106245707235727830]
    assert token_block_keys(np.arange(48), 16).tolist() == [
        -182236318172852348,
        3189767865940540993,
        -8415223508275991902,
    ]
    assert token_block_keys(list(range(40)), 4).tolist()[:3] == [
        6362276900259067554,
        1682600245766877480,
        7805266075226064641,
    ]
    assert block_content_ids([5] * 16, 16).view(np.int64).tolist() == [-1002714255779037754]
    # The same numbers from the definition in plain Python.
    p, out = 0, []
    for x in [0, 1, 2, 3]:
        p = ref_mix(p ^ ref_mix(x))
        out.append(signed(p))
    assert out == chain_ids([0, 1, 2, 3]).tolist()


def test_token_block_keys_properties() -> None:
    toks = np.arange(100, 180)
    keys = token_block_keys(toks, 16)
    assert keys.shape == (5,) and keys.dtype == np.int64
    assert token_block_keys(toks[:79], 16).tolist() == keys[:4].tolist()  # tail has no key
    other = toks.copy()
    other[20] = 0  # block 1 differs: keys 1.. differ, key 0 is shared
    k2 = token_block_keys(other, 16)
    assert k2[0] == keys[0] and (k2[1:] != keys[1:]).all()
    assert token_block_keys([], 16).shape == (0,)
    with pytest.raises(ValueError):
        token_block_keys([1], 0)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-(2**63), 2**64 - 1), max_size=40), min_size=1, max_size=60),
    init=st.integers(0, 2**64 - 1),
)
def test_chain_ids_matches_reference(rows: list[list[int]], init: int) -> None:
    flat = np.array([x & ((1 << 64) - 1) for r in rows for x in r], dtype=np.uint64)
    offsets = np.cumsum([0] + [len(r) for r in rows])
    got = chain_ids(flat, offsets, init=init)
    want = [k for r in rows for k in chain_ids_reference(r, init)]
    assert got.tolist() == want


def test_chain_ids_vectorised_and_scalar_paths_agree() -> None:
    rng = np.random.default_rng(7)
    lens = rng.integers(0, 50, 400)
    lens[:3] = [3000, 2000, 100]  # a long tail handled by the scalar loop
    offsets = np.concatenate([[0], np.cumsum(lens)])
    ids = rng.integers(-(2**63), 2**63 - 1, int(offsets[-1]), dtype=np.int64)
    inits = rng.integers(-(2**63), 2**63 - 1, 400, dtype=np.int64)
    got = chain_ids(ids, offsets, init=inits)
    for r in [0, 1, 2, 3, 57, 399]:
        row = ids[offsets[r] : offsets[r + 1]].tolist()
        assert got[offsets[r] : offsets[r + 1]].tolist() == chain_ids_reference(
            row, int(inits[r]) & ((1 << 64) - 1)
        )
    assert is_prefix_chained(got, offsets)
