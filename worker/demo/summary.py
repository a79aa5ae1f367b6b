"""What the demo's store holds: progress counts, what this run still lacks, the final summary.

Read-only, plain SQL over the trace-curator store: each caller passes its own engine, or the
function makes and disposes one, so it runs beside the worker. ``missing_ids`` counts a trace still
IN_PROGRESS as missing and binds at most 500 ids per query (SQLite's parameter limit);
``arrivals`` says how this run's traces (by format: ``otlp`` is assembled from OpenTelemetry
spans) and assessments (by source topic) reached the store.
``summarize`` prints, in order: this run, the store's totals (this and earlier runs over the
folder), the 24 h report, the dataset versions, then where to explore: commands that run as
printed from the current folder (the running console script or interpreter by its path, unless
that is what PATH finds anyway), and a Python search that names the MLflow store and experiment.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, bindparam, text

from store import otlp_buffer
from store.engine import make_engine
from store.report import iso, summary
from worker.demo.outlet import MALFORMED
from worker.demo.traffic import EXPERIMENT_NAME, HISTORY_HOURS, TrafficGenerator, TrafficStats
from worker.loop import RunStats
from worker.report.text import to_table

CURATE_INTERVAL_S = 10.0  # the worker's curator runs a cycle this often during the run


@dataclass
class StoreCounts:
    traces: int
    assessments: int
    dead_letters: int
    tags: dict[str, int]  # tag value -> traces
    assembling: int = 0  # OpenTelemetry traces whose spans wait for assembly

    @classmethod
    def read(cls, engine: Engine) -> StoreCounts:
        with engine.connect() as conn:
            traces, assessments, letters = conn.execute(text(
                "SELECT (SELECT COUNT(*) FROM traces), (SELECT COUNT(*) FROM assessments), "
                "(SELECT COUNT(*) FROM dead_letters)")).one()
            tags = conn.execute(text(
                "SELECT tag_value, COUNT(*) FROM trace_tags WHERE tag_value IS NOT NULL "
                "GROUP BY tag_value ORDER BY tag_value")).all()
            waiting = otlp_buffer.pending(conn)
        return cls(traces, assessments, letters, {v: n for v, n in tags}, waiting)


def assembling(engine: Engine) -> int:
    """OpenTelemetry traces with spans the worker has not assembled yet."""
    with engine.connect() as conn:
        return otlp_buffer.pending(conn)


def missing_ids(engine: Engine, gen: TrafficGenerator) -> tuple[int, int]:
    """(traces, assessments) the generator produced that the store lacks; a trace still
    IN_PROGRESS in the store counts as missing."""
    trace_ids, assessment_ids = gen.produced()
    with engine.connect() as conn:
        return (len(trace_ids) - _count_in(conn, TRACES_FOUND, trace_ids),
                len(assessment_ids) - _count_in(conn, ASSESSMENTS_FOUND, assessment_ids))


TRACES_FOUND = text("SELECT COUNT(*) FROM traces WHERE status != 'IN_PROGRESS' "
                    "AND trace_id IN :ids").bindparams(bindparam("ids", expanding=True))
ASSESSMENTS_FOUND = text("SELECT COUNT(*) FROM assessments WHERE assessment_id IN :ids"
                         ).bindparams(bindparam("ids", expanding=True))


def _count_in(conn: Connection, query: TextClause, ids: set[str]) -> int:
    ordered = sorted(ids)  # in chunks: SQLite limits the number of bound parameters
    return sum(conn.execute(query, {"ids": ordered[i:i + 500]}).scalar_one()
               for i in range(0, len(ordered), 500))


def produced_missing(store_url: str, gen: TrafficGenerator) -> tuple[int, int]:
    engine = make_engine(store_url)
    try:
        return missing_ids(engine, gen)
    finally:
        engine.dispose()


Arrivals = tuple[dict[str, int], dict[str, int]]  # traces by format, assessments by topic

TRACE_FORMATS = text("SELECT source_format, COUNT(*) FROM traces WHERE trace_id IN :ids "
                     "GROUP BY source_format").bindparams(bindparam("ids", expanding=True))
ASSESSMENT_TOPICS = text("SELECT src_topic, COUNT(*) FROM assessments WHERE assessment_id IN :ids "
                         "GROUP BY src_topic").bindparams(bindparam("ids", expanding=True))


def arrivals(engine: Engine, gen: TrafficGenerator) -> Arrivals:
    """How the store got this run's traces (count by format) and assessments (by topic)."""
    trace_ids, assessment_ids = gen.produced()
    with engine.connect() as conn:
        return (_group_in(conn, TRACE_FORMATS, trace_ids),
                _group_in(conn, ASSESSMENT_TOPICS, assessment_ids))


def _group_in(conn: Connection, query: TextClause, ids: set[str]) -> dict[str, int]:
    ordered = sorted(ids)  # in chunks, as _count_in
    out: dict[str, int] = {}
    for i in range(0, len(ordered), 500):
        for key, n in conn.execute(query, {"ids": ordered[i:i + 500]}).all():
            out[key] = out.get(key, 0) + n
    return out


