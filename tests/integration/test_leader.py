"""One tag writer among several workers: the PostgreSQL advisory lock, its hand-over, and its
loss when the leader's database session dies."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from store.engine import make_engine
from store.leader import LeaderLock
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_one_leader_and_take_over(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    e1, e2, admin = make_engine(store_url), make_engine(store_url), make_engine(store_url)
    a, b = LeaderLock(e1, "tag-writer"), LeaderLock(e2, "tag-writer")
    other_job = LeaderLock(e2, "curator")
    try:
        assert a.ensure() is True
        assert b.ensure() is False
        assert other_job.ensure() is True  # another job has its own leader
        assert a.ensure() is True  # still leading
        a.release()
        assert b.ensure() is True  # hand-over after a clean stop

        # The leader's session dies (its worker crashed): the lock goes with it, and whoever
        # asks first leads; here `a` does, and `b` notices it lost the lock.
        pid = b._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        wait_until(a.ensure, 10, "the lock to be free once the session has ended")
        assert b.ensure() is False
        assert "lost the tag-writer leader lock" in caplog.text
    finally:
        for lock in (a, b, other_job):
            lock.release()
        for e in (e1, e2, admin):
            e.dispose()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_sqlite_always_leads(store_url: str) -> None:
    engine = make_engine(store_url)
    assert LeaderLock(engine, "tag-writer").ensure() is True
    assert LeaderLock(engine, "tag-writer").ensure() is True
    engine.dispose()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_trace_locks_exclude_other_transactions_on_the_same_traces(store_url: str) -> None:
    """``lock_traces`` holds each trace's lock to the end of the transaction: a second
    transaction on one of those traces waits (here: times out), one on other traces does not."""
    from sqlalchemy import exc as sa_exc

    from store import locks

    engine = make_engine(store_url)
    try:
        with engine.connect() as a, engine.connect() as b:
            a.begin()
            locks.lock_traces(a, ["tr-1", "tr-2", "tr-3"])
            b.begin()
            b.execute(text("SET LOCAL lock_timeout = '200ms'"))
            locks.lock_traces(b, ["tr-4", "tr-5"])  # other traces: at once
            b.rollback()
            b.begin()
            b.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(sa_exc.OperationalError, match="lock timeout"):
                locks.lock_traces(b, ["tr-9", "tr-2"])
            b.rollback()
            a.rollback()  # the transaction ends, and its locks with it
            b.begin()
            b.execute(text("SET LOCAL lock_timeout = '200ms'"))
            locks.lock_traces(b, ["tr-2"])
            b.rollback()
    finally:
        engine.dispose()
