"""docker-compose.yml, .env.example, the Dockerfile, .dockerignore and the OpenTelemetry
Collector's config, checked as data.

No Docker engine runs in CI, so these tests parse the files and check what the stack relies on:
the services and their healthchecks, start-up conditions, KRaft, the topics kafka-init creates,
the MLflow server options, that every ``TRACE_CURATOR_*`` name is a real setting, that passwords
come from .env, the image's stages, user, entry point and healthcheck, and that the Collector
receives OTLP and writes it where, and as, the workers read it. Each check is a function that
returns a list of problems; the mutation tests at the end prove each one can fail.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from consumers.errors import ConfigError
from consumers.kafka_source import DLQ_SUFFIX
from consumers.otlp import READ_ENCODINGS
from worker.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COLLECTOR_CONFIG = ROOT / "deploy" / "otel-collector" / "config.yaml"

EXPECTED_SERVICES = {"kafka", "kafka-init", "postgres", "mlflow", "migrate", "worker", "prometheus",
                     "grafana", "otel-collector"}
LONG_RUNNING = {"kafka", "postgres", "mlflow", "worker", "prometheus", "grafana", "otel-collector"}
# Long-running services that cannot have a compose healthcheck: the Collector's image is its
# binary alone (FROM scratch: no shell, curl or wget to run a test with). Its config enables the
# health_check extension instead (check_collector_pipeline).
NO_HEALTHCHECK = {"otel-collector"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
WORKER_REPLICAS = 2
WORKER_WIRING = {  # what the workers must be told, after interpolation
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "HTTP_HOST": "0.0.0.0",
    "HTTP_PORT": "9464",
    "LOG_FORMAT": "json",
}

Problems = list[str]


# ---- reading the files --------------------------------------------------------------------

def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose_vars(text: str) -> dict[str, tuple[str, str]]:
    """``${NAME:-default}`` and ``${NAME:?message}`` references: name -> (operator, argument)."""
    return {m[1]: (m[2] or "", m[3] or "") for m in _VAR.finditer(text.replace("$$", ""))}


def resolve(value: Any) -> Any:
    """Compose interpolation with an empty .env: ``${X:-default}`` gives the default, and a
    required ``${X:?message}`` a URL-safe placeholder. Lists and dicts are resolved item by item."""
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2] or "", m[3] or ""
        return arg if op in (":-", "-") else f"{name.lower()}-value"

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def services(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(doc.get("services") or {})


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def args_of(value: Any) -> list[str]:
    """A compose command or entrypoint (list or string) as an argument list."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value``; None when absent."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def healthcheck_text(service: Mapping[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def condition(service: Mapping[str, Any], target: str) -> str | None:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return None
    entry = deps.get(target)
    return entry.get("condition") if isinstance(entry, dict) else None


# ---- checks on the compose file -----------------------------------------------------------

def check_services(doc: Mapping[str, Any]) -> Problems:
    missing = EXPECTED_SERVICES - services(doc).keys()
    return [f"missing service {name}" for name in sorted(missing)]


def is_one_shot(service: Mapping[str, Any]) -> bool:
    return str(service.get("restart", "no")) in ("no", "False", "false")


def check_healthchecks(doc: Mapping[str, Any]) -> Problems:
    problems = []
    for name, svc in services(doc).items():
        if name in LONG_RUNNING and is_one_shot(svc):
            problems.append(f"{name} is long-running but has no restart policy")
        if name not in LONG_RUNNING and is_one_shot(svc):
            continue
        if name in NO_HEALTHCHECK:
            if healthcheck_text(svc):
                problems.append(f"{name} has a healthcheck, but its image has nothing to run it")
            continue
        hc = svc.get("healthcheck") or {}
        if hc.get("disable") or not hc.get("test"):
            problems.append(f"{name} is long-running but has no healthcheck")
    return problems


def check_depends_on(doc: Mapping[str, Any]) -> Problems:
    problems = []
    svcs = services(doc)
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on is a list, so it has no conditions")
            continue
        for target, entry in deps.items():
            cond = entry.get("condition") if isinstance(entry, dict) else None
            if cond not in CONDITIONS:
                problems.append(f"{name}: depends_on {target} has no valid condition ({cond})")
            elif target not in svcs:
                problems.append(f"{name}: depends_on unknown service {target}")
            elif cond == "service_healthy" and not healthcheck_text(svcs[target]):
                problems.append(f"{name}: waits for {target} healthy, which has no healthcheck")
            elif cond == "service_completed_successfully" and not is_one_shot(svcs[target]):
                problems.append(f"{name}: waits for {target} to complete, but it restarts")
    return problems


def check_worker(doc: Mapping[str, Any]) -> Problems:
    svcs = services(doc)
    worker = svcs.get("worker", {})
    problems = []
    replicas = (worker.get("deploy") or {}).get("replicas")
    if replicas != WORKER_REPLICAS:
        problems.append(f"worker replicas is {replicas}, want {WORKER_REPLICAS}")
    for target, want in [("kafka-init", "service_completed_successfully"),
                         ("migrate", "service_completed_successfully"),
                         ("postgres", "service_healthy"), ("mlflow", "service_healthy")]:
        if condition(worker, target) != want:
            problems.append(f"worker must wait for {target} with {want}")
    env = resolve(environment(worker))
    for key, want in WORKER_WIRING.items():
        got = env.get(ENV_PREFIX + key)
        if key == "MLFLOW_TRACKING_URI":
            got = got or env.get(key)
        if got != want:
            problems.append(f"worker {ENV_PREFIX}{key} is {got!r}, want {want!r}")
    store = urlsplit(env.get(ENV_PREFIX + "STORE_URL", ""))
    if not store.scheme.startswith("postgres") or (store.hostname, store.port) != ("postgres",
                                                                                  5432):
        problems.append("worker store is not postgresql://...@postgres:5432/...")
    if WORKER_WIRING["HTTP_PORT"] not in [str(p) for p in worker.get("expose") or []]:
        problems.append("worker does not expose its HTTP port")
    env_files = worker.get("env_file") or []
    env_files = [env_files] if isinstance(env_files, str) else env_files
    if not any((f if isinstance(f, str) else f.get("path")) == ".env" for f in env_files):
        problems.append("worker does not read .env (env_file)")
    if args_of(worker.get("command")) not in ([], ["run"]):
        problems.append("worker command is not `run`")
    if "trace-curator check" not in healthcheck_text(worker):
        problems.append("worker healthcheck does not run `trace-curator check`")
    return problems


def check_migrate(doc: Mapping[str, Any]) -> Problems:
    svcs = services(doc)
    migrate, worker = svcs.get("migrate", {}), svcs.get("worker", {})
    problems = []
    if args_of(migrate.get("command")) != ["db", "upgrade"]:
        problems.append("migrate does not run `db upgrade`")
    if migrate.get("image") != worker.get("image") or not worker.get("image"):
        problems.append("migrate does not use the worker image")
    if condition(migrate, "postgres") != "service_healthy":
        problems.append("migrate must wait for postgres healthy")
    if resolve(environment(migrate)).get(ENV_PREFIX + "STORE_URL") != resolve(
            environment(worker)).get(ENV_PREFIX + "STORE_URL"):
        problems.append("migrate and worker use different stores")
    return problems


def check_kafka(doc: Mapping[str, Any]) -> Problems:
    svcs = services(doc)
    kafka = svcs.get("kafka", {})
    problems = []
    image = str(kafka.get("image", ""))
    repo, _, tag = image.partition(":")
    if repo != "apache/kafka":
        problems.append(f"kafka image is {image!r}, want the official apache/kafka")
    elif not re.fullmatch(r"3\.9\.\d+|4\.\d+\.\d+", tag):
        problems.append(f"kafka image tag {tag!r} is not a pinned 3.9.x or 4.x release")
    if svcs.get("kafka-init", {}).get("image") != image:
        problems.append("kafka-init does not use the kafka image")
    env = resolve(environment(kafka))
    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    if roles != {"broker", "controller"}:
        problems.append(f"KRaft process roles are {sorted(roles)}, want broker,controller")
    node_id = env.get("KAFKA_NODE_ID")
    if not node_id or not env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").startswith(
            f"{node_id}@"):
        problems.append("KRaft needs KAFKA_NODE_ID and a quorum voter with that id")
    if not env.get("CLUSTER_ID"):
        problems.append("KRaft needs a CLUSTER_ID")
    controller = env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    if not controller or f"{controller}://" not in env.get("KAFKA_LISTENERS", ""):
        problems.append("the controller listener is not among KAFKA_LISTENERS")
    if "://kafka:9092" not in env.get("KAFKA_ADVERTISED_LISTENERS", ""):
        problems.append("kafka does not advertise kafka:9092 to the other services")
    return problems


def created_topics(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``kafka-topics.sh --create`` calls of kafka-init, after interpolation."""
    init = services(doc).get("kafka-init", {})
    script = "\n".join(args_of(init.get("entrypoint")) + args_of(init.get("command")))
    calls = []
    for line in resolve(script).replace("\\\n", " ").splitlines():
        if "kafka-topics" not in line or "--create" not in line:
            continue
        args = shlex.split(line)
        calls.append({"topic": option(args, "--topic"), "partitions": option(args, "--partitions"),
                      "if_not_exists": "--if-not-exists" in args,
                      "bootstrap": option(args, "--bootstrap-server")})
    return calls


def check_topics(doc: Mapping[str, Any]) -> Problems:
    trace = Settings.model_fields["trace_topic"].default
    assessment = Settings.model_fields["assessment_topic"].default
    otlp = Settings.model_fields["otlp_topic"].default
    read = {trace, assessment, otlp}
    dlqs = {t + DLQ_SUFFIX for t in read}
    calls = created_topics(doc)
    names = [c["topic"] for c in calls]
    problems = []
    if sorted(names) != sorted(read | dlqs):
        problems.append(f"kafka-init creates {sorted(map(str, names))}, want {trace}, "
                        f"{assessment}, {otlp} and their {DLQ_SUFFIX} topics, once each")
    for c in calls:
        partitions = c["partitions"]
        if partitions is None or not partitions.isdigit() or int(partitions) < 1:
            problems.append(f"topic {c['topic']} has no explicit partition count")
        elif c["topic"] in read and int(partitions) < WORKER_REPLICAS:
            problems.append(f"topic {c['topic']} has fewer partitions than workers")
        if not c["if_not_exists"]:
            problems.append(f"topic {c['topic']} is not created with --if-not-exists")
        if c["bootstrap"] != "kafka:9092":
            problems.append(f"topic {c['topic']} is created through {c['bootstrap']}")
    return problems


def check_mlflow(doc: Mapping[str, Any]) -> Problems:
    mlflow = services(doc).get("mlflow", {})
    args = resolve(args_of(mlflow.get("entrypoint")) + args_of(mlflow.get("command")))
    env = resolve(environment(mlflow))
    problems = []
    if option(args, "--workers") != "1":
        problems.append("mlflow must run with --workers 1")
    if option(args, "--host") != "0.0.0.0":
        problems.append("mlflow must listen on 0.0.0.0")
    allowed = [h.strip() for h in (option(args, "--allowed-hosts") or "").split(",")]
    if "mlflow" not in allowed or "mlflow:*" not in allowed:
        problems.append(f"mlflow --allowed-hosts {allowed} lacks mlflow and mlflow:*")
    backend = option(args, "--backend-store-uri") or env.get("MLFLOW_BACKEND_STORE_URI", "")
    if not backend.startswith("postgresql") or "@postgres:5432/" not in backend:
        problems.append("mlflow backend store is not PostgreSQL on the postgres service")
    check = healthcheck_text(mlflow)
    url = re.search(r"https?://[^'\"\s]+", check)
    if url is None or "/api/2.0/mlflow/" not in url[0]:
        problems.append("mlflow healthcheck does not make a real API call")
    else:
        netloc = urlsplit(url[0]).netloc
        if not any(fnmatch.fnmatchcase(netloc, h) for h in allowed):
            problems.append(f"mlflow healthcheck host {netloc} is not in --allowed-hosts")
    return problems


def check_mlflow_image(doc: Mapping[str, Any]) -> Problems:
    """MLflow's official image has no PostgreSQL driver: the stack builds one that adds it."""
    build = services(doc).get("mlflow", {}).get("build")
    if not build:
        return ["mlflow is not built (the official image has no PostgreSQL driver)"]
    if isinstance(build, str):
        build = {"context": build}
    dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    if not dockerfile.is_file():
        return [f"mlflow is not built from a Dockerfile ({dockerfile})"]
    stages = dockerfile_stages(dockerfile.read_text(), resolve(build.get("args") or {}))
    problems = []
    base = stages[-1]["from"] if stages else ""
    pinned = re.search(r"mlflow~=([\d.]+)", (ROOT / "pyproject.toml").read_text())
    if pinned is None or base != f"ghcr.io/mlflow/mlflow:v{pinned[1]}":
        problems.append(f"mlflow image {base!r} does not match the mlflow pin in pyproject.toml")
    if not any("psycopg" in r for s in stages for r in s["run"]):
        problems.append("the mlflow image installs no PostgreSQL driver")
    return problems


def check_postgres(doc: Mapping[str, Any]) -> Problems:
    pg = services(doc).get("postgres", {})
    problems = []
    if not str(pg.get("image", "")).startswith("postgres:16"):
        problems.append("postgres is not postgres:16")
    volumes = [str(v) for v in pg.get("volumes") or []]
    named = set((doc.get("volumes") or {}).keys())
    if not any(v.split(":")[0] in named and ":/var/lib/postgresql/data" in v for v in volumes):
        problems.append("postgres data is not on a named volume")
    for v in volumes:
        source = v.split(":")[0]
        if source.startswith(".") and not (ROOT / source).exists():
            problems.append(f"postgres mounts {source}, which does not exist")
    if "pg_isready" not in healthcheck_text(pg):
        problems.append("postgres healthcheck does not use pg_isready")
    return problems


def check_secrets(text: str, doc: Mapping[str, Any]) -> Problems:
    """Passwords come from .env: every URL password and every *PASSWORD* variable is a required
    ``${NAME:?...}`` interpolation, never a literal."""
    problems = []
    for m in re.finditer(r"://([^:/@\s\"']+):([^@\s\"']+)@", text):
        if not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}", m[2]):
            problems.append(f"hard-coded password in URL for user {m[1]}")
    for name, svc in services(doc).items():
        for key, value in environment(svc).items():
            if "PASSWORD" in key and not re.fullmatch(r"\$\{[A-Za-z_]\w*:\?[^}]*\}", value):
                problems.append(f"{name}: {key} is not a required ${{...:?}} from .env")
    return problems


def check_setting_names(*texts: str) -> Problems:
    """Every TRACE_CURATOR_* name mentioned is a field of Settings (the worker rejects others)."""
    fields = set(Settings.model_fields)
    names = {m for t in texts for m in re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", t)}
    return [f"{n} is not a setting" for n in sorted(names)
            if n[len(ENV_PREFIX):].lower() not in fields]


def compose_problems(doc: Mapping[str, Any], text: str) -> Problems:
    checks: list[Callable[[Mapping[str, Any]], Problems]] = [
        check_services, check_healthchecks, check_depends_on, check_worker, check_migrate,
        check_kafka, check_topics, check_mlflow, check_mlflow_image, check_postgres]
    return ([p for check in checks for p in check(doc)] + check_secrets(text, doc)
            + check_setting_names(text))


# ---- the OpenTelemetry Collector (deploy/otel-collector/config.yaml) -------------------------

COLLECTOR = "otel-collector"
COLLECTOR_IMAGE = "otel/opentelemetry-collector-contrib"
COLLECTOR_DEFAULT_CONFIG = "/etc/otelcol-contrib/config.yaml"  # the image's CMD --config
OTLP_PORTS = {"grpc": 4317, "http": 4318}
HEALTH_PORT = 13133
# What the Kafka exporter uses when its config names nothing.
EXPORTER_DEFAULT_BROKERS = ["localhost:9092"]
EXPORTER_DEFAULT_TOPIC = "otlp_spans"
EXPORTER_DEFAULT_ENCODING = "otlp_proto"


def parse_collector_config(text: str) -> tuple[dict[str, Any], Problems]:
    """The Collector's config as a mapping, or an empty mapping and why there is none."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return {}, [f"collector config does not parse: {exc}"]
    if not isinstance(config, dict):
        return {}, ["collector config is not a YAML mapping"]
    return config, []


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        node = _mapping(node).get(key)
    return node


def component_type(component_id: Any) -> str:
    """``otlp/in`` -> ``otlp``: a component's id is its type, optionally ``/name``."""
    return str(component_id).split("/", 1)[0]


def _ids(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def traces_kafka_exporters(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The kafka exporters of the traces pipelines that receive OTLP: id -> their settings."""
    exporters = _mapping(config.get("exporters"))
    out: dict[str, Mapping[str, Any]] = {}
    for pid, pipeline in _mapping(_dig(config, "service", "pipelines")).items():
        if component_type(pid) != "traces" or not any(
                component_type(r) == "otlp" for r in _ids(_dig(pipeline, "receivers"))):
            continue
        for eid in _ids(_dig(pipeline, "exporters")):
            if component_type(eid) == "kafka":
                out[eid] = _mapping(exporters.get(eid))
    return out


def exporter_traces(exporter: Mapping[str, Any]) -> tuple[str, str]:
    """The topic and encoding a Kafka exporter writes traces with, as the Collector reads its
    config: ``traces::topic``/``encoding``, else the deprecated top-level keys, else defaults."""
    traces = _mapping(exporter.get("traces"))
    return (str(traces.get("topic") or exporter.get("topic") or EXPORTER_DEFAULT_TOPIC),
            str(traces.get("encoding") or exporter.get("encoding") or EXPORTER_DEFAULT_ENCODING))


def worker_setting(doc: Mapping[str, Any], name: str) -> Any:
    """A worker setting as the stack gives it: the worker's compose environment (interpolated
    with an empty .env) if it sets it, else the Settings default."""
    env = resolve(environment(services(doc).get("worker", {})))
    key = ENV_PREFIX + name.upper()
    return env[key] if key in env else Settings.model_fields[name].default


def check_collector_pipeline(doc: Mapping[str, Any], config: Mapping[str, Any]) -> Problems:
    """OTLP in on gRPC and HTTP on every interface (the default is localhost, out of reach of
    other containers); a traces pipeline otlp -> batch -> kafka; every component a pipeline or
    the service names is defined; the health_check extension on, on every interface."""
    problems = []
    receivers = _mapping(config.get("receivers"))
    otlp = [r for r in receivers if component_type(r) == "otlp"]
    if not otlp:
        problems.append("collector has no otlp receiver")
    for rid in otlp:
        protocols = _mapping(_dig(receivers, rid, "protocols"))
        for protocol, port in OTLP_PORTS.items():
            endpoint = _dig(protocols, protocol, "endpoint")
            if protocol not in protocols:
                problems.append(f"collector receiver {rid} lacks the {protocol} protocol")
            elif endpoint != f"0.0.0.0:{port}":
                problems.append(f"collector receiver {rid} {protocol} endpoint is {endpoint!r}, "
                                f"want 0.0.0.0:{port}")
    sections = {kind: _mapping(config.get(kind))
                for kind in ("receivers", "processors", "exporters")}
    pipelines = _mapping(_dig(config, "service", "pipelines"))
    for pid, pipeline in pipelines.items():
        for kind, defined in sections.items():
            problems += [f"collector pipeline {pid} names {kind[:-1]} {cid}, which is not defined"
                         for cid in _ids(_dig(pipeline, kind)) if cid not in defined]
    if not any(component_type(pid) == "traces"
               and any(component_type(r) == "otlp" for r in _ids(_dig(p, "receivers")))
               and any(component_type(c) == "batch" for c in _ids(_dig(p, "processors")))
               and any(component_type(e) == "kafka" for e in _ids(_dig(p, "exporters")))
               for pid, p in pipelines.items()):
        problems.append("collector has no traces pipeline from otlp through batch to kafka")
    extensions = _mapping(config.get("extensions"))
    enabled = _ids(_dig(config, "service", "extensions"))
    problems += [f"collector enables extension {e}, which is not defined"
                 for e in enabled if e not in extensions]
    health = [e for e in enabled if component_type(e) == "health_check" and e in extensions]
    if not health:
        problems.append("collector health_check extension is not enabled (compose cannot run "
                        "a healthcheck in its image)")
    for eid in health:
        endpoint = _dig(extensions, eid, "endpoint")
        if endpoint != f"0.0.0.0:{HEALTH_PORT}":
            problems.append(f"collector {eid} endpoint is {endpoint!r}, "
                            f"want 0.0.0.0:{HEALTH_PORT}")
    return problems


def check_collector_matches_worker(doc: Mapping[str, Any], config: Mapping[str, Any]
                                   ) -> Problems:
    """The Kafka exporter writes what the workers read: on their brokers, to their OTLP topic,
    in an encoding they read and are set to; per signal (the top-level topic and encoding are
    deprecated), and to that topic only."""
    exporters = traces_kafka_exporters(config)
    if not exporters:
        return ["collector has no kafka exporter in a traces pipeline that receives otlp"]
    topic = worker_setting(doc, "otlp_topic")
    encoding = worker_setting(doc, "otlp_encoding")
    brokers = {b.strip() for b in str(worker_setting(doc, "kafka_bootstrap_servers")).split(",")}
    problems = []
    for eid, exporter in exporters.items():
        problems += [f"collector exporter {eid} sets the deprecated top-level {key}: set "
                     f"traces: {{{key}: ...}}" for key in ("topic", "encoding") if key in exporter]
        if exporter.get("topic_from_attribute") or _dig(exporter, "traces",
                                                        "topic_from_metadata_key"):
            problems.append(f"collector exporter {eid} routes traces away from its topic")
        got = exporter.get("brokers") or EXPORTER_DEFAULT_BROKERS
        got_brokers = {str(b) for b in ([got] if isinstance(got, str) else got)}
        if got_brokers != brokers:
            problems.append(f"collector exporter {eid} brokers are {sorted(got_brokers)}, the "
                            f"workers' are {sorted(brokers)}")
        got_topic, got_encoding = exporter_traces(exporter)
        if got_topic != topic:
            problems.append(f"collector exporter {eid} writes to topic {got_topic!r}, the "
                            f"workers read {topic!r}")
        if got_encoding not in READ_ENCODINGS:
            problems.append(f"collector exporter {eid} encoding {got_encoding!r} is not one the "
                            f"workers read ({', '.join(READ_ENCODINGS)})")
        elif got_encoding != encoding:
            problems.append(f"collector exporter {eid} writes {got_encoding!r}, the workers "
                            f"read {encoding!r}")
    return problems


def check_collector_topic_created(doc: Mapping[str, Any], config: Mapping[str, Any]
                                  ) -> Problems:
    """kafka-init creates the topic the Collector writes to, and the dead-letter topic the
    workers send its bad records to (else the broker would auto-create them, 6 partitions)."""
    created = {c["topic"] for c in created_topics(doc)}
    problems = []
    for eid, exporter in traces_kafka_exporters(config).items():
        topic, _ = exporter_traces(exporter)
        problems += [f"kafka-init does not create {t!r}, which collector exporter {eid} feeds"
                     for t in (topic, topic + DLQ_SUFFIX) if t not in created]
    return problems


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume, short or long syntax."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, Mapping):
            out.append((str(v.get("source", "")), str(v.get("target", "")),
                        bool(v.get("read_only"))))
        else:
            source, _, rest = str(v).partition(":")
            target, _, mode = rest.partition(":")
            out.append((source, target, "ro" in mode.split(",")))
    return out


def published_ports(service: Mapping[str, Any]) -> dict[str, str]:
    """Container port -> host address it is published on ("" for every interface)."""
    out = {}
    for p in resolve(service.get("ports") or []):
        if isinstance(p, Mapping):
            out[str(p.get("target"))] = str(p.get("host_ip") or "")
        else:
            parts = str(p).split(":")
            out[parts[-1].split("/")[0]] = parts[0] if len(parts) == 3 else ""
    return out


def check_collector_service(doc: Mapping[str, Any], config: Mapping[str, Any]) -> Problems:
    """The contrib image at a pinned release; this repository's config mounted read-only where
    the Collector reads it; the OTLP ports published on 127.0.0.1 only (no authentication); a
    start once kafka-init has created the topics."""
    svc = services(doc).get(COLLECTOR, {})
    problems = []
    image = str(svc.get("image", ""))
    name = image.partition("@")[0]
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        repo, tag = name, ""
    if repo != COLLECTOR_IMAGE:
        problems.append(f"{COLLECTOR} image is {image!r}, want {COLLECTOR_IMAGE}")
    elif not re.fullmatch(r"\d+\.\d+\.\d+", tag):
        problems.append(f"{COLLECTOR} image tag {tag!r} is not a pinned release")
    args = resolve(args_of(svc.get("entrypoint")) + args_of(svc.get("command")))
    path = (option(args, "--config") or COLLECTOR_DEFAULT_CONFIG).removeprefix("file:")
    mounts = {target: (source, ro) for source, target, ro in bind_mounts(svc)}
    want = COLLECTOR_CONFIG.relative_to(ROOT).as_posix()
    if path not in mounts:
        problems.append(f"{COLLECTOR} reads {path}, which is not mounted from ./{want}")
    else:
        source, read_only = mounts[path]
        if (ROOT / source).resolve() != COLLECTOR_CONFIG:
            problems.append(f"{COLLECTOR} reads {path} mounted from {source}, not ./{want}")
        if not read_only:
            problems.append(f"{COLLECTOR} config {path} is not mounted read-only")
    published = published_ports(svc)
    for protocol, port in OTLP_PORTS.items():
        if str(port) not in published:
            problems.append(f"{COLLECTOR} does not publish the OTLP {protocol} port {port}")
        elif published[str(port)] != "127.0.0.1":
            problems.append(f"{COLLECTOR} publishes port {port} beyond 127.0.0.1")
    if condition(svc, "kafka-init") != "service_completed_successfully":
        problems.append(f"{COLLECTOR} must wait for kafka-init with "
                        "service_completed_successfully")
    return problems


COLLECTOR_CHECKS: list[Callable[[Mapping[str, Any], Mapping[str, Any]], Problems]] = [
    check_collector_pipeline, check_collector_matches_worker, check_collector_topic_created,
    check_collector_service]


def collector_problems(doc: Mapping[str, Any], config: Mapping[str, Any]) -> Problems:
    return [p for check in COLLECTOR_CHECKS for p in check(doc, config)]


def collector_config_problems(text: str, doc: Mapping[str, Any]) -> Problems:
    config, problems = parse_collector_config(text)
    return problems + collector_problems(doc, config)



# ---- .env.example ---------------------------------------------------------------------------

_ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example_lines(text: str) -> dict[str, tuple[bool, str]]:
    """``NAME=value`` lines: name -> (commented out, value)."""
    out = {}
    for line in text.splitlines():
        m = _ENV_LINE.match(line.strip())
        if m:
            out[m[2]] = (bool(m[1]), m[3])
    return out


def check_env_example(text: str, compose_text: str) -> Problems:
    """Each variable the compose file reads is documented: a required one as an active, empty
    line to fill in, one with a default as a commented line showing that default."""
    lines = env_example_lines(text)
    problems = []
    for name, (op, arg) in compose_vars(compose_text).items():
        if name not in lines:
            problems.append(f"{name} (read by docker-compose.yml) is not in .env.example")
            continue
        commented, value = lines[name]
        if op == ":?" and (commented or value):
            problems.append(f"{name} is required: give it an empty, uncommented line")
        if op == ":-" and (not commented or value != arg):
            problems.append(f"{name}: show the compose default as '# {name}={arg}'")
    doc = yaml.safe_load(compose_text)
    wired = {k for k, v in environment(services(doc).get("worker", {})).items()
             if k.startswith(ENV_PREFIX) and not re.fullmatch(rf"\$\{{{k}:-[^}}]*\}}", v)}
    problems += [f"{name} is set by docker-compose.yml; .env cannot change it"
                 for name in sorted(wired & lines.keys())]
    return problems + check_setting_names(text)


# ---- Dockerfile and .dockerignore -----------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages(text: str, build_args: Mapping[str, str] | None = None
                      ) -> list[dict[str, Any]]:
    """Stages with their resolved base image, and their USER, ENV, RUN, COPY, ENTRYPOINT, CMD and
    HEALTHCHECK arguments. Global ARG defaults (and ``build_args``) resolve ``${NAME}``."""
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for word, rest in dockerfile_instructions(text):
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = (build_args or {}).get(name, default)
        elif word == "FROM":
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], ""), rest)
            stages.append({"from": base.split()[0], "user": [], "env": [], "run": [],
                           "copy": [], "entrypoint": None, "cmd": None, "healthcheck": None})
        elif stages and word in ("USER", "ENV", "RUN", "COPY"):
            stages[-1][word.lower()].append(rest)
        elif stages and word in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
            stages[-1][word.lower()] = rest
    return stages


def exec_form(value: str | None) -> list[str] | None:
    try:
        parsed = json.loads(value or "")
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) else None


def dockerfile_problems(text: str) -> Problems:
    stages = dockerfile_stages(text)
    problems = []
    if len(stages) < 2:
        return [f"{len(stages)} FROM stage(s): want a builder and a runtime stage"]
    final = stages[-1]
    if not all(s["from"] == "python:3.12-slim" for s in stages):
        problems.append(f"stages are {[s['from'] for s in stages]}, want python:3.12-slim")
    users = final["user"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage runs as root (no non-root USER)")
    if exec_form(final["entrypoint"]) != ["trace-curator"]:
        problems.append('ENTRYPOINT is not ["trace-curator"]')
    if exec_form(final["cmd"]) != ["run"]:
        problems.append('CMD is not ["run"]')
    health = final["healthcheck"] or ""
    _, _, health_cmd = health.partition("CMD ")
    if exec_form(health_cmd) != ["trace-curator", "check"] and health_cmd.strip() != (
            "trace-curator check"):
        problems.append("HEALTHCHECK does not run `trace-curator check`")
    for run in (r for s in stages for r in s["run"] if "pip install" in r):
        if re.search(r"\[[^\]]*\b(test|dev|demo)\b[^\]]*\]", run):
            problems.append(f"an extra beyond the runtime is installed: {run}")
        if re.search(r"pip install[^&;]*\s(-e|--editable)\s", run):
            problems.append("the package is installed editable")
    if not any("--from=builder" in c and "/opt/venv" in c for c in final["copy"]):
        problems.append("the final stage does not copy the builder's venv")
    env = " ".join(final["env"])
    for var in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        if var not in env:
            problems.append(f"{var} is not set in the final stage")
    return problems


def _ignore_pattern(pattern: str) -> re.Pattern[str]:
    out, i, p = "", 0, pattern.strip("/")
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        elif p[i] == "[":
            end = p.index("]", i)
            out, i = out + p[i:end + 1], end + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str, dockerignore: str) -> bool:
    """Docker's rule: the last pattern that matches the path, or a parent folder, wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rx = _ignore_pattern(line[1:] if negate else line)
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result


MUST_IGNORE = [".venv/bin/python", ".git/HEAD", "tests/unit/test_loop.py", "bench/run.py",
               "demo-data/mlflow.db", "trace_curator.db", "store/x.db", ".mypy_cache/x",
               ".ruff_cache/x", ".pytest_cache/x", ".hypothesis/x", ".env",
               "worker/__pycache__/cli.cpython-312.pyc", "trace_curator.egg-info/PKG-INFO"]
MUST_KEEP = ["pyproject.toml", "README.md", "worker/cli/main.py", "consumers/formats.py",
             "store/migrations/env.py", "store/migrations/script.py.mako",
             "store/migrations/versions/0001_initial.py"]


def dockerignore_problems(text: str) -> Problems:
    return ([f"{p} is in the build context" for p in MUST_IGNORE if not ignored(p, text)]
            + [f"{p} is not in the build context" for p in MUST_KEEP if ignored(p, text)])


# ---- the tests on the real files --------------------------------------------------------------

@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_compose()


@pytest.mark.parametrize("check", [
    check_services, check_healthchecks, check_depends_on, check_worker, check_migrate,
    check_kafka, check_topics, check_mlflow, check_mlflow_image, check_postgres,
], ids=lambda f: f.__name__)
def test_compose_check(doc: dict[str, Any], check: Callable[[Mapping[str, Any]], Problems]
                       ) -> None:
    assert check(doc) == []


def test_compose_passwords_come_from_env(doc: dict[str, Any]) -> None:
    assert check_secrets(COMPOSE.read_text(), doc) == []


def test_compose_setting_names_are_settings() -> None:
    assert check_setting_names(COMPOSE.read_text()) == []


def test_env_example_documents_the_compose_variables() -> None:
    assert check_env_example(ENV_EXAMPLE.read_text(), COMPOSE.read_text()) == []


def test_dockerfile() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerignore() -> None:
    assert dockerignore_problems(DOCKERIGNORE.read_text()) == []


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    config, problems = parse_collector_config(COLLECTOR_CONFIG.read_text())
    assert problems == []
    return config


def test_collector_config_parses() -> None:
    config, problems = parse_collector_config(COLLECTOR_CONFIG.read_text())
    assert problems == [] and config


@pytest.mark.parametrize("check", COLLECTOR_CHECKS, ids=lambda f: f.__name__)
def test_collector_check(doc: dict[str, Any], collector: dict[str, Any],
                         check: Callable[[Mapping[str, Any], Mapping[str, Any]], Problems]
                         ) -> None:
    assert check(doc, collector) == []


def test_the_option_left_commented_out_is_where_the_exporter_reads_it(
        doc: dict[str, Any]) -> None:
    text = COLLECTOR_CONFIG.read_text()
    line = "    # partition_traces_by_id: true\n"
    assert line in text
    uncommented = text.replace(line, line.replace("# ", ""))
    assert collector_config_problems(uncommented, doc) == []
    config, _ = parse_collector_config(uncommented)
    assert config["exporters"]["kafka"]["partition_traces_by_id"] is True


def test_the_workers_read_what_the_collector_writes(doc: dict[str, Any],
                                                    collector: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's settings as load_settings reads compose's environment (not the check's own
    reading of it) name the exporter's topic and encoding."""
    s = _load_with(monkeypatch, resolve(environment(services(doc)["worker"])))
    exporters = traces_kafka_exporters(collector)
    assert exporters
    for exporter in exporters.values():
        assert exporter_traces(exporter) == (s.otlp_topic, s.otlp_encoding)
    assert s.otlp_encoding in READ_ENCODINGS


def _load_with(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Settings:
    """load_settings() with exactly ``env`` as the settings environment."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_worker_environment_is_valid_settings(doc: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's environment, as compose hands it over, is accepted by load_settings."""
    s = _load_with(monkeypatch, resolve(environment(services(doc)["worker"])))
    assert (s.kafka_bootstrap_servers, s.mlflow_tracking_uri, s.http_host, s.http_port,
            s.log_format) == ("kafka:9092", "http://mlflow:5000", "0.0.0.0", 9464, "json")
    assert s.store_url_plain.startswith("postgresql://trace_curator:")
    assert s.writeback_enabled


def _field_value(s: Settings, name: str) -> Any:
    value = getattr(s, name[len(ENV_PREFIX):].lower())
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def env_example_value_problems(text: str, compose_text: str,
                               monkeypatch: pytest.MonkeyPatch) -> Problems:
    """Each TRACE_CURATOR_* line of .env.example loads, and a commented one shows the value the
    stack uses without it: the compose default (``${NAME:-default}``), else the Settings one."""
    compose_defaults = {k: arg for k, (op, arg) in compose_vars(compose_text).items()
                        if op == ":-"}
    problems = []
    for name, (commented, value) in env_example_lines(text).items():
        if not name.startswith(ENV_PREFIX):
            continue
        try:
            shown = _field_value(_load_with(monkeypatch, {name: value}), name)
        except (ConfigError, AttributeError) as exc:  # a bad value, or not a field
            problems.append(f"{name}={value} does not load: {exc}")
            continue
        if not commented:
            continue
        used = _field_value(_load_with(monkeypatch, {name: compose_defaults[name]}
                                       if name in compose_defaults else {}), name)
        if used is not None and shown != used:  # unset optional settings show an example
            problems.append(f"{name}: .env.example shows {value!r}, the stack uses {used!r}")
    return problems


def test_env_example_values_are_valid_and_show_the_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = ENV_EXAMPLE.read_text()
    assert sum(k.startswith(ENV_PREFIX) for k in env_example_lines(text)) >= 10
    assert env_example_value_problems(text, COMPOSE.read_text(), monkeypatch) == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("# TRACE_CURATOR_BATCH_MAX_RECORDS=2000", "# TRACE_CURATOR_BATCH_MAX_RECORDS=200",
     "the stack uses 2000"),
    ("# TRACE_CURATOR_LOG_FORMAT=json", "# TRACE_CURATOR_LOG_FORMAT=kv", "the stack uses 'json'"),
    ("# TRACE_CURATOR_SOURCE=kafka", "# TRACE_CURATOR_SOURCE=rabbitmq", "does not load"),
])
def test_a_wrong_env_example_value_is_rejected(old: str, new: str, expected: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    original = ENV_EXAMPLE.read_text()
    assert old in original
    problems = env_example_value_problems(original.replace(old, new, 1), COMPOSE.read_text(),
                                          monkeypatch)
    assert any(expected in p for p in problems), problems


# ---- every check can fail: mutated copies are rejected ---------------------------------------

def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets (or, with value ``...``, deletes) a dotted path in the document."""
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = d
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return mutate


def _edit_command(service: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        svc = d["services"][service]
        before = json.dumps(svc["command"])
        svc["command"] = json.loads(before.replace(old, new))
        assert json.dumps(svc["command"]) != before, f"{old!r} not in the {service} command"
    return mutate


COMPOSE_MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no migrate service", _set("services.migrate", ...), "missing service migrate"),
    ("kafka without healthcheck", _set("services.kafka.healthcheck", ...),
     "kafka is long-running but has no healthcheck"),
    ("worker healthcheck disabled", _set("services.worker.healthcheck", {"disable": True}),
     "worker is long-running but has no healthcheck"),
    ("depends_on as a list", _set("services.migrate.depends_on", ["postgres"]),
     "depends_on is a list"),
    ("depends_on without condition", _set("services.worker.depends_on.mlflow", {}),
     "depends_on mlflow has no valid condition"),
    ("one replica", _set("services.worker.deploy.replicas", 1), "worker replicas is 1"),
    ("worker starts before the topics exist",
     _set("services.worker.depends_on.kafka-init", {"condition": "service_started"}),
     "worker must wait for kafka-init with service_completed_successfully"),
    ("worker starts before migrations",
     _set("services.worker.depends_on.migrate", {"condition": "service_healthy"}),
     "worker must wait for migrate with service_completed_successfully"),
    ("worker on localhost kafka",
     _set("services.worker.environment.TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
     "TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS is 'localhost:9092'"),
    ("worker on sqlite", _set("services.worker.environment.TRACE_CURATOR_STORE_URL",
                              "sqlite:///x.db"), "worker store is not postgresql"),
    ("a typo in a setting name",
     _set("services.worker.environment.TRACE_CURATOR_STORE_ULR", "x"),
     "TRACE_CURATOR_STORE_ULR is not a setting"),
    ("bitnami kafka", _set("services.kafka.image", "bitnami/kafka:3.9"),
     "want the official apache/kafka"),
    ("unpinned kafka", _set("services.kafka.image", "apache/kafka:latest"),
     "is not a pinned 3.9.x or 4.x release"),
    ("no KRaft roles", _set("services.kafka.environment.KAFKA_PROCESS_ROLES", ...),
     "KRaft process roles"),
    ("broker only", _set("services.kafka.environment.KAFKA_PROCESS_ROLES", "broker"),
     "KRaft process roles"),
    ("a topic without partitions",
     _edit_command("kafka-init", '--partitions \\"${KAFKA', '\\"${KAFKA'),
     "has no explicit partition count"),
    ("a wrong topic name", _edit_command("kafka-init", "mlflow-assessments}.dlq",
                                         "mlflow-assessment}.dlq"), "kafka-init creates"),
    ("a topic without --if-not-exists", _edit_command("kafka-init", "--if-not-exists", ""),
     "is not created with --if-not-exists"),
    ("mlflow with 4 workers", _edit_command("mlflow", '"--workers", "1"', '"--workers", "4"'),
     "--workers 1"),
    ("mlflow without allowed hosts", _edit_command("mlflow", "mlflow,mlflow:*,", ""),
     "lacks mlflow and mlflow:*"),
    ("mlflow health on /health", _set("services.mlflow.healthcheck.test",
                                      ["CMD", "curl", "-f", "http://127.0.0.1:5000/health"]),
     "does not make a real API call"),
    ("mlflow image without a driver", _set("services.mlflow.build", ...),
     "mlflow is not built"),
    ("mlflow image of another version", _set("services.mlflow.build.args.MLFLOW_VERSION", "3.1.0"),
     "does not match the mlflow pin"),
    ("migrate from another image", _set("services.migrate.image", "trace-curator:old"),
     "migrate does not use the worker image"),
    ("mlflow on sqlite", _set("services.mlflow.environment.MLFLOW_BACKEND_STORE_URI",
                              "sqlite:///mlflow.db"), "backend store is not PostgreSQL"),
    ("hard-coded password", _set("services.postgres.environment.POSTGRES_PASSWORD", "hunter2"),
     "POSTGRES_PASSWORD is not a required"),
    ("postgres without volume", _set("services.postgres.volumes", []),
     "postgres data is not on a named volume"),
    ("migrate runs the worker", _set("services.migrate.command", ["run"]),
     "migrate does not run `db upgrade`"),
]


COLLECTOR_MUTATIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    # (name, the document mutated: "compose" or "collector", mutation, expected problem)
    ("no collector service", "compose", _set("services.otel-collector", ...),
     "missing service otel-collector"),
    ("collector on latest", "compose",
     _set("services.otel-collector.image", "otel/opentelemetry-collector-contrib:latest"),
     "image tag 'latest' is not a pinned release"),
    ("collector untagged", "compose",
     _set("services.otel-collector.image", "otel/opentelemetry-collector-contrib"),
     "image tag '' is not a pinned release"),
    ("collector core image", "compose",
     _set("services.otel-collector.image", "otel/opentelemetry-collector:0.139.0"),
     "want otel/opentelemetry-collector-contrib"),
    ("collector config from elsewhere", "compose",
     _set("services.otel-collector.volumes",
          ["./deploy/prometheus/prometheus.yml:/etc/otelcol-contrib/config.yaml:ro"]),
     "mounted from ./deploy/prometheus/prometheus.yml, not ./deploy/otel-collector/config.yaml"),
    ("collector config writable", "compose",
     _set("services.otel-collector.volumes",
          ["./deploy/otel-collector/config.yaml:/etc/otelcol-contrib/config.yaml"]),
     "is not mounted read-only"),
    ("collector reads another file", "compose",
     _set("services.otel-collector.command", ["--config=/etc/otel/config.yaml"]),
     "reads /etc/otel/config.yaml, which is not mounted"),
    ("collector config not mounted", "compose", _set("services.otel-collector.volumes", ...),
     "reads /etc/otelcol-contrib/config.yaml, which is not mounted"),
    ("otlp http not published", "compose",
     _set("services.otel-collector.ports", ["127.0.0.1:4317:4317"]),
     "does not publish the OTLP http port 4318"),
    ("otlp on every interface", "compose",
     _set("services.otel-collector.ports", ["4317:4317", "4318:4318"]),
     "publishes port 4317 beyond 127.0.0.1"),
    ("collector before the topics", "compose",
     _set("services.otel-collector.depends_on.kafka-init", {"condition": "service_started"}),
     "otel-collector must wait for kafka-init with service_completed_successfully"),
    ("collector not restarted", "compose", _set("services.otel-collector.restart", "no"),
     "otel-collector is long-running but has no restart policy"),
    ("a healthcheck the image cannot run", "compose",
     _set("services.otel-collector.healthcheck",
          {"test": ["CMD-SHELL", "wget -qO- http://127.0.0.1:13133/"]}),
     "otel-collector has a healthcheck, but its image has nothing to run it"),
    ("the OTLP topic not created", "compose",
     _edit_command("kafka-init", '-otlp_spans}\\"', '-otlp-spans}\\"'),
     "kafka-init does not create 'otlp_spans'"),
    ("the OTLP dead-letter topic not created", "compose",
     _edit_command("kafka-init", "otlp_spans}.dlq", "otlp_spans}.dead"),
     "kafka-init does not create 'otlp_spans.dlq'"),
    ("workers on another OTLP topic", "compose",
     _set("services.worker.environment.TRACE_CURATOR_OTLP_TOPIC", "spans"),
     "writes to topic 'otlp_spans', the workers read 'spans'"),
    ("workers reading JSON", "compose",
     _set("services.worker.environment.TRACE_CURATOR_OTLP_ENCODING", "otlp_json"),
     "writes 'otlp_proto', the workers read 'otlp_json'"),
    ("no otlp receiver", "collector", _set("receivers.otlp", ...),
     "collector has no otlp receiver"),
    ("otlp without http", "collector", _set("receivers.otlp.protocols.http", ...),
     "collector receiver otlp lacks the http protocol"),
    ("otlp grpc on localhost", "collector",
     _set("receivers.otlp.protocols.grpc.endpoint", "localhost:4317"),
     "grpc endpoint is 'localhost:4317', want 0.0.0.0:4317"),
    ("otlp http by default", "collector", _set("receivers.otlp.protocols.http", None),
     "http endpoint is None, want 0.0.0.0:4318"),
    ("traces to an undefined exporter", "collector",
     _set("service.pipelines.traces.exporters", ["debug"]),
     "pipeline traces names exporter debug, which is not defined"),
    ("traces without batch", "collector", _set("service.pipelines.traces.processors", []),
     "collector has no traces pipeline from otlp through batch to kafka"),
    ("no traces pipeline", "collector", _set("service.pipelines.traces", ...),
     "collector has no kafka exporter in a traces pipeline"),
    ("health_check not enabled", "collector", _set("service.extensions", []),
     "collector health_check extension is not enabled"),
    ("health_check on localhost", "collector",
     _set("extensions.health_check.endpoint", "localhost:13133"),
     "collector health_check endpoint is 'localhost:13133'"),
    ("exporter on another topic", "collector", _set("exporters.kafka.traces.topic", "otlp-spans"),
     "writes to topic 'otlp-spans', the workers read 'otlp_spans'"),
    ("exporter in JSON", "collector", _set("exporters.kafka.traces.encoding", "otlp_json"),
     "writes 'otlp_json', the workers read 'otlp_proto'"),
    ("exporter in Jaeger", "collector", _set("exporters.kafka.traces.encoding", "jaeger_proto"),
     "encoding 'jaeger_proto' is not one the workers read"),
    ("deprecated top-level topic", "collector", _set("exporters.kafka.topic", "otlp_spans"),
     "sets the deprecated top-level topic"),
    ("topic from an attribute", "collector",
     _set("exporters.kafka.topic_from_attribute", "service.name"),
     "routes traces away from its topic"),
    ("exporter on localhost", "collector", _set("exporters.kafka.brokers", ...),
     "brokers are ['localhost:9092'], the workers' are ['kafka:9092']"),
]


@pytest.mark.parametrize(("target", "mutate", "expected"),
                         [(t, m, e) for _, t, m, e in COLLECTOR_MUTATIONS],
                         ids=[name for name, *_ in COLLECTOR_MUTATIONS])
def test_a_mutated_collector_setup_is_rejected(doc: dict[str, Any], collector: dict[str, Any],
                                               target: str,
                                               mutate: Callable[[dict[str, Any]], None],
                                               expected: str) -> None:
    mutated_doc, mutated_config = copy.deepcopy(doc), copy.deepcopy(collector)
    mutate(mutated_doc if target == "compose" else mutated_config)
    text = yaml.safe_dump(mutated_doc, width=1_000_000)
    problems = (compose_problems(mutated_doc, text)
                + collector_problems(mutated_doc, mutated_config))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in COMPOSE_MUTATIONS],
                         ids=[name for name, _, _ in COMPOSE_MUTATIONS])
def test_a_mutated_compose_file_is_rejected(doc: dict[str, Any],
                                            mutate: Callable[[dict[str, Any]], None],
                                            expected: str) -> None:
    mutated = copy.deepcopy(doc)
    mutate(mutated)
    text = yaml.safe_dump(mutated, width=1_000_000)
    problems = compose_problems(mutated, text)
    assert any(expected in p for p in problems), problems


def test_a_hard_coded_url_password_is_rejected(doc: dict[str, Any]) -> None:
    text = COMPOSE.read_text().replace("${CURATOR_DB_PASSWORD:?set CURATOR_DB_PASSWORD in .env}",
                                       "secret", 1)
    assert text != COMPOSE.read_text()
    assert any("hard-coded password in URL" in p for p in check_secrets(text, doc))


def _replace(old: str, new: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        assert old in text, f"{old!r} is not in the file"
        return text.replace(old, new, 1)
    return mutate


def _drop_builder_stage(text: str) -> str:
    return text[:text.index("# ---- builder")] + text[text.index("# ---- runtime"):]


TEXT_MUTATIONS: list[tuple[str, Path, Callable[[str], str], str]] = [
    ("one stage", DOCKERFILE, _drop_builder_stage, "want a builder and a runtime stage"),
    ("root user", DOCKERFILE, _replace("USER 10001:10001", "USER root"), "runs as root"),
    ("no user", DOCKERFILE, _replace("USER 10001:10001", ""), "runs as root"),
    ("shell-form entrypoint", DOCKERFILE,
     _replace('ENTRYPOINT ["trace-curator"]', "ENTRYPOINT trace-curator"), "ENTRYPOINT is not"),
    ("another default command", DOCKERFILE, _replace('CMD ["run"]', 'CMD ["check"]'),
     "CMD is not"),
    ("no healthcheck", DOCKERFILE, _replace('CMD ["trace-curator", "check"]', 'CMD ["true"]'),
     "HEALTHCHECK does not run"),
    ("test extra", DOCKERFILE,
     _replace("pip install --no-deps .", "pip install --no-deps '.[test]'"),
     "an extra beyond the runtime"),
    ("python 3.11", DOCKERFILE, _replace("=python:3.12-slim", "=python:3.11-slim"),
     "want python:3.12-slim"),
    ("source copied instead of the venv", DOCKERFILE,
     _replace("COPY --from=builder /opt/venv /opt/venv", "COPY . /app"), "builder's venv"),
    ("tests in the context", DOCKERIGNORE, _replace("\n*\n", "\n"), "is in the build context"),
    ("migrations left out", DOCKERIGNORE,
     _replace("**/*.egg-info", "**/*.egg-info\nstore/migrations"),
     "store/migrations/env.py is not in the build context"),
    ("a password with a value", ENV_EXAMPLE,
     _replace("\nMLFLOW_DB_PASSWORD=\n", "\nMLFLOW_DB_PASSWORD=changeme\n"),
     "MLFLOW_DB_PASSWORD is required"),
    ("a compose variable undocumented", ENV_EXAMPLE, _replace("# KAFKA_HOST_PORT=9094\n", ""),
     "KAFKA_HOST_PORT (read by docker-compose.yml) is not in .env.example"),
    ("a wrong default shown", ENV_EXAMPLE,
     _replace("# MLFLOW_HOST_PORT=5000", "# MLFLOW_HOST_PORT=5001"), "show the compose default"),
    ("a wired setting in .env", ENV_EXAMPLE,
     _replace("# TRACE_CURATOR_GROUP_ID=",
              "TRACE_CURATOR_STORE_URL=sqlite:///x.db\n# TRACE_CURATOR_GROUP_ID="),
     "TRACE_CURATOR_STORE_URL is set by docker-compose.yml"),
    ("a typo in .env", ENV_EXAMPLE,
     _replace("# TRACE_CURATOR_LOG_LEVEL=", "# TRACE_CURATOR_LOGLEVEL="),
     "TRACE_CURATOR_LOGLEVEL is not a setting"),
    ("a compose variable of the collector undocumented", ENV_EXAMPLE,
     _replace("# OTLP_HTTP_HOST_PORT=4318\n", ""),
     "OTLP_HTTP_HOST_PORT (read by docker-compose.yml) is not in .env.example"),
    ("collector config that does not parse", COLLECTOR_CONFIG,
     _replace("exporters: [kafka]", "exporters: [kafka"), "collector config does not parse"),
    ("collector config that is a list", COLLECTOR_CONFIG,
     lambda text: "- " + text.replace("\n", "\n  "), "collector config is not a YAML mapping"),
]


@pytest.mark.parametrize(("path", "mutate", "expected"),
                         [(p, m, e) for _, p, m, e in TEXT_MUTATIONS],
                         ids=[name for name, *_ in TEXT_MUTATIONS])
def test_a_mutated_file_is_rejected(path: Path, mutate: Callable[[str], str],
                                    expected: str) -> None:
    text = mutate(path.read_text())
    if path == DOCKERFILE:
        problems = dockerfile_problems(text)
    elif path == DOCKERIGNORE:
        problems = dockerignore_problems(text)
    elif path == COLLECTOR_CONFIG:
        problems = collector_config_problems(text, load_compose())
    else:
        problems = check_env_example(text, COMPOSE.read_text())
    assert any(expected in p for p in problems), problems
