#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the pinned dependencies.
# Idempotent: a second run with an unchanged requirements.lock does nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

fail() { echo "setup: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# --- prerequisites: fail with one readable line each -----------------------------
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
command -v "$PY" >/dev/null 2>&1 || fail "Python 3.11 is required but no python3 was found; install it (Debian: apt-get install python3.11 python3.11-venv)."
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = "3.11" ] || fail "Python 3.11 is required (found $pyver at $(command -v "$PY")); install python3.11 or set PYTHON=/path/to/python3.11."

command -v java >/dev/null 2>&1 || fail "Java 17 is required by Spark but 'java' is not on PATH; install it (Debian: apt-get install openjdk-17-jre-headless)."
javaver=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
javamajor=${javaver%%.*}
{ [ -n "$javamajor" ] && [ "$javamajor" -ge 17 ] 2>/dev/null; } || fail "Java 17 or newer is required by Spark 4 (found '${javaver:-unknown}'); install it (Debian: apt-get install openjdk-17-jre-headless) and put it first on PATH."

# OpenBLAS: Spark's ALS finds it through libblas.so.3 and runs about 2x faster than on
# its pure-Java fallback (which logs "Failed to load implementation from ...JNIBLAS").
if ! ldconfig -p 2>/dev/null | grep -q 'libopenblas'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing OpenBLAS (apt-get install libopenblas0-pthread)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread; } >/dev/null 2>&1 \
      || echo "setup: note: could not install OpenBLAS; Spark's ALS falls back to Java BLAS (about 2x slower)" >&2
  else
    echo "setup: note: OpenBLAS not found; Spark's ALS falls back to Java BLAS (about 2x slower). Install it with: sudo apt-get install libopenblas0-pthread" >&2
  fi
fi

# --- the S3A connector (Spark's s3a:// filesystem), pinned jars from Maven Central -----
bash "$REPO_ROOT/infra/local/fetch_connector.sh" || exit 1

# --- virtual environment -----------------------------------------------------------
stamp="$VENV/.music_recs_installed"
want=$(cat "$REPO_ROOT/requirements.lock" "$REPO_ROOT/pyproject.toml" | sha256sum | cut -c1-64)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "environment up to date ($VENV)"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV" || fail "could not create a virtual environment; install the venv module (Debian: apt-get install python3.11-venv)."
fi
say "installing pinned dependencies from requirements.lock (first time: about a minute)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
"$VENV/bin/uv" pip sync --quiet --python "$VENV/bin/python" "$REPO_ROOT/requirements.lock"
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e "$REPO_ROOT"
"$VENV/bin/python" -c "import pyspark, airflow, great_expectations, boto3, music_recs, music_recs_airflow, spark_jobs" >/dev/null 2>&1 \
  || fail "the environment was installed but a core package does not import; delete $VENV and run again."
echo "$want" > "$stamp"
say "environment ready ($VENV)"