def produced_arrivals(store_url: str, gen: TrafficGenerator) -> Arrivals:
    engine = make_engine(store_url)
    try:
        return arrivals(engine, gen)
    finally:
        engine.dispose()


@dataclass
class Outcome:
    store_url: str
    folder: Path
    source: str
    experiment_id: str
    traffic: TrafficStats
    published: int
    stats: RunStats | None  # None: interrupted before the worker ran
    elapsed_s: float
    interrupted: bool
    curation: Sequence[str] = ()
    missing: tuple[int, int] = (0, 0)
    rate_per_s: float = 0.0
    spans: int = 0  # --source otlp: spans MLflow exported to the OTLP topic
    arrivals: Arrivals = ({}, {})


def summarize(o: Outcome) -> str:
    """What this run did, what the store holds (plain SQL), the report, then where to look."""
    engine = make_engine(o.store_url)
    now_ms = int(time.time() * 1000)
    try:
        report = to_table(summary(engine, now_ms - 86_400_000, now_ms, now_ms=now_ms))
        facts = _store_facts(engine)
    finally:
        engine.dispose()
    return "\n".join([*_run_lines(o), *_store_lines(facts), "",
                      "The last 24 hours, from the rolling metric buckets "
                      "(`trace-curator report --since 24h`):",
                      report, *_dataset_lines(facts, o.curation), *explore_lines(o)])


def _store_facts(engine: Engine) -> dict[str, Any]:
    from store import datasets as ds

    with engine.connect() as conn:
        return {
            "by_status": conn.execute(text(
                "SELECT status, COUNT(*) FROM traces GROUP BY status ORDER BY status")).all(),
            "by_name": conn.execute(text(
                "SELECT name, kind, COUNT(*), AVG(numeric_value) FROM assessments "
                "GROUP BY name, kind ORDER BY name")).all(),
            "tags": conn.execute(text(
                "SELECT t.tag_key, t.tag_value, COUNT(*), COUNT(o.trace_id) FROM trace_tags t "
                "LEFT JOIN tag_outbox o ON o.trace_id = t.trace_id AND o.tag_key = t.tag_key "
                "WHERE t.tag_value IS NOT NULL GROUP BY t.tag_key, t.tag_value "
                "ORDER BY t.tag_value")).all(),
            "letters": conn.execute(text(
                'SELECT topic, "partition", "offset", error_type, error FROM dead_letters '
                'ORDER BY topic, "partition", "offset"')).all(),
            "versions": ds.versions(conn),
        }


def _run_lines(o: Outcome) -> list[str]:
    t = o.traffic
    live = (f"live {t.live} of {t.live_requested} traces at {t.achieved_per_s():.1f}/s "
            f"(asked {o.rate_per_s:g}/s; the generator manages about "
            f"{t.capacity_per_s():.1f}/s here{', so it fell behind' if t.behind else ''})"
            if t.live_requested else "no live traffic")
    if o.source == "kafka":
        feed = [f"  Kafka    {o.published} records published as they were produced, "
                f"{len(MALFORMED)} of them malformed"]
    elif o.source == "otlp":
        feed = [f"  OTLP     {o.spans} spans in {o.published} records exported by MLflow (OTLP "
                "dual export) and written to Kafka as the OpenTelemetry Collector writes them",
                "  MLflow   rescanned by the worker for the assessments, which are not on Kafka"]
    else:
        feed = ["  MLflow   polled by the worker (--source mlflow); nothing published to Kafka"]
    missing = ("holds every trace and assessment of this run" if o.missing == (0, 0) else
               f"lacks {o.missing[0]} traces and {o.missing[1]} assessments of this run"
               + (" (interrupted)" if o.interrupted else ""))
    return [
        f"trace-curator demo: {'interrupted' if o.interrupted else 'done'} after "
        f"{o.elapsed_s:.1f} s (source {o.source})",
        f"  traffic  history {t.history} of {t.history_requested} traces over the past "
        f"{HISTORY_HOURS} h; {live}",
        f"           {t.assessments} assessments ({t.late} late feedback, "
        f"{t.expectations} expectations); experiment {EXPERIMENT_NAME!r}, id {o.experiment_id}",
        *feed,
        f"  worker   {o.stats.summary() if o.stats else 'not started'}",
        f"  store    {missing}",
        *(_arrival_lines(o.arrivals) if o.source == "otlp" else []),
    ]


def _arrival_lines(arrived: Arrivals) -> list[str]:
    traces, assessments = arrived
    return [
        "           this run's traces in it by format: "
        + (", ".join(f"{fmt} {n}" for fmt, n in sorted(traces.items())) or "none")
        + " (otlp: assembled from spans); its assessments by source: "
        + (", ".join(f"{topic} {n}" for topic, n in sorted(assessments.items())) or "none")]


