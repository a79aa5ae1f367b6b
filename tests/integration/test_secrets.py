"""No secret reaches a log line or command output: the store password (given through a secret
file), the SASL password and MLflow credentials in the tracking URI, with key=value and JSON
logs, from ``run``, ``check`` and ``report``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import settings_env

pytestmark = pytest.mark.integration

SECRETS = ("pg-s3cret-pw", "sasl-s3cret-pw", "mlflow-s3cret-pw")


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_no_secret_in_logs_or_output(settings_factory: Any, store_url: str, tmp_path: Path,
                                     log_format: str) -> None:
    settings = settings_factory(log_format=log_format, tag_writeback="off")
    env = settings_env(settings)
    # PostgreSQL here trusts local connections, so any password works: it only has to be hidden.
    secret_file = tmp_path / "store_url"
    secret_file.write_text(store_url.replace("postgres@", f"postgres:{SECRETS[0]}@") + "\n")
    del env["TRACE_CURATOR_STORE_URL"]
    env.update(TRACE_CURATOR_STORE_URL_FILE=str(secret_file),
               TRACE_CURATOR_KAFKA_SASL_PASSWORD=SECRETS[1],
               TRACE_CURATOR_MLFLOW_TRACKING_URI=f"http://bot:{SECRETS[2]}@127.0.0.1:1")
    outputs = []
    for args in (["run", "--exit-when-idle", "1"], ["check"],
                 ["report", "--since", "1h", "--format", "json"], ["report", "--since", "1h"]):
        done = subprocess.run([sys.executable, "-m", "worker", *args], env=env,
                              capture_output=True, timeout=120)
        text = done.stdout.decode() + done.stderr.decode()
        assert done.returncode == 0, text[-2000:]
        outputs.append(text)
    everything = "\n".join(outputs)
    assert "starting settings=" in outputs[0]  # the effective settings are logged ...
    assert "postgres:***@" in everything and "bot:***@" in everything  # ... masked
    for secret in SECRETS:
        assert secret not in everything


def test_a_secret_file_and_its_variable_together_are_refused(tmp_path: Path,
                                                             monkeypatch: Any) -> None:
    from consumers.errors import ConfigError
    from worker.settings import load_settings

    f = tmp_path / "url"
    f.write_text("sqlite:///x.db")
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL_FILE", str(f))
    assert load_settings().store_url_plain == "sqlite:///x.db"
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", "sqlite:///y.db")
    with pytest.raises(ConfigError, match="not both"):
        load_settings()
    monkeypatch.delenv("TRACE_CURATOR_STORE_URL")
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings()
