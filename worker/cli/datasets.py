"""``curate`` (tagged candidates merged into versioned datasets) and ``datasets list/show/export``.

Every command needs an existing store with a current schema. ``curate --once`` runs one cycle and
exits EXIT_FAILURE when a merge failed (the version stays pending and is retried next cycle);
without ``--once`` it cycles until SIGTERM (``worker.signals``). ``datasets export`` writes the
records exactly as merged, to stdout or to a file written whole or not at all.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from worker.cli import common
from worker.exit_codes import EXIT_FAILURE, EXIT_OK
from worker.logs import setup_logging
from worker.signals import StopSignals

EXPORT_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


# --help descriptions: common.prose puts each paragraph on one line.
CURATE = """
One curation cycle per dataset spec (TRACE_CURATOR_DATASETS_FILE; unset: 'trace_curator_candidates'
in MLflow with every tagged candidate): finish a version an earlier cycle could not confirm, else
select new candidates, build records (inputs, outputs, expectations, provenance tags), sample,
write version N as pending, merge it into the sink, and mark it done. Without --once, cycles every
TRACE_CURATOR_CURATE_INTERVAL_S until SIGTERM. Exit 1 when a merge failed (it is retried next
cycle).
"""
EXPORT = """
Write the records of NAME as of version N (every record added by versions 1..N), exactly as they
were merged; --only-added: only version N's.
"""


def register(sub: common.Subcommands[argparse.ArgumentParser],
             parent: argparse.ArgumentParser) -> None:
    cur = common.command(sub, "curate", cmd_curate, parent, formatter_class=common.HELP_FORMAT,
                         help="merge tagged candidates into versioned evaluation datasets",
                         description=common.prose(CURATE))
    cur.add_argument("--once", action="store_true", help="run one cycle now and exit")

    dsub = common.group(sub, "datasets", "list, show and export dataset versions")
    common.command(dsub, "list", cmd_datasets_list, parent,
                   help="every dataset version: state, records, rule mix")
    dsh = common.command(dsub, "show", cmd_datasets_show, parent,
                         help="one version (the latest by default)")
    dsh.add_argument("name")
    dsh.add_argument("--version", type=int, default=None)
    dsh.add_argument("--limit", type=int, default=10, help="records to preview (default 10)")
    dex = common.command(dsub, "export", cmd_datasets_export, parent,
                         help="the dataset as of version N, as JSONL or Parquet",
                         description=common.prose(EXPORT))
    dex.add_argument("name")
    dex.add_argument("--version", type=int, required=True)
    dex.add_argument("--format", choices=("jsonl", "parquet"), default=None,
                     help="default: from the --output extension (.jsonl .json: jsonl, "
                          ".parquet: parquet), else jsonl")
    dex.add_argument("--only-added", action="store_true",
                     help="only the records version N added")
    dex.add_argument("--output", metavar="FILE", default=None,
                     help="default: stdout (written whole or not at all; an existing FILE is "
                          "refused without --force, a symbolic link always)")
    dex.add_argument("--force", action="store_true", help="replace an existing --output FILE")


def cmd_curate(args: argparse.Namespace) -> int:
    from worker.app import create_curator
    from worker.curation.curator import CuratorThread

    settings, engine = common.current_store(args)
    setup_logging(settings.log_level, settings.log_format)
    curator = create_curator(settings, engine)
    if args.once:
        results = curator.run_cycle()
        for r in results:
            print(r.line())
        return EXIT_FAILURE if any(r.state in ("pending", "failed") for r in results) \
            else EXIT_OK
    stop = threading.Event()
    StopSignals(stop, shutdown_timeout_s=settings.shutdown_timeout_s).install()
    thread = CuratorThread(curator, settings.curate_interval_s, engine)
    thread.start()
    stop.wait()
    thread.stop()
    return EXIT_OK


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from store import datasets as ds

    _, engine = common.current_store(args)
    with engine.connect() as conn:
        rows = ds.versions(conn)
    if not rows:
        print("no dataset versions yet (run `trace-curator curate --once`)")
        return EXIT_OK
    print(f"{'dataset':<32}{'version':>8}  {'state':<8}{'records':>8}  {'created (UTC)':<20}"
          f"  rules")
    for v in rows:
        mix = ", ".join(f"{k} {n}" for k, n in sorted(v.rule_mix.items()))
        print(f"{v.dataset:<32}{v.version:>8}  {v.state:<8}{v.record_count:>8}  "
              f"{_iso(v.created_ms):<20}  {mix}")
    return EXIT_OK


def _iso(ms: int) -> str:
    from store.report import iso

    return iso(ms)


def _version_of(conn: Any, name: str, version: int | None) -> Any:
    from store import datasets as ds

    rows = ds.versions(conn, name)
    if not rows:
        raise common.CliError(f"no dataset named {name!r} (see `trace-curator datasets list`)",
                       EXIT_FAILURE)
    if version is None:
        return rows[-1]
    for v in rows:
        if v.version == version:
            return v
    raise common.CliError(f"dataset {name!r} has versions {rows[0].version}..{rows[-1].version}, "
                   f"not {version}", EXIT_FAILURE)


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from consumers.redact import redact
    from store import datasets as ds

    _, engine = common.current_store(args)
    with engine.connect() as conn:
        v = _version_of(conn, args.name, args.version)
        added = ds.version_records(conn, args.name, v.version)
        total = sum(x.record_count for x in ds.versions(conn, args.name) if x.version <= v.version)
    print(f"dataset {v.dataset} version {v.version} ({v.state})")
    print(f"  created   {_iso(v.created_ms)}" + (f", confirmed by the sink {_iso(v.committed_ms)}"
                                                   if v.committed_ms else ""))
    print(f"  records   {v.record_count} added, {total} in the dataset as of this version")
    print(f"  digest    {v.digest}")
    print("  rules     " + ", ".join(f"{k} {n}" for k, n in sorted(v.rule_mix.items())))
    if v.last_error:
        print(f"  last error {redact(v.last_error)} (attempts {v.attempts})")
    for rec in added[:args.limit]:
        tags = rec.get("tags", {})
        print(f"  - {tags.get('trace_curator.source_trace_id')} "
              f"[{tags.get('trace_curator.tag')}] inputs={_preview(rec.get('inputs'))}")
    if len(added) > args.limit:
        print(f"  ... {len(added) - args.limit} more (`datasets export`)")
    return EXIT_OK


def _preview(value: Any, width: int = 80) -> str:
    import orjson

    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_datasets_export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from store import datasets as ds
    from worker.cli.output_files import atomic_output
    from worker.curation.sinks import write_records

    fmt = common.output_format(args, EXPORT_SUFFIXES, "jsonl")
    _, engine = common.current_store(args)
    with engine.connect() as conn:
        v = _version_of(conn, args.name, args.version)
        records = ds.version_records(conn, args.name, v.version, cumulative=not args.only_added)
    if args.output:
        with atomic_output(args.output, force=args.force) as tmp:
            write_records(records, tmp, fmt)
    else:
        with tempfile.TemporaryDirectory() as tmp_dir:
            path = Path(tmp_dir) / f"export.{fmt}"
            write_records(records, path, fmt)
            sys.stdout.flush()
            sys.stdout.buffer.write(path.read_bytes())
            sys.stdout.buffer.flush()
    print(f"exported {len(records)} records of {args.name} version {v.version} as {fmt}"
          + (f" to {args.output}" if args.output else ""), file=sys.stderr)
    return EXIT_OK
