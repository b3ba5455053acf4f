#!/usr/bin/env bash
# Run the test suite: sets up the environment if needed, then pytest.
# Tests start their own Spark (local mode), S3 server (moto on a free loopback port) and
# Airflow home in a temporary folder; nothing from a demo run is used or changed.
# Extra arguments go to pytest, e.g. `bash infra/local/test.sh -m "not e2e"`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$REPO_ROOT/infra/local/setup.sh"
# The scheduler test runs Airflow on a throwaway PostgreSQL (music_recs_dev.local_postgres), as a
# deployment does: on SQLite its concurrent writers failed with "database is locked" now and then.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing PostgreSQL's server programs (apt-get install postgresql)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; } \
      >/dev/null 2>&1 || { echo "test.sh: could not install PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
  else
    echo "test.sh: PostgreSQL's server programs are needed by the scheduler test; install them (Debian: sudo apt-get install postgresql)" >&2
    exit 1
  fi
fi
# The report test opens the run report in headless Chromium (music_recs_dev.browser), as a person would.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Chromium (apt-get install chromium)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      >/dev/null 2>&1 || { echo "test.sh: could not install Chromium (apt-get install chromium)" >&2; exit 1; }
  else
    echo "test.sh: Chromium is needed by the report test; install it (Debian: sudo apt-get install chromium)" >&2
    exit 1
  fi
fi
cd "$REPO_ROOT"
echo "==> running tests (unit, Spark, S3 and DAG runs on a real scheduler: 19-21 minutes on 2 cores)"
# --durations: the slowest tests are listed at the end, to keep the suite well under 20 minutes.
exec "$VENV/bin/python" -m pytest -p no:cacheprovider --timeout=1200 --durations=12 "$@"
