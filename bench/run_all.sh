#!/usr/bin/env bash
# The three benchmarks of bench/README.md in one go, at the sizes that fit about 30 minutes on a
# 2-core machine; output in $OUT (default /tmp/music_recs_bench): logs, JSON, the PNG chart.
#   bash bench/run_all.sh            # then read $OUT/*.log, copy the chart to bench/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../infra/local/env.sh"
OUT="${OUT:-/tmp/music_recs_bench}"
mkdir -p "$OUT"
cd "$REPO_ROOT"
started=$(date +%s)
echo "==> 1. ALS head-to-head (Spark MLlib and CG strategies vs implicit), ranks 32 64 128"
python bench/als_vs_implicit.py --plays-per-day "${H2H_PLAYS_PER_DAY:-200000}" --days 8 --ranks 32 64 128 \
  --iterations 6 --repeats 1 --matrix-cache "$OUT/cache" | tee "$OUT/als_vs_implicit.log"
echo "==> 2 + 3. pipeline scaling and the sizing check"
# shellcheck disable=SC2086
python bench/pipeline_scaling.py --plays-per-day ${SCALING_PLAYS_PER_DAY:-40000 400000 1200000} \
  --json "$OUT/pipeline_scaling.json" --chart "$OUT/pipeline_scaling.png" | tee "$OUT/pipeline_scaling.log"
echo "==> all three in $(( ($(date +%s) - started) / 60 )) min; chart: $OUT/pipeline_scaling.png"
