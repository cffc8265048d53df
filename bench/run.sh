#!/usr/bin/env bash
# Runs every oaruntime benchmark and the side-by-side comparison with River.
# Not part of `go test ./...` of the product (bench/ is its own module).
#
#   bench/run.sh                         # everything, results in bench/results/DATE.json
#   OA_TEST_DATABASE_URL=postgres://... bench/run.sh
#   QUICK=1 bench/run.sh                 # smaller sizes, for a smoke run
set -euo pipefail
cd "$(dirname "$0")"

export OA_TEST_DATABASE_URL="${OA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
DATE="$(date -u +%F)"
PREFIX=""
[[ -n "${QUICK:-}" ]] && PREFIX="quick-"   # a smoke run never replaces a real result
OUT="${OUT:-results/$PREFIX$DATE.json}"
WORK="${WORK:-$(mktemp -d /tmp/oabench.XXXXXX)}"
mkdir -p results

# 10,000 streams need 10,000+ descriptors in the server and in the client.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open files limit: $(ulimit -n)"

ROUNDS=5 N=5000 SWEEP=64,256,1024 TRIALS=6 OBSERVE=90s APPEND_FOR=20s STREAMS=10000 EVENTS=10 EXEC_ITERS=1000x
if [[ -n "${QUICK:-}" ]]; then
  ROUNDS=1 N=500 SWEEP=64,256 TRIALS=1 OBSERVE=20s APPEND_FOR=3s STREAMS=500 EVENTS=2 EXEC_ITERS=50x
fi

(cd .. && go build -o bench/oaruntime ./cmd/oaruntime)
go build -o oabench .
rm -f "$OUT"

pg_isready -d "$OA_TEST_DATABASE_URL" >/dev/null 2>&1 || { echo "PostgreSQL not reachable at $OA_TEST_DATABASE_URL" >&2; exit 1; }

# A database of its own, so that pg_stat_database counts only the bench
# (other clients of the server may use the database of the URL).
BASE="${OA_TEST_DATABASE_URL%%\?*}"
QUERY="${OA_TEST_DATABASE_URL#"$BASE"}"
BENCH_DB_URL="${BASE%/*}/oabench${QUERY}"
psql "$OA_TEST_DATABASE_URL" -qc 'CREATE DATABASE oabench' 2>/dev/null || true
psql "$BENCH_DB_URL" -qc 'SELECT 1' >/dev/null || BENCH_DB_URL="$OA_TEST_DATABASE_URL"
echo "bench database: $BENCH_DB_URL"

common=(--bin ./oaruntime --pg "$BENCH_DB_URL" --out "$OUT" --work "$WORK")
./oabench runs   "${common[@]}" --rounds "$ROUNDS" --n "$N" --sweep "$SWEEP"
# The kill lands a random 0-3 s after the tool call starts, so the lease
# renewal (every 3 s) and janitor (every 2 s) phases vary between trials.
# Two scenarios each side: a new process started after the kill, and a
# second process already serving (standby).
./oabench rescue "${common[@]}" --trials "$TRIALS" --river-default-observe "$OBSERVE" --tool-ms 5000 --kill-delay-max 3s \
  --standby-trials "$TRIALS"
./oabench append "${common[@]}" --rate 200 --duration "$APPEND_FOR"
./oabench fanout "${common[@]}" --streams "$STREAMS" --events "$EVENTS"

(cd .. && go test -run '^$' -bench BenchmarkExecutorOverhead -benchtime "$EXEC_ITERS" ./internal/executor) | tee "results/${PREFIX}executor-bench-$DATE.txt"
./oabench gobench --in "results/${PREFIX}executor-bench-$DATE.txt" --out "$OUT"

echo "results: bench/$OUT (server logs in $WORK)"
