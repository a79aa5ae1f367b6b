"""The command line against an operator's mistakes: bad output paths, a mistyped settings prefix,
no Kafka, and demo hints copied into a shell. Each runs the real CLI in a subprocess and asserts a
one-line error with its exit code, no traceback, and nothing half-written or created.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from consumers.embedded_broker import free_port
from store import datasets as ds
from store.engine import make_engine
from worker.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 120, limit_file_bytes: int | None = None,
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("TRACE_CURATOR_", "TRACECURATOR_")) and k != "MLFLOW_TRACKING_URI"}

    def limit() -> None:  # CPython ignores SIGXFSZ: a write past the limit raises EFBIG
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([sys.executable, "-m", "worker", *args], env={**base, **(env or {})},
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if limit_file_bytes is not None else None)  # noqa: PLW1509


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _record(i: int, size: int = 20) -> dict[str, Any]:
    return {"inputs": {"question": f"q{i} " + "x" * size}, "outputs": {"answer": f"a{i}"},
            "expectations": {}, "tags": {"trace_curator.source_trace_id": f"tr-{i}"},
            "source": {"source_type": "TRACE", "source_data": {"trace_id": f"tr-{i}"}}}


def seed_dataset(store_url: str, n: int = 5, size: int = 20) -> None:
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            ds.ensure_dataset(conn, "regressions", "files", 1)
            ds.create_version(conn, "regressions", 1,
                              [(f"h{i:05d}", f"tr-{i}", _record(i, size)) for i in range(n)],
                              "digest", {"error_case": n}, 1)
            ds.mark_done(conn, "regressions", 1, 2)
    finally:
        engine.dispose()


def export(store_url: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return cli("datasets", "export", "regressions", "--version", "1", *args,
               env={"TRACE_CURATOR_STORE_URL": store_url}, **kw)


def report(store_url: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return cli("report", "--since", "24h", *args, env={"TRACE_CURATOR_STORE_URL": store_url},
               **kw)


# --- output files ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "report"])
def test_bad_output_paths_are_one_line_errors(store_url: str, tmp_path: Path,
                                              command: str) -> None:
    seed_dataset(store_url)
    run = export if command == "export" else report
    ext = ".jsonl" if command == "export" else ".html"

    missing = run(store_url, "--output", str(tmp_path / "no" / "such" / f"out{ext}"))
    assert missing.returncode == EXIT_CONFIG
    assert "does not exist" in one_line_error(missing)
    assert not (tmp_path / "no").exists()

    folder = tmp_path / f"folder{ext}"
    folder.mkdir()
    is_dir = run(store_url, "--output", str(folder))
    assert is_dir.returncode == EXIT_CONFIG
    assert "is a directory" in one_line_error(is_dir)

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anyway
            denied = run(store_url, "--output", str(locked / f"out{ext}"))
            assert denied.returncode == EXIT_CONFIG
            assert "permission denied" in one_line_error(denied).lower()
    finally:
        locked.chmod(0o700)

    existing = tmp_path / f"existing{ext}"
    existing.write_text("keep me")
    refused = run(store_url, "--output", str(existing))
    assert refused.returncode == EXIT_CONFIG
    assert "--force" in one_line_error(refused)
    assert existing.read_text() == "keep me"
    forced = run(store_url, "--output", str(existing), "--force")
    assert forced.returncode == EXIT_OK, forced.stderr
    assert existing.read_text() != "keep me"

    target = tmp_path / f"target{ext}"
    target.write_text("not through a link")
    link = tmp_path / f"link{ext}"
    link.symlink_to(target)
    for extra in ((), ("--force",)):
        linked = run(store_url, "--output", str(link), *extra)
        assert linked.returncode == EXIT_CONFIG
        assert "symbolic link" in one_line_error(linked)
        assert target.read_text() == "not through a link"
        assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == []


def test_export_takes_the_format_from_the_extension(store_url: str, tmp_path: Path) -> None:
    seed_dataset(store_url, n=5)
    out = tmp_path / "v1.parquet"
    done = export(store_url, "--output", str(out))
    assert done.returncode == EXIT_OK, done.stderr
    frame = pd.read_parquet(out)  # Parquet, not JSONL in a .parquet file
    assert len(frame) == 5
    lines = tmp_path / "v1.json"
    assert export(store_url, "--output", str(lines)).returncode == EXIT_OK
    assert len(lines.read_text().splitlines()) == 5

    clash = export(store_url, "--format", "jsonl", "--output", str(tmp_path / "v2.parquet"))
    assert clash.returncode == EXIT_CONFIG
    assert ".parquet" in one_line_error(clash)
    assert not (tmp_path / "v2.parquet").exists()


def test_report_takes_the_format_from_the_extension(store_url: str, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    done = report(store_url, "--output", str(page))
    assert done.returncode == EXIT_OK, done.stderr
    assert page.read_text().lstrip().lower().startswith("<!doctype html")
    js = tmp_path / "r.json"
    assert report(store_url, "--output", str(js)).returncode == EXIT_OK
    assert js.read_text().lstrip().startswith("{")
    clash = report(store_url, "--format", "csv", "--output", str(tmp_path / "r2.html"))
    assert clash.returncode == EXIT_CONFIG
    assert ".html" in one_line_error(clash)
    assert not (tmp_path / "r2.html").exists()


def test_a_failed_write_leaves_no_partial_file(store_url: str, tmp_path: Path) -> None:
    seed_dataset(store_url, n=200, size=2000)  # about 400 kB of JSONL
    out = tmp_path / "out" / "v1.jsonl"
    out.parent.mkdir()
    failed = export(store_url, "--output", str(out), limit_file_bytes=64 * 1024)
    assert failed.returncode != EXIT_OK
    one_line_error(failed)
    assert list(out.parent.iterdir()) == []  # no v1.jsonl, no temp file

    out.write_text("the previous export")
    forced = export(store_url, "--output", str(out), "--force", limit_file_bytes=64 * 1024)
    assert forced.returncode != EXIT_OK
    one_line_error(forced)
    assert out.read_text() == "the previous export"
    assert list(out.parent.iterdir()) == [out]


# --- a mistyped settings prefix creates nothing -------------------------------------------------


@pytest.mark.parametrize("argv", [
    ("check",), ("report", "--since", "24h"), ("datasets", "list"),
    ("datasets", "show", "regressions"),
    ("datasets", "export", "regressions", "--version", "1"),
    ("rules", "explain", "tr-1"),
])
def test_a_mistyped_prefix_creates_no_store(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """Without any store setting, a read-only command names the default store it looked for
    and how to get one, and creates nothing."""
    proc = cli(*argv, cwd=tmp_path, env={})
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    line = one_line_error(proc)
    assert "sqlite:///trace_curator.db" in line
    assert "TRACE_CURATOR_STORE_URL" in line
    assert "db upgrade" in line
    assert list(tmp_path.iterdir()) == []  # no trace_curator.db (nor -wal, -shm)


@pytest.mark.parametrize("name", ["TRACECURATOR_STORE_URL", "TRACE_CURATORSTORE_URL",
                                  "trace-curator_store_url", "TRACE-CURATOR_STORE_URL"])
def test_a_mistyped_prefix_is_named_with_the_right_spelling(tmp_path: Path, name: str) -> None:
    proc = cli("report", "--since", "24h", cwd=tmp_path,
               env={name: "postgresql://postgres:secret@127.0.0.1/test"})
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    line = one_line_error(proc)
    assert name in line and "TRACE_CURATOR_STORE_URL" in line
    assert "secret" not in proc.stderr  # the value is not echoed
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_lower_case_setting_is_refused(tmp_path: Path) -> None:
    """Settings names are case-insensitive (``trace_curator_store_url`` works), so a lower-case
    name that is no setting is a typo too."""
    proc = cli("report", "--since", "24h", cwd=tmp_path,
               env={"trace_curator_stor_url": "sqlite:///x.db"})
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "trace_curator_stor_url" in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


def test_rules_test_on_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: e\n    filter: \"attributes.status = 'ERROR'\"\n"
                     "    tag: {key: eval_candidate, value: error_case}\n")
    store = tmp_path / "nested" / "store.db"
    proc = cli("rules", "test", str(rules), cwd=tmp_path,
               env={"TRACE_CURATOR_STORE_URL": f"sqlite:///{store}"})
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    assert f"sqlite:///{store}" in one_line_error(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rules.yaml"]


def test_unreachable_store_errors_name_the_masked_url() -> None:
    url = f"postgresql://postgres:pw@127.0.0.1:{free_port()}/x"
    proc = cli("datasets", "list", env={"TRACE_CURATOR_STORE_URL": url,
                                        "TRACE_CURATOR_DB_CONNECT_TIMEOUT_S": "2"})
    assert proc.returncode == EXIT_UNAVAILABLE
    line = one_line_error(proc)
    assert "postgresql://postgres:***@127.0.0.1" in line
    assert "pw@" not in proc.stderr


# --- no Kafka --------------------------------------------------------------------------------


def test_run_without_kafka_says_what_it_waits_for_and_gives_up(store_url: str) -> None:
    servers = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = cli("run", env={"TRACE_CURATOR_STORE_URL": store_url, "TRACE_CURATOR_HTTP_PORT": "0",
                           "TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS": servers}, timeout=120)
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr[-2000:]
    assert re.search(rf"waiting for Kafka .*bootstrap_servers={re.escape(servers)}", proc.stderr)
    line = one_line_error(proc)
    assert servers in line
    assert "TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS" in line
    assert "TRACE_CURATOR_SOURCE=mlflow" in line


# --- demo hints run as printed ---------------------------------------------------------------


def _outcome(folder: Path, store_url: str) -> Any:
    from worker.demo.summary import Outcome
    from worker.demo.traffic import TrafficStats

    return Outcome(store_url, folder, "kafka", "1", TrafficStats(), 0, None, 1.0, False)


def test_explore_lines_run_as_printed(tmp_path: Path) -> None:
    from worker.demo.summary import explore_lines

    store_url = f"sqlite:///{tmp_path}/trace_curator.db"
    assert cli("db", "upgrade", env={"TRACE_CURATOR_STORE_URL": store_url}).returncode == 0
    script = ROOT / ".venv" / "bin" / "trace-curator"
    if not script.exists():
        pytest.skip("no .venv/bin/trace-curator console script")
    # Not on PATH (no venv activated), run from the project folder as the README says.
    lines = explore_lines(_outcome(tmp_path, store_url), argv0=str(script),
                          executable=str(ROOT / ".venv" / "bin" / "python"), cwd=ROOT,
                          search_path="/usr/bin:/bin")
    text = "\n".join(lines)
    assert ".venv/bin/trace-curator report --since 24h" in text
    assert not re.search(r"(^|\s)trace-curator ", text)  # nothing that needs an activated venv
    commands = [line.strip() for line in lines
                if line.strip().startswith(("export ", ".venv/bin/trace-curator report"))]
    assert commands[0].startswith("export TRACE_CURATOR_STORE_URL=")
    shell = " && ".join(c.split("  #")[0] for c in commands[:2])
    done = subprocess.run(["/bin/sh", "-c", shell], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "trace-curator report" in done.stdout

    on_path = explore_lines(_outcome(tmp_path, store_url), argv0=str(script),
                            executable=sys.executable, cwd=tmp_path,
                            search_path=str(script.parent))
    assert any(line.strip().startswith("trace-curator report") for line in on_path)
    module = explore_lines(_outcome(tmp_path, store_url),
                           argv0=str(ROOT / "worker" / "__main__.py"),
                           executable=str(ROOT / ".venv" / "bin" / "python"), cwd=ROOT,
                           search_path="/usr/bin:/bin")
    assert any(".venv/bin/python -m worker report" in line for line in module)


@pytest.mark.slow
def test_the_demo_mlflow_snippet_finds_the_tagged_traces(tmp_path: Path) -> None:
    """Run a short demo, then the printed Python snippet exactly as printed: it must return the
    traces tagged error_case (without the experiment it silently returns none)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACE_CURATOR_") and k != "MLFLOW_TRACKING_URI"}
    demo = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--source", "mlflow", "--history", "40",
         "--duration", "2", "--dir", str(tmp_path / "demo")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == EXIT_OK, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    m = re.search(r"eval_candidate=error_case\s+(\d+)", out)
    assert m and int(m.group(1)) > 0, out
    lines = out[out.index("Explore"):].splitlines()
    start = next(i for i, line in enumerate(lines) if "import mlflow" in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    snippet = []
    for line in lines[start:]:
        if not line.startswith(" " * indent) or not line.strip():
            break
        snippet.append(line[indent:])
    code = "\n".join(snippet)
    assert "set_experiment" in code and "tags.eval_candidate = 'error_case'" in code
    python = re.search(r"\(run it with (\S+)\)", out)
    assert python, out
    found = subprocess.run([*shlex.split(python.group(1)), "-c", code], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=180)
    assert found.returncode == 0, found.stderr[-3000:]
    count = re.search(r"(\d+) traces tagged error_case", found.stdout)
    assert count and int(count.group(1)) == int(m.group(1)), found.stdout
