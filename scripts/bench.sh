#!/usr/bin/env bash
# Side-by-side load benchmark (issue #7, BENCHMARKS.md): builds the release
# `store` and `loadgen`, then for each backend starts a `store`, loads the
# synthetic book (`loadgen load`), records the store's RSS, runs every mix
# (`loadgen run --mix all`, with the direct-SQL PostgreSQL peer) and stops it.
# Prints a summary at the end; everything started is stopped on exit.
#
#   scripts/bench.sh                                  # 1 000 000 offers, 30 s per mix
#   OFFERS=100000 DURATION=10s scripts/bench.sh       # moderate scale
#   BACKENDS="memory sqlite" scripts/bench.sh
#
# Env: OFFERS (1000000), DURATION (30s), CLIENTS (8), SUBSCRIBERS (1000),
# FANOUT_OFFERS (10000), OVERWRITE_OFFERS (100000), BACKENDS ("memory sqlite
# postgres"), TEST_DATABASE_URL (a PostgreSQL server to use; otherwise
# scripts/pg.sh starts a throwaway one). The PostgreSQL backend and the peer
# use a database `loadgen_bench` on that server, dropped and recreated, and
# dropped again on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OFFERS="${OFFERS:-1000000}"
DURATION="${DURATION:-30s}"
CLIENTS="${CLIENTS:-8}"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
FANOUT_OFFERS="${FANOUT_OFFERS:-10000}"
OVERWRITE_OFFERS="${OVERWRITE_OFFERS:-100000}"
BACKENDS="${BACKENDS:-memory sqlite postgres}"

echo "==> building release binaries"
cargo build --release --quiet -p store-server -p loadgen
STORE="$TARGET_DIR/release/store"
LOADGEN="$TARGET_DIR/release/loadgen"

WORK="$(mktemp -d /tmp/loadgen-bench.XXXXXX)"
source "$ROOT/scripts/pg.sh"
source "$ROOT/scripts/bench-lib.sh"

cleanup() {
    stop_store
    # The benchmark's database holds a million-offer copy or two: not kept.
    if [[ -n "${TEST_DATABASE_URL:-}" ]]; then
        psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS loadgen_bench" >/dev/null 2>&1 || true
    fi
    pg_stop
    rm -rf "$WORK"
}
trap cleanup EXIT

pg_start
BENCH_DB_URL="${TEST_DATABASE_URL%/*}/loadgen_bench"
psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS loadgen_bench" -c "CREATE DATABASE loadgen_bench"

declare -A SUMMARY
for backend in $BACKENDS; do
    case "$backend" in
        memory) url="memory://" ;;
        sqlite) url="sqlite://$WORK/offers.db" ;;
        postgres)
            # A fresh database, so the store starts empty.
            psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS loadgen_bench" -c "CREATE DATABASE loadgen_bench"
            url="$BENCH_DB_URL" ;;
        *) echo "unknown backend $backend" >&2; exit 2 ;;
    esac
    start_store "$STORE" "$url" "$WORK/store-$backend.log"
    echo
    echo "==> $backend: store on 127.0.0.1:$GRPC_PORT ($url)"
    export STORE_ADDR="127.0.0.1:$GRPC_PORT"
    "$LOADGEN" --offers "$OFFERS" load | tee "$WORK/load-$backend.txt"
    rss_loaded="$(rss_of "$STORE_PID")"
    echo "store RSS after load ($backend, $OFFERS offers): $rss_loaded"
    # The peer runs in every backend's run: same process, same minute.
    "$LOADGEN" --offers "$OFFERS" run --mix all --duration "$DURATION" --clients "$CLIENTS" \
        --subscribers "$SUBSCRIBERS" --fanout-offers "$FANOUT_OFFERS" \
        --overwrite-offers "$OVERWRITE_OFFERS" --peer-database-url "$BENCH_DB_URL" | tee "$WORK/run-$backend.txt" \
        || echo "loadgen run against $backend reported failures (see above)"
    rss_after="$(rss_of "$STORE_PID")"
    stop_store
    SUMMARY[$backend]="$(
        echo "load: $(grep '^load:' "$WORK/load-$backend.txt" | sed 's/^load: //')"
        echo "RSS after load: $rss_loaded; after the run: $rss_after"
        grep -E '^(op |floor|get|list |list/|peer |peer/|upsert|bulk-upsert|overwrite stream|fan-out|  (each|last) subscriber)' \
            "$WORK/run-$backend.txt" || true
    )"
done

echo
echo "==> summary (OFFERS=$OFFERS DURATION=$DURATION CLIENTS=$CLIENTS SUBSCRIBERS=$SUBSCRIBERS)"
grep -h '^machine' "$WORK"/run-*.txt || true
for backend in $BACKENDS; do
    echo
    echo "--- $backend"
    echo "${SUMMARY[$backend]}"
done
