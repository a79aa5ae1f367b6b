"""The command line's layout: every command and option as before, ``--config`` before or after the
command from one parent parser, one mapping from errors to exit codes, no MLflow import for
``--help`` or ``check``, and a ``run`` start-up error that names the configured source."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consumers.embedded_broker import free_port
from consumers.errors import TransientError
from worker.cli.main import build_parser, main
from worker.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_SCHEMA, EXIT_UNAVAILABLE

ROOT = Path(__file__).resolve().parents[2]

# Every command of the parser before the split, with its options and positionals (not -h).
OPTIONS: dict[str, list[str]] = {
    "run": ["--config", "--exit-when-idle", "--max-records"],
    "backfill": ["--config", "--experiment", "--since", "--until"],
    "db upgrade": ["--config"],
    "check": ["--config"],
    "rules explain": ["--config", "trace_id"],
    "rules test": ["--config", "--examples", "--since", "--until", "rules_file"],
    "report": ["--by", "--config", "--experiment", "--force", "--format", "--output", "--since",
               "--until"],
    "metrics rebuild": ["--config"],
    "curate": ["--config", "--once"],
    "datasets list": ["--config"],
    "datasets show": ["--config", "--limit", "--version", "name"],
    "datasets export": ["--config", "--force", "--format", "--only-added", "--output",
                        "--version", "name"],
    "demo": ["--dir", "--duration", "--history", "--rate", "--seed", "--source"],
}
# What each command needs besides --config to parse.
REQUIRED: dict[str, list[str]] = {
    "backfill": ["--since", "7d"], "rules explain": ["t-1"], "rules test": ["rules.yaml"],
    "datasets show": ["ds"], "datasets export": ["ds", "--version", "1"],
}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> dict[str, argparse.ArgumentParser]:
    """The leaf commands ("datasets show"), in the parser's order."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {" ".join(path): parser}
    out: dict[str, argparse.ArgumentParser] = {}
    for name, sub in subs[0].choices.items():
        out.update(commands(sub, (*path, name)))
    return out


def options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(s for a in parser._actions for s in (a.option_strings or [a.dest])
                  if s not in ("-h", "--help"))


def test_every_command_keeps_its_options() -> None:
    found = {name: options(p) for name, p in commands(build_parser()).items()}
    assert found == OPTIONS
    assert list(found) == list(OPTIONS)  # the order of `trace-curator --help`


@pytest.mark.parametrize("command", [c for c in OPTIONS if c != "demo"])
def test_config_before_or_after_the_command(command: str) -> None:
    words = [*command.split(), *REQUIRED.get(command, [])]
    parser = build_parser()
    assert parser.parse_args(["--config", "top.yaml", *words]).config == "top.yaml"
    assert parser.parse_args([*words, "--config", "sub.yaml"]).config == "sub.yaml"
    both = ["--config", "top.yaml", *words, "--config", "sub.yaml"]
    assert parser.parse_args(both).config == "sub.yaml"
    assert parser.parse_args(words).config is None


def test_one_parent_parser_carries_config() -> None:
    """The subcommands share one ``--config`` action (argparse ``parents``), not copies."""
    found = {name: [a for a in p._actions if "--config" in a.option_strings]
             for name, p in commands(build_parser()).items() if name != "demo"}
    actions = {id(a) for config in found.values() for a in config}
    assert all(len(config) == 1 for config in found.values())
    assert len(actions) == 1


def _python(code: str, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_CURATOR_")}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=120)


def test_building_the_parser_imports_no_mlflow() -> None:
    out = _python("import sys, worker.cli\n"
                  "from worker.cli.main import build_parser\n"
                  "build_parser()\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


MAIN_REPORTING_MLFLOW = """
import sys
from worker.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print('mlflow imported:', 'mlflow' in sys.modules)
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["report", "--help"],
                                  ["check"]], ids=" ".join)
def test_help_and_check_import_no_mlflow(args: list[str], tmp_path: Path) -> None:
    env = {"TRACE_CURATOR_STORE_URL": f"sqlite:///{tmp_path}/store.db"}
    assert _python(MAIN_REPORTING_MLFLOW, "db", "upgrade", env=env).returncode == EXIT_OK
    out = _python(MAIN_REPORTING_MLFLOW, *args, env=env)
    assert out.returncode == EXIT_OK, out.stderr
    assert "mlflow imported: False" in out.stdout


def test_config_error_schema_and_cli_errors_have_their_exit_codes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    monkeypatch.setenv("TRACE_CURATOR_STOR_URL", "sqlite:///x.db")  # a typo: ConfigError
    assert main(["check"]) == EXIT_CONFIG
    assert capsys.readouterr().err.startswith("trace-curator: error: ")
    monkeypatch.delenv("TRACE_CURATOR_STOR_URL")

    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_setting: 1\n")
    assert main(["check", "--config", str(bad)]) == EXIT_CONFIG
    assert "no_such_setting" in capsys.readouterr().err

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # a store without a schema: SchemaOutOfDateError
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", f"sqlite:///{empty}")
    assert main(["check"]) == EXIT_SCHEMA
    assert "Run `trace-curator db upgrade`" in capsys.readouterr().err

    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", f"sqlite:///{tmp_path}/missing.db")
    assert main(["check"]) == EXIT_UNAVAILABLE  # a CliError with its own code
    assert "does not exist" in capsys.readouterr().err


def test_run_with_the_mlflow_source_names_the_mlflow_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """A start-up TransientError under source=mlflow names MLflow and its setting, not Kafka.

    The MLflow source itself connects on the first poll (and retries there), so the failure is
    injected where the Kafka source raises it: in ``create_worker``."""
    import worker.app

    uri = f"http://user:s3cret@127.0.0.1:{free_port()}"
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", f"sqlite:///{tmp_path}/store.db")
    monkeypatch.setenv("TRACE_CURATOR_SOURCE", "mlflow")
    monkeypatch.setenv("TRACE_CURATOR_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TRACE_CURATOR_HTTP_PORT", "0")
    assert main(["db", "upgrade"]) == EXIT_OK

    def unreachable(*_args: Any, **_kwargs: Any) -> Any:
        raise TransientError(f"mlflow polling: ConnectionError: {uri} refused")

    monkeypatch.setattr(worker.app, "create_worker", unreachable)
    assert main(["run", "--exit-when-idle", "1"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "Kafka" not in err and "KAFKA" not in err
    assert "MLflow tracking server" in err
    assert "TRACE_CURATOR_MLFLOW_TRACKING_URI" in err
    assert "user:***@127.0.0.1" in err and "s3cret" not in err
