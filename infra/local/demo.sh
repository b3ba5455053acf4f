#!/usr/bin/env bash
# Set everything up and run the daily DAG once, on this machine:
#   environment -> local S3 server -> sample logs -> lake history -> music_recs_daily for one day
# Idempotent: a second run reuses the environment and the S3 server and republishes the day.
# MUSIC_RECS_DEMO_DAY=YYYY-MM-DD picks the day (default: yesterday, UTC);
# MUSIC_RECS_DEMO_PLAYS the plays per day (default 5000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
say() { echo; echo "==> $*"; }

bash "$REPO_ROOT/infra/local/setup.sh"
mkdir -p "$LOCAL_STATE/logs"

DAY="${MUSIC_RECS_DEMO_DAY:-$(date -u -d yesterday +%F)}"
PLAYS="${MUSIC_RECS_DEMO_PLAYS:-5000}"
HISTORY_DAYS=3
"$VENV/bin/python" -c "import datetime, sys; datetime.date.fromisoformat(sys.argv[1])" "$DAY" 2>/dev/null \
  || { echo "demo: MUSIC_RECS_DEMO_DAY must be YYYY-MM-DD, got '$DAY'" >&2; exit 1; }
first_day=$(date -u -d "$DAY - $HISTORY_DAYS days" +%F)
last_history_day=$(date -u -d "$DAY - 1 day" +%F)
next_day=$(date -u -d "$DAY + 1 day" +%F)

say "local S3 server (moto) on 127.0.0.1:$MUSIC_RECS_S3_PORT"
music-recs s3 start

say "sample stream logs for $first_day .. $DAY into the landing prefix"
music-recs seed --end-day "$DAY" --days $((HISTORY_DAYS + 1)) --plays "$PLAYS"

say "Airflow metadata database ($AIRFLOW_HOME)"
airflow db migrate > "$LOCAL_STATE/logs/airflow-db-migrate.log" 2>&1 \
  || { echo "demo: 'airflow db migrate' failed; see $LOCAL_STATE/logs/airflow-db-migrate.log" >&2; exit 1; }
airflow pools import "$REPO_ROOT/infra/airflow/pools.json" >> "$LOCAL_STATE/logs/airflow-db-migrate.log" 2>&1

say "lake history: ingest + validate $first_day .. $last_history_day (what earlier daily runs would have left)"
music-recs ingest --from-day "$first_day" --to-day "$last_history_day" 2>&1 \
  | grep --line-buffered -E '^dt=|music-recs:|Error' || true

say "music_recs_daily for dt=$DAY (Spark local mode); full log: $LOCAL_STATE/logs/dag-$DAY.log"
# A manual run at D+1 00:00 covers the data interval [D, D+1), so it processes dt=D.
log="$LOCAL_STATE/logs/dag-$DAY.log"
set +e
airflow dags test -c "{\"window_days\": $((HISTORY_DAYS + 1))}" music_recs_daily "$next_day" 2>&1 \
  | tee "$log" \
  | grep --line-buffered -E '\[music_recs_airflow\.tasks\]|Task failed|ValueError|Error:' \
  | sed -u -E 's/^[0-9T:.-]+([0-9]{2}:[0-9]{2}:[0-9]{2})[^]]*\] */  \1 /; s/ +\[music_recs_airflow\.tasks\].*$//'
set -e
if ! grep -q "DagRun Finished.*state=success" "$log"; then
  echo "demo: the DAG run for dt=$DAY did not succeed; the failing task and its error are in $log" >&2
  exit 1
fi

say "published model"
music-recs latest
echo
echo "(In a new shell, first: source infra/local/env.sh)"
echo "Stop the S3 server with: music-recs s3 stop   (its objects live in memory only)"
