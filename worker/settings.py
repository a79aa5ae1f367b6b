"""One frozen settings object, read once at start-up and passed down.

Sources, highest priority first: explicit overrides (CLI flags), ``TRACE_CURATOR_*`` environment
variables, a YAML file (``--config FILE`` or ``TRACE_CURATOR_CONFIG``), then the defaults below.
The YAML file is read by the guarded loader (``worker.yaml_files``: no anchors or aliases, at
most 1 MiB, bounded nesting); validation messages quote at most a few dozen characters.
Unknown keys fail loudly, in the YAML file and in the environment alike: a typo such as
``TRACE_CURATOR_STORE_ULR`` is a ``ConfigError``, never silently ignored. This is the only module
that reads ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from consumers.errors import ConfigError
from consumers.redact import redact
from worker.yaml_files import cut, load_yaml_file

ENV_PREFIX = "TRACE_CURATOR_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# Secrets can come from files (Docker/Kubernetes secrets): TRACE_CURATOR_<NAME>_FILE holds the
# path of a file whose content (stripped) is the value.
SECRET_FILE_FIELDS = ("store_url", "kafka_sasl_password", "mlflow_tracking_uri")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True,
                                      populate_by_name=True)

    # Store
    store_url: SecretStr = Field(SecretStr("sqlite:///trace_curator.db"),
                                 description="SQLAlchemy URL of the store (SQLite or PostgreSQL).")
    db_pool_size: int = Field(5, ge=1, description="PostgreSQL connection pool size.")
    db_connect_timeout_s: int = Field(10, ge=1, description="Database connect timeout.")
    db_retry_max_wait_s: float = Field(30.0, gt=0,
                                       description="Longest backoff between store retries.")

    # Source
    source: Literal["kafka", "mlflow"] = Field("kafka", description="Where events come from.")
    kafka_bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers.")
    trace_topic: str = Field("mlflow-traces", description="Topic of trace events.")
    assessment_topic: str = Field("mlflow-assessments", description="Topic of assessment events.")
    otlp_topic: str = Field(
        "otlp_spans", description="Topic of OpenTelemetry spans, as the OpenTelemetry "
                                  "Collector's Kafka exporter writes them; empty: none.")
    otlp_encoding: Literal["otlp_proto", "otlp_json", "jaeger_proto", "jaeger_json",
                           "zipkin_proto", "zipkin_json"] = Field(
        "otlp_proto", description="Encoding of the OTLP topic's records, as set in the "
                                  "Collector's exporter; Jaeger and Zipkin records are "
                                  "dead-lettered.")
    otlp_quiet_s: float = Field(
        2.0, ge=0, description="A trace whose root span came is assembled once no span came "
                               "for this long.")
    otlp_max_wait_s: float = Field(
        60.0, gt=0, description="A trace whose root never came is assembled this long after "
                                "its first span (its topmost span stands in; marked).")
    otlp_max_open_traces: int = Field(
        100_000, ge=1, description="Traces waiting for spans; past it the oldest are "
                                   "assembled early (marked, counted in /metrics).")
    otlp_max_buffer_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Bytes of waiting spans; past it the oldest "
                                                "traces are assembled early.")
    otlp_max_trace_spans: int = Field(
        10_000, ge=1, description="Spans kept of one trace; its later spans are dropped "
                                  "(counted in /metrics, the trace marked).")
    otlp_max_trace_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Bytes of spans kept of one trace; its later "
                                               "spans are dropped (as above).")
    otlp_span_cache_bytes: int = Field(
        16 * 1024 * 1024, ge=0, description="Bytes of span text kept in memory, so that a "
                                            "trace whose spans all came to this worker is "
                                            "assembled without reading them back; 0: off.")
    otlp_keep_s: float = Field(
        3600.0, ge=0, description="Spans of an assembled trace are kept this long, so that a "
                                  "late span amends the trace.")
    group_id: str = Field("trace-curator", description="Kafka consumer group.")
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_SSL, ...")
    kafka_sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256, ...")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_session_timeout_ms: int = Field(10_000, ge=1000,
                                          description="Consumer group session timeout.")
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100,
                                             description="Consumer group heartbeat interval.")
    kafka_max_poll_interval_ms: int = Field(300_000, ge=1000,
                                            description="Longest pause between polls.")
    kafka_reconnect_backoff_max_ms: int = Field(5_000, ge=50,
                                                description="Longest broker reconnect backoff.")
    # MLflow polling (source=mlflow; the server is mlflow_tracking_uri)
    mlflow_experiment_ids: str = Field(
        "", description="Comma-separated experiment ids to poll; empty: every active one.")
    mlflow_poll_interval_s: float = Field(5.0, gt=0,
                                          description="Pause between polls of new traces.")
    mlflow_poll_overlap_s: float = Field(
        300.0, ge=0, description="Each poll re-reads traces started this long before the "
                                 "newest seen: traces land in MLflow when they end.")
    mlflow_start_lookback_s: float = Field(
        3600.0, ge=0, description="On the first start, read traces started this long ago "
                                  "(older history: `trace-curator backfill`).")
    mlflow_assessment_window_s: float = Field(
        86_400.0, ge=0, description="Traces started this recently are rescanned for new or "
                                    "changed assessments (MLflow cannot list them by time).")
    mlflow_assessment_rescan_interval_s: float = Field(
        120.0, gt=0, description="Pause between assessment rescans.")
    mlflow_assessments: Literal["off", "on"] = Field(
        "off", description="With source=kafka: also rescan the MLflow server (the tracking "
                           "URI) for the assessments mlflow.log_feedback records, so feedback "
                           "re-decides the rules on traces that came from Kafka.")
    mlflow_page_size: int = Field(500, ge=1, le=500,
                                  description="Trace infos per search_traces page (MLflow: 500).")

    # Loop
    batch_max_records: int = Field(2_000, ge=1, description="Records per batch (one transaction).")
    poll_timeout_ms: int = Field(500, ge=1, description="How long one poll waits for records.")
    max_event_bytes: int = Field(4 * 1024 * 1024, ge=1024,
                                 description="Larger records are dead-lettered.")
    dlq_max_payload_bytes: int = Field(1024 * 1024, ge=0,
                                       description="Dead-letter payloads are cut to this size.")
    shutdown_timeout_s: float = Field(30.0, gt=0,
                                      description="Drain-and-checkpoint budget after SIGTERM.")

    # Rules and write-back to MLflow
    rules_enabled: bool = Field(True, description="Evaluate rules and tag traces at ingest.")
    rules_file: Path | None = Field(None, description="Rules YAML; built-in defaults if unset.")
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices(ENV_PREFIX + "MLFLOW_TRACKING_URI",
                                            "MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
        description="MLflow server for tag write-back (also read from MLFLOW_TRACKING_URI).")
    tag_writeback: Literal["auto", "on", "off"] = Field(
        "auto", description="Write rule tags to MLflow; auto: when a tracking URI is set.")
    tag_writer_concurrency: int = Field(4, ge=1, le=64,
                                        description="Concurrent set_trace_tag calls.")
    tag_writer_interval_s: float = Field(0.5, gt=0, description="Pause between idle rounds.")
    mlflow_request_timeout_s: int = Field(10, ge=1, description="Timeout of one MLflow call.")

    # Metrics and retention
    metrics_enabled: bool = Field(True, description="Keep the rolling metric buckets at ingest.")
    metrics_dimension_tag: str = Field(
        "environment", min_length=1,
        description="Tag (or metadata key) whose value keys the buckets, besides experiment "
                    "and trace name.")
    retention_raw_days: float = Field(30.0, gt=0,
                                      description="Raw trace rows are pruned after this.")
    retention_minute_days: float = Field(30.0, gt=0,
                                         description="Minute buckets are pruned after this.")
    retention_hour_days: float = Field(730.0, gt=0,
                                       description="Hour buckets are pruned after this.")
    retention_interval_s: float = Field(300.0, gt=0,
                                        description="Pause between pruning steps.")
    retention_max_rows: int = Field(5_000, ge=1,
                                    description="Rows of each kind one pruning step deletes.")

    # Curation into versioned evaluation datasets
    datasets_file: Path | None = Field(
        None, description="Dataset specs YAML; unset: one dataset 'trace_curator_candidates' "
                          "in MLflow with every tagged candidate.")
    curation: Literal["auto", "on", "off"] = Field(
        "auto", description="Curate datasets in the worker; auto: when a datasets file or an "
                            "MLflow tracking URI is set.")
    curate_interval_s: float = Field(300.0, gt=0, description="Pause between curation cycles.")

    # HTTP and logs
    http_host: str = Field("127.0.0.1", description="Bind address of the HTTP server.")
    http_port: int = Field(9464, ge=0, le=65535,
                           description="Port of /metrics, /healthz, /readyz; 0 turns it off.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO",
                                                                   description="Log level.")
    log_format: Literal["kv", "json"] = Field("kv", description="key=value lines or JSON lines.")

    @model_validator(mode="after")
    def _mlflow_source(self) -> Settings:
        if self.source == "mlflow" and not self.mlflow_tracking_uri:
            raise ValueError("source=mlflow polls an MLflow server: set "
                             "TRACE_CURATOR_MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_URI)")
        return self

    @model_validator(mode="after")
    def _mlflow_assessments(self) -> Settings:
        if self.mlflow_assessments == "on" and not self.mlflow_tracking_uri:
            raise ValueError("mlflow_assessments=on rescans an MLflow server: set "
                             "TRACE_CURATOR_MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_URI)")
        return self

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        named = [t for t in (self.trace_topic, self.assessment_topic, self.otlp_topic) if t]
        if len(set(named)) != len(named):
            raise ValueError("trace_topic, assessment_topic and otlp_topic must differ (a "
                             "topic's records are decoded by what it holds), got "
                             f"{self.trace_topic!r} / {self.assessment_topic!r} / "
                             f"{self.otlp_topic!r}")
        return self

    @model_validator(mode="after")
    def _retention_order(self) -> Settings:
        # A late update to a trace must find its buckets: they outlive its raw row.
        if not self.retention_raw_days <= self.retention_minute_days <= self.retention_hour_days:
            raise ValueError(
                "retention must satisfy retention_raw_days <= retention_minute_days <= "
                f"retention_hour_days, got {self.retention_raw_days:g} / "
                f"{self.retention_minute_days:g} / {self.retention_hour_days:g}")
        return self

    @field_validator("store_url")
    @classmethod
    def _known_backend(cls, v: SecretStr) -> SecretStr:
        scheme = v.get_secret_value().split(":", 1)[0]
        if not (scheme.startswith("sqlite") or scheme.startswith("postgres")):
            raise ValueError(f"unsupported scheme {scheme!r}: use sqlite:/// or postgresql://")
        return v

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)``: keyword arguments, then the environment; no .env file, no secrets
        folder. ``load_settings`` passes the same two and the config file explicitly."""
        return init_settings, env_settings

    def masked(self) -> dict[str, Any]:
        """The effective settings for the start-up log: secrets masked, passwords in URLs hidden."""
        out: dict[str, Any] = {}
        for name, value in self:
            if name == "store_url":
                out[name] = redact(self.store_url_plain)
            elif name == "mlflow_tracking_uri" and value:
                out[name] = redact(str(value))
            elif isinstance(value, SecretStr):
                out[name] = "**********"
            else:
                out[name] = value
        return out

    @property
    def mlflow_experiments(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in self.mlflow_experiment_ids.split(",") if e.strip())

    @property
    def writeback_enabled(self) -> bool:
        return self.tag_writeback == "on" or (
            self.tag_writeback == "auto" and bool(self.mlflow_tracking_uri))

    @property
    def curation_enabled(self) -> bool:
        return self.curation == "on" or (
            self.curation == "auto" and (self.datasets_file is not None
                                         or bool(self.mlflow_tracking_uri)))

    @property
    def store_url_plain(self) -> str:
        return self.store_url.get_secret_value()


