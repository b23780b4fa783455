#!/bin/sh
# Temporal's persistence and visibility schemas on PostgreSQL, with Temporal's own temporal-sql-tool
# (shipped in temporalio/admin-tools). `create` and `update-schema` are idempotent, so this runs on
# every `docker compose up`, and after an image upgrade it applies the new schema versions.
set -eu
SCHEMA_DIR=/etc/temporal/schema/postgresql/v12
tool() { temporal-sql-tool --plugin "$SQL_PLUGIN" --ep "$SQL_HOST" -p "$SQL_PORT" -u "$SQL_USER" --pw "$SQL_PASSWORD" "$@"; }

for db in temporal temporal_visibility; do
  tool --db "$db" create || true   # already exists on later runs
done
tool --db temporal setup-schema -v 0.0 2>/dev/null || true   # versioning table; a no-op once present
tool --db temporal update-schema -d "$SCHEMA_DIR/temporal/versioned"
tool --db temporal_visibility setup-schema -v 0.0 2>/dev/null || true
tool --db temporal_visibility update-schema -d "$SCHEMA_DIR/visibility/versioned"
echo "temporal schemas are up to date"
