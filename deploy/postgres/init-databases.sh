#!/usr/bin/env bash
# Creates the two application databases of docker-compose.yml, each owned by its own login role:
#   trace_curator (role trace_curator, password CURATOR_DB_PASSWORD)  the trace-curator store
#   mlflow        (role mlflow,        password MLFLOW_DB_PASSWORD)   the MLflow backend store
# The postgres image runs this once, from /docker-entrypoint-initdb.d, when the data volume is
# empty. Changing a password in .env later does not change it here: run ALTER ROLE ... PASSWORD,
# or start over with `docker compose down -v` (which deletes all data).
# The image may source this file instead of executing it, so it neither sets shell options nor
# calls exit; a missing password stops the script through ${VAR:?}.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=curator_password="${CURATOR_DB_PASSWORD:?CURATOR_DB_PASSWORD is not set}" \
  --set=mlflow_password="${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}" <<'SQL'
CREATE ROLE trace_curator LOGIN PASSWORD :'curator_password';
CREATE DATABASE trace_curator OWNER trace_curator;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
