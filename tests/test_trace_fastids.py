"""The fast ``hash_ids`` path (kvsim/trace/fastids.py) against orjson: the same ids when
it takes a line, the plain path (and its errors) when it does not."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.trace import TraceError, read_trace
from kvsim.trace.fastids import MIN_LIST_BYTES, parse_int_list, split_ids
from kvsim.trace.readers import _iter_objects, _Lines, _parse_bailian, _parse_mooncake, _Sessions

I64 = st.integers(-(1 << 63), (1 << 63) - 1)
WS = st.sampled_from(["", " ", "  ", "\t", "\n", "\r\n", " \t "])


def _parse(text: bytes) -> int | list[int]:
    line = b"xx[" + text + b"]yy"  # the kernel parses a slice of the line's buffer
    out = np.empty(text.count(b",") + 1, dtype=np.int64)
    n = parse_int_list(np.frombuffer(line, dtype=np.uint8), 3, 3 + len(text), out)
    return n if n < 0 else out[:n].tolist()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(WS, I64, WS), max_size=40))
def test_integer_lists_parse_as_json(items: list[tuple[str, int, str]]) -> None:
    text = ",".join(f"{a}{v}{b}" for a, v, b in items).encode()
    got = _parse(text)
    if any(v == -(1 << 63) for _, v, _ in items):
        assert got == -1  # the one int64 it leaves to the plain path
    else:
        assert got == orjson.loads(b"[" + text + b"]")


TOKEN = st.one_of(
    I64.map(str), st.integers(1 << 63, 1 << 70).map(str),
    st.integers(-(1 << 70), -(1 << 63)).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["", "-", "--1", "01", "-01", "1e3", "1E3", "1.0", "+1", "true", "null",
                     '"1"', "[1]", "{}", "0x1", "1 2", "-0", "0", "00"]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(WS, TOKEN, WS), min_size=1, max_size=8), st.booleans())
def test_anything_else_is_refused_never_misread(items: list[tuple[str, str, str]],
                                                trailing: bool) -> None:
    """Whatever the text, the kernel either agrees with orjson on a list of int64s or
    refuses (-1): it never returns other values."""
    text = (",".join(f"{a}{t}{b}" for a, t, b in items) + ("," if trailing else "")).encode()
    got = _parse(text)
    try:
        want = orjson.loads(b"[" + text + b"]")
    except orjson.JSONDecodeError:
        want = None
    if got != -1:
        assert want == got and all(type(v) is int for v in want)


def _long(ids: list[int]) -> str:
    return orjson.dumps(ids).decode()


def test_split_ids_takes_only_the_object_key() -> None:
    ids = list(range(10**12, 10**12 + 40))
    line = ('{"timestamp": 1, "hash_ids" :  ' + _long(ids) + ', "output_length": 2}').encode()
    cut = split_ids(line)
    assert cut is not None and cut[1].tolist() == ids
    assert orjson.loads(cut[0]) == {"timestamp": 1, "hash_ids": [], "output_length": 2}
    short = b'{"hash_ids": [1, 2, 3]}'
    assert split_ids(short) is None  # a short list: orjson's
    twice = ('{"hash_ids": ' + _long(ids) + ', "hash_ids": [1]}').encode()
    assert split_ids(twice) is None  # orjson keeps the last: the plain path decides
    escaped = ('{"note": "\\"hash_ids\\": ' + _long(ids) + '", "hash_ids": []}').encode()
    assert split_ids(escaped) is None
    assert len(_long(ids)) > MIN_LIST_BYTES


def _lines_equal(path: Path) -> None:
    slow = list(_iter_objects(path))
    fast = list(_iter_objects(path, fast_ids=True))
    assert [n for n, _ in fast] == [n for n, _ in slow]
    for (_, a), (_, b) in zip(fast, slow, strict=True):
        ids = a["hash_ids"]
        assert (ids.tolist() if isinstance(ids, np.ndarray) else ids) == b["hash_ids"]
        assert {k: v for k, v in a.items() if k != "hash_ids"} == \
            {k: v for k, v in b.items() if k != "hash_ids"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-(1 << 63), (1 << 64) - 1), max_size=60),
                min_size=1, max_size=12))
def test_mooncake_file_reads_the_same_both_ways(tmp_path_factory: pytest.TempPathFactory,
                                                 rows: list[list[int]]) -> None:
    path = tmp_path_factory.mktemp("fast") / "t.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"timestamp": i, "input_length": 16 * len(h),
                                            "output_length": 1, "hash_ids": h}) + b"\n"
                              for i, h in enumerate(rows)))
    _lines_equal(path)
    kw = dict(bs=16, tail="keep", chain="off", strict=False, instance=None)
    a = _parse_mooncake(path, _iter_objects(path, fast_ids=True), sessions=_Sessions(path), **kw)
    b = _parse_mooncake(path, _iter_objects(path), sessions=_Sessions(path), **kw)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.offsets, b.offsets)


def test_bailian_file_reads_the_same_both_ways(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    recs = []
    for i in range(200):
        h = rng.integers(0, 1 << 62, int(rng.integers(0, 300))).tolist()
        recs.append({"chat_id": i, "parent_chat_id": -1 if i % 3 == 0 else i - 1,
                     "timestamp": i * 0.5, "input_length": 16 * len(h), "output_length": 3,
                     "type": "text", "turn": 1 + i % 3, "hash_ids": h})
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    _lines_equal(path)
    kw = dict(bs=16, tail="keep", chain="off", strict=False, instance=None)
    a = _parse_bailian(path, _iter_objects(path, fast_ids=True), **kw)
    b = _parse_bailian(path, _iter_objects(path), **kw)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.offsets, b.offsets)
    full = read_trace(path, "bailian", block_size=16)
    assert int(full.key_counts().sum()) == sum(len(r["hash_ids"]) for r in recs)


@pytest.mark.parametrize("bad, message", [
    ("1.5", "got 1.5"),
    ('"x"', 'got "x"'),
    ("[1]", "got [1]"),
])
def test_a_bad_id_in_a_long_list_names_its_line(tmp_path: Path, bad: str, message: str
                                                ) -> None:
    ids = ", ".join(str(10**12 + i) for i in range(40))
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 16, "output_length": 1, "hash_ids": [1]}\n'
                    f'{{"timestamp": 1, "input_length": 16, "output_length": 1, '
                    f'"hash_ids": [{ids}, {bad}]}}\n')
    with pytest.raises(TraceError, match=f"t.jsonl:2: field .hash_ids.*{re.escape(message)}"):
        read_trace(path, "mooncake")


def test_blank_lines_are_counted_on_the_fast_path_too(tmp_path: Path) -> None:
    ids = _long(list(range(10**12, 10**12 + 40)))
    rec = '{"timestamp": 0, "input_length": 16, "output_length": 1, "hash_ids": ' + ids + "}"
    lines = _Lines(tmp_path / "x.jsonl", fast_ids=True)
    got = list(lines.objects(1, [rec.encode(), b"", b"  ", rec.encode()]))
    assert [n for n, _ in got] == [1, 4] and lines.mid_count == 2 and lines.mid_first == 2


def test_a_key_spelled_with_an_escape_is_left_to_orjson() -> None:
    """``"hash\\u005fids"`` is the key ``hash_ids`` to orjson: a line with any escape
    goes the plain way, so a nested list of the same name is never taken for it."""
    ids = _long(list(range(10**12, 10**12 + 40)))
    line = ('{"meta": {"hash_ids": ' + ids + '}, "hash\\u005fids": []}').encode()
    assert orjson.loads(line)["hash_ids"] == []
    assert split_ids(line) is None
    got = list(_Lines(Path("x.jsonl"), fast_ids=True).objects(1, [line]))
    assert got[0][1]["hash_ids"] == []
