#!/bin/sh
# First start of the PostgreSQL volume only: one role per tenant of this server. Temporal's own
# databases are created and migrated by its schema tool (temporal-schema service).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE orders LOGIN PASSWORD '${APP_DB_PASSWORD}';
CREATE DATABASE orders OWNER orders;
CREATE ROLE temporal LOGIN CREATEDB PASSWORD '${TEMPORAL_DB_PASSWORD}';
SQL
