"""The flood bench's own checks: its records hold what it says, and its MISMATCH check fails
when the worker keeps or drops the wrong spans (a bench that cannot fail measures nothing)."""

from __future__ import annotations

import argparse

from bench.otlp_flood import Run, flood_records, interleaved, problems
from consumers.otlp import decode_otlp

TID = bytes.fromhex("f1" * 8 + "00" * 8)


def test_the_flood_is_one_trace_with_one_root_and_unique_span_ids() -> None:
    records = list(flood_records(TID, 2_500, 300))
    assert len(records) == 3
    spans = [s for r in records for s in decode_otlp(r, "otlp_proto", 1 << 24).spans]
    assert len(spans) == 2_500 and len({s.span_id for s in spans}) == 2_500
    assert {s.trace_id for s in spans} == {"tr-" + TID.hex()}
    assert [s.span_id for s in spans if s.root] == [spans[0].span_id]


def test_interleaving_keeps_every_record_once_and_in_order() -> None:
    ordinary = [b"o%d" % i for i in range(10)]
    flood = [b"f%d" % i for i in range(3)]
    out = [v for _, v in interleaved(ordinary, flood)]
    assert sorted(out) == sorted(ordinary + flood)
    assert [v for v in out if v.startswith(b"o")] == ordinary
    assert [v for v in out if v.startswith(b"f")] == flood
    assert out.index(b"f2") < len(out) - 1  # spread among the ordinary records, not appended


def run(name: str, kept: int | None, dropped: int, ordinary: int = 100) -> Run:
    return Run("sqlite", name, 1.0, 100.0, ordinary, kept, None, dropped, 0)


def test_the_check_fails_on_wrong_counts() -> None:
    args = argparse.Namespace(traces=100, flood_spans=500)
    assert problems(run("capped", 50, 450), args, cap=50) == []
    assert problems(run("capped", 51, 449), args, cap=50) == []  # the root read late
    assert problems(run("capped", 50, 449), args, cap=50)  # a span neither kept nor dropped
    assert problems(run("capped", 52, 448), args, cap=50)  # past the cap
    assert problems(run("uncapped", 500, 0), args, cap=50) == []
    assert problems(run("uncapped", 499, 0), args, cap=50)
    assert problems(run("baseline", None, 0, ordinary=99), args, cap=50)