class YamlFileSettingsSource(InitSettingsSource):
    """The settings of the ``--config`` YAML file, already read by ``load_settings`` with the
    guarded loader: a mapping of setting: value, unknown keys refused like any other source."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls, data)


def _build(overrides: dict[str, Any], file_data: dict[str, Any] | None) -> Settings:
    """A Settings from its sources, passed explicitly (pydantic-settings' ``_build_sources``),
    highest priority first: ``overrides``, the environment, the config file's mapping."""
    sources: tuple[PydanticBaseSettingsSource, ...] = (
        InitSettingsSource(Settings, init_kwargs=overrides), EnvSettingsSource(Settings))
    if file_data is not None:
        sources += (YamlFileSettingsSource(Settings, file_data),)
    # A documented BaseSettings.__init__ argument; mypy sees only the fields' signature.
    return Settings(_build_sources=(sources, overrides))  # type: ignore[call-arg]


def _secret_files(env: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Values of TRACE_CURATOR_<NAME>_FILE secrets, unless given otherwise."""
    out: dict[str, Any] = {}
    for name in SECRET_FILE_FIELDS:
        path = env.get(f"{ENV_PREFIX}{name.upper()}_FILE")
        if not path or name in overrides:
            continue
        if env.get(ENV_PREFIX + name.upper()):
            raise ConfigError(f"set {ENV_PREFIX}{name.upper()} or {ENV_PREFIX}{name.upper()}"
                              "_FILE, not both")
        try:
            out[name] = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}_FILE: cannot read {path}: "
                              f"{exc.strerror}") from None
    return out


def _prefix_fix(name: str) -> str | None:
    """``TRACECURATOR_STORE_URL``, ``TRACE-CURATOR_X``: the name as it was meant, for a variable
    whose letters start like the prefix's but whose spelling of it is not ``TRACE_CURATOR_``."""
    upper = name.upper()
    if upper.startswith(ENV_PREFIX):
        return None
    want = ENV_PREFIX.replace("_", "")
    i = matched = 0
    while i < len(upper) and matched < len(want):
        if upper[i] == want[matched]:
            matched += 1
        elif upper[i].isalnum():
            return None
        i += 1
    rest = upper[i:].lstrip("_-. ")
    return ENV_PREFIX + rest if matched == len(want) and rest else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings once. Raises ``ConfigError`` with every problem listed."""
    env = os.environ
    path = config_file or env.get(CONFIG_ENV)
    known = ({ENV_PREFIX + f.upper() for f in Settings.model_fields} | {CONFIG_ENV}
             | {f"{ENV_PREFIX}{n.upper()}_FILE" for n in SECRET_FILE_FIELDS})
    # Names are read case-insensitively, so a typo is checked the same way.
    typos = sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if typos:
        raise ConfigError(f"unknown setting(s) in the environment: {', '.join(typos)}. "
                          "Known names are listed by `trace-curator run --help`.")
    misspelt = {k: fix for k in sorted(env) if (fix := _prefix_fix(k)) is not None}
    if misspelt:
        raise ConfigError("mistyped prefix in the environment: " + "; ".join(
            f"{k} is not read (did you mean {fix}?)" for k, fix in misspelt.items()))
    file_data = _config_file(Path(path)) if path else None
    overrides = {**_secret_files(env, overrides), **overrides}
    try:
        return _build(overrides, file_data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{cut('.'.join(str(x) for x in e['loc']), 80) or 'settings'}: {cut(e['msg'], 200)}"
            for e in exc.errors()[:10])
        raise ConfigError(f"invalid settings: {problems}") from None


def _config_file(p: Path) -> dict[str, Any]:
    """The mapping of the ``--config`` file, read by the guarded loader."""
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file")
    data = load_yaml_file(p, f"config file {p}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of setting: value")
    return {str(k): v for k, v in data.items()}


def describe_settings() -> str:
    """One line per setting, for ``--help``: env name, default, description."""
    lines = []
    for name, f in Settings.model_fields.items():
        default = f.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        lines.append(f"  {ENV_PREFIX}{name.upper():<32} {f.description} (default: {default})")
    return "\n".join(lines)
