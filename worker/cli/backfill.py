"""The backfill's progress: traces, rate, share of the window and ETA, while the worker runs.

On a terminal, a tqdm bar on stderr (percent of the window covered, with the counts as its
postfix); elsewhere (CI, container logs), one log line every ``LOG_EVERY_S``. It only reads the
worker's counters and the source's ``Progress``; it never touches the store.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO

from tqdm import tqdm

from consumers.mlflow_source import MlflowSource
from worker.loop import RunStats, Worker

logger = logging.getLogger(__name__)
LOG_EVERY_S = 5.0


class ProgressReporter:
    def __init__(self, worker: Worker, stream: TextIO, *, interval_s: float = 0.5) -> None:
        assert isinstance(worker.source, MlflowSource)
        self.worker = worker
        self.source = worker.source
        self.stream = stream
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backfill-progress", daemon=True)
        self._started = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def line(self) -> str:
        p, s = self.source.progress, self.worker.stats
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = s.traces / elapsed
        frac = p.fraction()
        eta = (elapsed * (1 - frac) / frac) if frac > 0 else float("nan")
        return (f"backfill {frac:6.1%} of the window  traces={s.traces:,} "
                f"assessments={s.assessments:,} dead_letters={s.dead_letters} "
                f"rate={rate:,.0f}/s eta_s={eta:.0f}")

    def final_line(self, stats: RunStats) -> str:
        elapsed = time.monotonic() - self._started
        p = self.source.progress
        state = "done" if p.done else "stopped"
        return (f"backfill {state}: {stats.traces:,} traces and {stats.assessments:,} "
                f"assessments stored ({p.traces:,} traces read from MLflow), "
                f"{stats.dead_letters} dead letters, {elapsed:.1f} s")

    def _run(self) -> None:
        if self.stream.isatty():
            self._bar()
        else:
            while not self._done.wait(LOG_EVERY_S):
                logger.info("%s", self.line())

    def _bar(self) -> None:
        bar = tqdm(total=100.0, file=self.stream, unit="%", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]",
                   desc="backfill")
        try:
            while not self._done.wait(self.interval_s):
                self._update(bar)
            self._update(bar)
        finally:
            bar.close()

    def _update(self, bar: tqdm) -> None:  # type: ignore[type-arg]
        s = self.worker.stats
        elapsed = max(time.monotonic() - self._started, 1e-9)
        bar.n = round(self.source.progress.fraction() * 100, 1)
        bar.set_postfix_str(f"traces={s.traces:,} assessments={s.assessments:,} "
                            f"{s.traces / elapsed:,.0f} traces/s", refresh=False)
        bar.refresh()
