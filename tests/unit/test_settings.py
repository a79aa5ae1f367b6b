"""Settings: one frozen object; unknown keys and bad values fail loudly; secrets are masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from consumers.errors import ConfigError
from worker.settings import Settings, describe_settings, load_settings


def test_defaults_are_the_embedded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in __import__("os").environ if k.startswith("TRACE_CURATOR_")]:
        monkeypatch.delenv(k)
    s = load_settings()
    assert s.store_url_plain == "sqlite:///trace_curator.db"
    assert (s.trace_topic, s.assessment_topic, s.source) == (
        "mlflow-traces", "mlflow-assessments", "kafka")


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_max_records: 7\ngroup_id: from-yaml\n")
    monkeypatch.setenv("TRACE_CURATOR_GROUP_ID", "from-env")
    s = load_settings(cfg)
    assert (s.batch_max_records, s.group_id) == (7, "from-env")


def test_a_typo_in_the_environment_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_CURATOR_STORE_ULR", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="TRACE_CURATOR_STORE_ULR"):
        load_settings()


@pytest.mark.parametrize(("text", "message"), [
    ("bogus: 1\n", "bogus: Extra inputs are not permitted"),
    ("batch_max_records: 0\n", "batch_max_records: Input should be greater than or equal to 1"),
    ("store_url: mysql://x\n", "unsupported scheme 'mysql'"),
    ("- a list\n", "must hold a mapping"),
    ("a: [\n", "c.yaml: line 2: invalid YAML"),
])
def test_bad_yaml_settings_fail_with_the_field(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_settings(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", ["/dev/zero", "."])
def test_a_config_path_that_is_no_regular_file_is_named_so(path: str) -> None:
    """A device never ends and a folder has no text: both are refused before any read."""
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_settings(path)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.group_id = "x"  # type: ignore[misc]


def test_secrets_are_masked() -> None:
    s = Settings(store_url="postgresql://u:hunter2@db:5432/x", kafka_sasl_password="s3cret")
    masked = str(s.masked())
    assert "hunter2" not in masked and "s3cret" not in masked
    assert "postgresql://u:***@db:5432/x" in masked
    assert "hunter2" not in repr(s)


def test_every_setting_is_described() -> None:
    text = describe_settings()
    for name, field in Settings.model_fields.items():
        assert f"TRACE_CURATOR_{name.upper()}" in text
        assert field.description, name


def test_buckets_must_outlive_raw_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_CURATOR_RETENTION_RAW_DAYS", "60")
    with pytest.raises(ConfigError, match="retention_raw_days <= retention_minute_days"):
        load_settings()
    monkeypatch.setenv("TRACE_CURATOR_RETENTION_MINUTE_DAYS", "60")
    assert load_settings().retention_raw_days == 60


def test_overrides_beat_environment_beat_yaml(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("group_id: from-yaml\ntrace_topic: yaml-topic\nbatch_max_records: 9\n")
    monkeypatch.setenv("TRACE_CURATOR_GROUP_ID", "from-env")
    monkeypatch.setenv("TRACE_CURATOR_TRACE_TOPIC", "env-topic")
    s = load_settings(cfg, group_id="from-init")
    assert (s.group_id, s.trace_topic, s.batch_max_records) == ("from-init", "env-topic", 9)


@pytest.mark.parametrize(("writeback", "uri", "queued"), [
    ("auto", None, False), ("auto", "http://mlflow:5000", True), ("off", "http://mlflow:5000",
                                                                  False), ("on", None, True)])
def test_the_worker_queues_tags_for_mlflow_only_when_write_back_is_on(
        monkeypatch: pytest.MonkeyPatch, writeback: str, uri: str | None, queued: bool) -> None:
    from sqlalchemy import create_engine

    from worker.app import sql_writer

    for name in ("MLFLOW_TRACKING_URI", "TRACE_CURATOR_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(tag_writeback=writeback, mlflow_tracking_uri=uri)
    assert sql_writer(settings, create_engine("sqlite://"), None).outbox is queued


@pytest.mark.parametrize("topics", [
    {"otlp_topic": "mlflow-traces"},
    {"otlp_topic": "mlflow-assessments"},
    {"trace_topic": "same", "assessment_topic": "same", "otlp_topic": ""},
])
def test_each_topic_is_named_once(topics: dict[str, str]) -> None:
    """A topic's records are decoded by what it holds: one topic cannot hold two kinds."""
    with pytest.raises(ValidationError, match="must differ"):
        Settings(**topics)
    assert Settings(otlp_topic="").otlp_topic == ""  # no OpenTelemetry topic at all


def test_mlflow_assessments_beside_kafka_need_a_tracking_uri() -> None:
    with pytest.raises(ValidationError, match="mlflow_assessments=on rescans an MLflow server"):
        Settings(mlflow_assessments="on")
    s = Settings(mlflow_assessments="on", mlflow_tracking_uri="http://mlflow:5000")
    assert (s.source, s.mlflow_assessments) == ("kafka", "on")
