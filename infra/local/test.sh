#!/usr/bin/env bash
# Run the test suite: sets up the environment if needed, then pytest.
# Tests start their own Spark (local mode), S3 server (moto on a free loopback port) and
# Airflow home in a temporary folder; nothing from a demo run is used or changed.
# Extra arguments go to pytest, e.g. `bash infra/local/test.sh -m "not e2e"`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$REPO_ROOT/infra/local/setup.sh"
# apt_install PACKAGE WHAT WHY: install a Debian package the tests need (as root), else say how.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing $2 (apt-get install $1)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1"; } \
      >/dev/null 2>&1 || { echo "test.sh: could not install $2 (apt-get install $1)" >&2; exit 1; }
  else
    echo "test.sh: $2 is needed by $3; install it (Debian: sudo apt-get install $1)" >&2
    exit 1
  fi
}
# The scheduler test runs Airflow on a throwaway PostgreSQL (music_recs_dev.local_postgres), as a
# deployment does: on SQLite its concurrent writers failed with "database is locked" now and then.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
  apt_install postgresql "PostgreSQL's server programs" "the scheduler test"
fi
# The report and Airflow UI tests drive Debian's headless Chromium with Playwright (music_recs_dev.airflow_ui),
# as a person would; Playwright's own browser builds are never downloaded.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  apt_install chromium Chromium "the report and Airflow UI tests"
fi
cd "$REPO_ROOT"
# --durations: the slowest tests are listed at the end, to keep the suite under 20 minutes.
PYTEST=("$VENV/bin/python" -m pytest -p no:cacheprovider --timeout=1200 --durations=12)
if [ "$#" -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi
# The whole suite, in two pytest processes side by side so that both cores are used: the tests
# that start their own services (the DAG runs on a real scheduler, ~9 minutes alone, most of it
# waiting on Airflow and on Spark applications starting on tiny data; a standalone Spark
# cluster, ~4 minutes) beside the rest. The second one's output follows the first's.
SERVICES=(tests/test_scheduler_runs.py tests/test_standalone_cluster.py tests/test_full_scale_bench.py)
echo "==> running tests (unit, Spark, S3; beside them DAG runs on a real scheduler and a standalone Spark cluster, and the full-scale benchmark on a tiny window: about 19 minutes on 2 cores)"
services_log=$(mktemp "${TMPDIR:-/tmp}/music_recs_services.XXXXXX")
"${PYTEST[@]}" "${SERVICES[@]}" >"$services_log" 2>&1 &
services_pid=$!
trap 'kill "$services_pid" 2>/dev/null || true' INT TERM
rest_rc=0
"${PYTEST[@]}" "${SERVICES[@]/#/--ignore=}" || rest_rc=$?
services_rc=0
wait "$services_pid" || services_rc=$?
echo
echo "==> run beside the tests above: ${SERVICES[*]}"
cat "$services_log"
rm -f "$services_log"
echo "==> tests: $([ "$rest_rc" = 0 ] && echo passed || echo "FAILED (exit $rest_rc)"); ${SERVICES[*]}: $([ "$services_rc" = 0 ] && echo passed || echo "FAILED (exit $services_rc)")"
[ "$rest_rc" = 0 ] && [ "$services_rc" = 0 ]
