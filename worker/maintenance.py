"""Periodic upkeep beside the loop: retention pruning, one bounded step per interval.

``Pruner.run_due`` is the loop's "(maybe) maintain" step. Each call that is due runs one
transaction that deletes at most ``retention_max_rows`` rows of each kind past retention
(``store.retention.prune``); a backlog therefore drains over several steps without stalling
ingestion. A store that is briefly unavailable only postpones the step: pruning is never worth
stopping the worker for.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine

from store.engine import STORE_GONE
from store.retention import PruneResult, Retention, prune
from worker.settings import Settings

logger = logging.getLogger(__name__)


class Pruner:
    def __init__(self, engine: Engine, retention: Retention, interval_s: float) -> None:
        self.engine = engine
        self.retention = retention
        self.interval_s = interval_s
        self._next_s = 0.0  # due at once: a restarted worker catches up

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> Pruner:
        return cls(engine, Retention(settings.retention_raw_days, settings.retention_minute_days,
                                     settings.retention_hour_days, settings.retention_max_rows),
                   settings.retention_interval_s)

    def run_due(self, now_ms: int) -> PruneResult | None:
        """Prune once if the interval has passed; returns what was deleted, or None."""
        mono = time.monotonic()
        if mono < self._next_s:
            return None
        self._next_s = mono + self.interval_s
        try:
            with self.engine.begin() as conn:
                result = prune(conn, now_ms, self.retention)
        except STORE_GONE as exc:
            logger.warning("pruning postponed error=%s", str(exc).splitlines()[0][:200])
            return None
        if result:
            logger.info("pruned traces=%d minute_buckets=%d hour_buckets=%d dead_letters=%d",
                        result.traces, result.minute_buckets, result.hour_buckets,
                        result.dead_letters)
            if result.most() >= self.retention.max_rows_per_cycle:
                self._next_s = mono  # more to do: the next loop turn continues
        return result
