#!/usr/bin/env bash
# Run the test suite: sets up the environment if needed, then pytest.
# Tests start their own Spark (local mode), S3 server (moto on a free loopback port) and
# Airflow home in a temporary folder; nothing from a demo run is used or changed.
# Extra arguments go to pytest, e.g. `bash infra/local/test.sh -m "not e2e"`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$REPO_ROOT/infra/local/setup.sh"
cd "$REPO_ROOT"
echo "==> running tests (unit, Spark, S3 and DAG runs on a real scheduler: 13-16 minutes on 2 cores)"
# --durations: the slowest tests are listed at the end, to keep the suite well under 20 minutes.
exec "$VENV/bin/python" -m pytest -p no:cacheprovider --timeout=1200 --durations=12 "$@"
