#!/usr/bin/env bash
# Restart/reconnect chaos gate (docs/RESTART_RECONNECT_CHAOS.md).
#
#   scripts/run-restart-reconnect-chaos-drills.sh [OUT_DIR]   (default: a new /tmp/oaruntime-drills.* folder)
#
# Builds oaruntime and the drill runner, then runs the drills against real
# `oaruntime serve` processes killed with SIGKILL: on SQLite always, on
# PostgreSQL when OA_TEST_DATABASE_URL is set (required when CI is set), with
# the database_restart drill when OA_TEST_PG_BIN and OA_TEST_PG_DATA name the
# server's pg_ctl directory and data directory. Writes results.jsonl,
# summary.json, SUMMARY.md and logs/ into OUT_DIR and exits non-zero when any
# drill failed.
#
# Environment: OA_DRILL_SHORT=1 (CI load), OA_DRILL_ONLY=name,name and
# OA_DRILL_STORES=sqlite,postgres (select drills), CI (PostgreSQL drills must
# run), OA_TEST_DATABASE_URL, OA_TEST_PG_BIN, OA_TEST_PG_DATA,
# OA_DRILL_PG_STOP_MODE=immediate|fast (database_restart; default from the
# server's synchronous_commit).
set -euo pipefail

if [ $# -gt 1 ]; then
  echo "usage: $0 [OUT_DIR]" >&2
  exit 2
fi
out="${1:-}"
if [ -z "$out" ]; then
  out="$(mktemp -d /tmp/oaruntime-drills.XXXXXX)"
fi
cd "$(dirname "$0")/.."
mkdir -p "$out/bin"
out="$(cd "$out" && pwd)"

echo "drills: building oaruntime and the drill runner into $out/bin" >&2
rev="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD -- 2>/dev/null; then rev="$rev-dirty"; fi
go build -ldflags "-X github.com/oaruntime/oaruntime/internal/app.Revision=$rev" -o "$out/bin/oaruntime" ./cmd/oaruntime
go build -o "$out/bin/drillcmd" ./internal/drills/drillcmd

args=(--bin "$out/bin/oaruntime" --out "$out" --revision "$rev")
if [ "${OA_DRILL_SHORT:-}" = "1" ]; then
  args+=(--short)
fi
status=0
"$out/bin/drillcmd" "${args[@]}" || status=$?

if [ -f "$out/SUMMARY.md" ]; then
  # The table only: the per-drill detail stays in the file.
  sed -n '1,/^## /p' "$out/SUMMARY.md" | sed '$d' >&2
fi
echo "drills: artifacts in $out" >&2
exit "$status"
