#!/usr/bin/env bash
# Khala benchmarks (issue 4): projection lag under sustained ingest, and
# WebSocket fan-out to 1,000 subscribers of one node. SQLite and PostgreSQL.
#
#   bench/khala.sh                          # both, results in bench/khala/results/khala-DATE.json
#   OA_TEST_DATABASE_URL=postgres://... bench/khala.sh
#   QUICK=1 bench/khala.sh                  # short smoke run
#   bench/khala.sh ingest | bench/khala.sh fanout
set -euo pipefail
cd "$(dirname "$0")"

export OA_TEST_DATABASE_URL="${OA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
DATE="$(date -u +%F)"
OUT="${OUT:-khala/results/khala-$DATE.json}"
WORK="${WORK:-$(mktemp -d /tmp/khalabench.XXXXXX)}"
WHAT="${1:-all}"
mkdir -p khala/results

# 1,000 sockets in the server and 1,000 in the client, plus HTTP connections.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RATES=200,400,800,1600,3200,6400 STEP=20s SUBS=1000 EVENTS=60
if [[ -n "${QUICK:-}" ]]; then
  RATES=200,800 STEP=5s SUBS=100 EVENTS=10
fi

(cd .. && go build -o bench/khala/oaruntime ./cmd/oaruntime)
go build -o khala/khalabench ./khala
pg_isready -d "$OA_TEST_DATABASE_URL" >/dev/null 2>&1 || { echo "PostgreSQL not reachable at $OA_TEST_DATABASE_URL" >&2; exit 1; }

common=(--bin khala/oaruntime --pg "$OA_TEST_DATABASE_URL" --schema khalabench --out "$OUT" --work "$WORK")
if [[ "$WHAT" == all || "$WHAT" == ingest ]]; then
  ./khala/khalabench ingest "${common[@]}" --rates "$RATES" --step "$STEP" --runs 100 --workers 128
fi
if [[ "$WHAT" == all || "$WHAT" == fanout ]]; then
  ./khala/khalabench fanout "${common[@]}" --subscribers "$SUBS" --runs 10 --events "$EVENTS" --interval 250ms --cli-mint 5
fi
echo "results: bench/$OUT (server logs in $WORK)"
