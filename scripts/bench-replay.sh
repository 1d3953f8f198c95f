#!/usr/bin/env bash
# Replay benchmark (issue 14): times `efms replay` of every read model on the database a run of
# `EFMS_BENCH_EVENTS=1000000 EFMS_BENCH_REPLAY=0 scripts/bench-scale.sh` left (efms_bench_scale),
# for each build given, alternately, EFMS_BENCH_ROUNDS times (default 1), each from compact
# tables (VACUUM FULL first). Prints one line per
# replay: the build, seconds in all and per read model; with pg_stat_statements loaded, the
# statements that took longest follow each line.
# Usage: scripts/bench-replay.sh /path/to/efms-a [/path/to/efms-b ...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 EFMS_BINARY..." >&2; exit 2; }
URL=postgres://postgres@127.0.0.1:5432/efms_bench_scale
# Statement times only when the library is loaded and the extension created in the database.
STATS=$(psql -qAt "$URL" -c "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'
  AND current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'" 2>/dev/null || true)
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
for round in $(seq 1 "${EFMS_BENCH_ROUNDS:-1}"); do
  for bin in "$@"; do
    [ "$STATS" = 1 ] && psql -qAt "$URL" -c "SELECT pg_stat_statements_reset()" >/dev/null
    # Each replay deletes and writes every row again: start each from compact tables, or the
    # dead rows of the one before slow it down.
    psql -q "$URL" -c "VACUUM FULL config_resource_versions, config_resources, config_revisions" -c "CHECKPOINT"
    log=$(mktemp)
    start=$(date +%s.%N)
    DATABASE_URL=$URL EFMS_LOG=info NO_COLOR=1 "$bin" replay > "$log" 2>&1
    end=$(date +%s.%N)
    models=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'replayed projection="[a-z]*" events=[0-9]* seconds=[0-9.]*' \
      | sed -E 's/replayed projection="([a-z]*)" events=[0-9]* seconds=([0-9]*\.[0-9]).*/\1 \2 s/' | paste -sd, -)
    printf 'round %s %s: %.1f s (%s)\n' "$round" "$bin" "$(echo "$end - $start" | bc)" "$models"
    rm -f "$log"
    if [ "$STATS" = 1 ]; then
      psql -qAt "$URL" -c "SELECT '    ' || round(total_exec_time / 1000) || ' s, ' || calls || ' calls: '
        || left(regexp_replace(query, '\s+', ' ', 'g'), 80)
        FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 6"
    fi
  done
done