def _store_lines(facts: dict[str, Any]) -> list[str]:
    n_traces = sum(r[1] for r in facts["by_status"])
    n_assessments = sum(r[2] for r in facts["by_name"])
    return [
        f"Store: {n_traces} traces, {n_assessments} assessments, {len(facts['letters'])} dead "
        "letters in total (this and earlier runs over the folder)",
        "  assessments by name",
        *(f"    {name:<18} {kind:<11} {count:>5}" + ("" if mean is None else f"  mean {mean:.2f}")
          for name, kind, count, mean in facts["by_name"]),
        "  rule tags (also on the traces in MLflow once written back)",
        *(f"    {key}={value:<14} {count:>5}" + (f"  ({pending} not yet written back)"
                                                  if pending else "")
          for key, value, count, pending in facts["tags"]),
        "  dead letters",
        *(f"    {topic}[{part}]@{offset} {etype}: {error[:90]}"
          for topic, part, offset, etype, error in facts["letters"]),
        *([] if facts["letters"] else ["    none"]),
    ]


def _dataset_lines(facts: dict[str, Any], curation: Sequence[str]) -> list[str]:
    versions = facts["versions"]
    return [
        "Dataset versions (the worker curates every "
        f"{CURATE_INTERVAL_S:.0f} s; `trace-curator datasets list`):",
        *(f"  {v.dataset} v{v.version} {v.state} {v.record_count} records, created "
          f"{iso(v.created_ms)}; rules "
          + (", ".join(f"{k} {n}" for k, n in sorted(v.rule_mix.items())) or "-")
          for v in versions),
        *([] if versions else ["  none yet"]),
        *(["  the final cycle (`trace-curator curate --once`):"] if curation else []),
        *(f"    {line}" for line in curation),
    ]


def command_prefix(argv0: str, executable: str, cwd: Path,
                   search_path: str | None = None) -> list[str]:
    """How to run this ``trace-curator`` again from ``cwd``, as a shell would: the console script
    (``argv0``) by name if ``search_path`` (default PATH) finds this very script, else by its
    path; otherwise (``python -m worker``, tests) the interpreter by its path and ``-m worker``."""
    script = Path(argv0)
    if script.stem != "trace-curator":
        return [shown_path(executable, cwd, search_path), "-m", "worker"]
    if len(script.parts) == 1:  # found on PATH by the shell that started it
        return [argv0]
    return [shown_path(argv0, cwd, search_path)]


def shown_path(program: str, cwd: Path, search_path: str | None = None) -> str:
    """``program`` as a command that runs from ``cwd``: its bare name when the search path finds
    the same file, else a path relative to ``cwd`` (below it) or absolute. Symlinks are kept: a
    venv's ``python`` must stay the venv's."""
    absolute = Path(os.path.abspath(cwd / program))
    found = shutil.which(absolute.name, path=search_path)
    if found and os.path.abspath(found) == str(absolute):
        return absolute.name
    try:
        relative = absolute.relative_to(Path(os.path.abspath(cwd)))
    except ValueError:
        return str(absolute)
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"


def explore_lines(o: Outcome, *, argv0: str | None = None, executable: str | None = None,
                  cwd: Path | None = None, search_path: str | None = None) -> list[str]:
    """The closing hints, every command runnable as printed from ``cwd`` (default: the current
    folder), with no venv activated. The defaults describe the running process."""
    cwd = cwd or Path.cwd()
    here = shlex.join(command_prefix(argv0 if argv0 is not None else sys.argv[0],
                                     executable or sys.executable, cwd, search_path))
    python = shlex.quote(shown_path(executable or sys.executable, cwd, search_path))
    mlflow_uri = f"sqlite:///{o.folder / 'mlflow.db'}"
    html = Path(shown_path(str(o.folder / "report.html"), cwd, search_path=""))
    return [
        "Explore (these commands run as printed from this folder):",
        f"  export TRACE_CURATOR_STORE_URL={shlex.quote(o.store_url)}",
        f"  {here} report --since 24h",
        f"  {here} report --since 24h --format html --output {shlex.quote(str(html))} --force"
        "   # charts, candidates, dataset versions, in one file",
        f"  {here} datasets list",
        f"  {here} rules explain <trace id>",
        f"  {python} -m mlflow ui --backend-store-uri {shlex.quote(mlflow_uri)}",
        f"           then, in experiment {EXPERIMENT_NAME!r}, search traces with: "
        "tags.eval_candidate IS NOT NULL",
        "           (or one rule: tags.eval_candidate = 'error_case')",
        f"  Search the tagged traces from Python (run it with {python}):",
        "    import mlflow",
        f"    mlflow.set_tracking_uri({mlflow_uri!r})",
        f"    mlflow.set_experiment({EXPERIMENT_NAME!r})  # search_traces looks only there",
        "    traces = mlflow.search_traces(filter_string=\"tags.eval_candidate = 'error_case'\")",
        "    print(len(traces), 'traces tagged error_case')",
    ]
