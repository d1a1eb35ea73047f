#!/usr/bin/env bash
# The test suite: lint, then pytest against real Mosquitto and InfluxDB instances the fixtures start.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m ruff check .
exec "$PY" -m pytest -q "$@"
