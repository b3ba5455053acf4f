#!/usr/bin/env bash
# Airflow for scheduled runs on this machine, configured from files, no clicking:
#   infra/local/airflow.sh start    environment, local S3, metadata DB, pools/connections/variables
#                                   from infra/airflow/, `airflow standalone` on 127.0.0.1, DAG unpaused
#   infra/local/airflow.sh stop     stop Airflow (the S3 server keeps running: `music-recs s3 stop`)
#   infra/local/airflow.sh status
# UI: http://127.0.0.1:${MUSIC_RECS_AIRFLOW_PORT:-8080}, user admin, password in
# $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated (SimpleAuthManager: local use only).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

PORT="${MUSIC_RECS_AIRFLOW_PORT:-8080}"
PID_FILE="$LOCAL_STATE/airflow.pid"
LOG="$LOCAL_STATE/logs/airflow-standalone.log"
DAG_ID=music_recs_daily
CONSUMER_DAG_ID=music_recs_model_consumer  # runs on each publication (Asset music_recs_published_model)
fail() { echo "airflow.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

# The stack takes its connections from the metadata DB, imported from infra/airflow/connections.json;
# env.sh's AIRFLOW_CONN_* variables would override them, so they are dropped here. The files hold no
# key: boto3's credential chain gets moto's dummy key and the local endpoint from these variables.
unset AIRFLOW_CONN_AWS_DEFAULT AIRFLOW_CONN_AWS_MODELS_READER AIRFLOW_CONN_SPARK_DEFAULT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$MUSIC_RECS_S3_PORT"
# Loopback only; the base URL also places the execution API the task processes call, and the log
# links in alerts.
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$PORT" AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"

start() {
  running && { echo "Airflow already running (pid $(cat "$PID_FILE")): http://127.0.0.1:$PORT"; exit 0; }
  bash "$REPO_ROOT/infra/local/setup.sh"
  mkdir -p "$LOCAL_STATE/logs"
  say "local S3 server (moto) on 127.0.0.1:$MUSIC_RECS_S3_PORT"
  music-recs s3 start
  say "metadata database, pools, connections and variables from infra/airflow/ ($AIRFLOW_HOME)"
  {
    airflow db migrate
    airflow pools import "$REPO_ROOT/infra/airflow/pools.json"
    airflow connections import --overwrite "$REPO_ROOT/infra/airflow/connections.json"
    airflow variables import --action-on-existing-key overwrite "$REPO_ROOT/infra/airflow/variables.json"
  } >> "$LOCAL_STATE/logs/airflow-setup.log" 2>&1 || fail "setting up Airflow failed; see $LOCAL_STATE/logs/airflow-setup.log"
  (echo "$PORT" | "$VENV/bin/python" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.stdin.read())))") \
    2>/dev/null || fail "port $PORT on 127.0.0.1 is taken; set MUSIC_RECS_AIRFLOW_PORT to a free port"
  say "airflow standalone (scheduler, DAG processor, API server, triggerer); log: $LOG"
  setsid nohup airflow standalone >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  say "waiting for $DAG_ID to be parsed, then unpausing it"
  for _ in $(seq 1 90); do
    running || fail "airflow standalone exited; see $LOG"
    if curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/v2/monitor/health" \
        && airflow dags unpause "$DAG_ID" >/dev/null 2>&1 && airflow dags unpause "$CONSUMER_DAG_ID" >/dev/null 2>&1; then
      echo "Airflow is up: http://127.0.0.1:$PORT (user admin, password in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"
      echo "$DAG_ID is unpaused: each day at 00:00 UTC it processes the day before (needs its logs under s3://music-raw/stream_logs/dt=D/)."
      echo "Stop with: infra/local/airflow.sh stop"
      return 0
    fi
    sleep 2
  done
  fail "the API server or $DAG_ID did not come up within 180s; see $LOG and 'airflow dags list-import-errors'"
}

stop() {
  running || { echo "Airflow is not running"; rm -f "$PID_FILE"; return 0; }
  local pid; pid=$(cat "$PID_FILE")
  # standalone runs in its own session (setsid): its group holds the scheduler, API server and tasks.
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
  echo "Airflow stopped (the S3 server keeps its objects until: music-recs s3 stop)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "Airflow running (pid $(cat "$PID_FILE")): http://127.0.0.1:$PORT"; else echo "Airflow not running"; exit 1; fi ;;
  *) fail "usage: $0 start|stop|status" ;;
esac
