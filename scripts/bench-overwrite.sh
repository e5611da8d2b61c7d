#!/usr/bin/env bash
# The streamed-overwrite mix alone (`loadgen run --mix overwrite`), against
# an empty store per backend: 100 000-offer overwrites of one scope, every
# offer changed, p50 and offers/s. Two builds side by side, alternating, for
# a before/after on a noisy machine (BENCHMARKS.md):
#
#   scripts/bench-overwrite.sh                       # memory sqlite, 10 s
#   RUNS=2 PAIRS="/tmp/old/store,/tmp/old/loadgen target/release/store,target/release/loadgen" \
#       BACKENDS="memory sqlite" DURATION=8s scripts/bench-overwrite.sh
#
# Env: BACKENDS ("memory sqlite"), DURATION (10s), OVERWRITE_OFFERS (100000),
# RUNS (1: rounds over PAIRS), PAIRS (space-separated "store,loadgen" binary
# pairs; default the freshly built release pair).
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BACKENDS="${BACKENDS:-memory sqlite}"
DURATION="${DURATION:-10s}"
OVERWRITE_OFFERS="${OVERWRITE_OFFERS:-100000}"
RUNS="${RUNS:-1}"
if [[ -z "${PAIRS:-}" ]]; then
    cargo build --release --quiet -p store-server -p loadgen --bin store --bin loadgen
    PAIRS="$TARGET_DIR/release/store,$TARGET_DIR/release/loadgen"
fi

WORK="$(mktemp -d /tmp/bench-overwrite.XXXXXX)"
source scripts/bench-lib.sh
trap 'stop_store; rm -rf "$WORK"' EXIT

for run in $(seq 1 "$RUNS"); do
    for backend in $BACKENDS; do
        for pair in $PAIRS; do
            store="${pair%,*}"
            loadgen="${pair#*,}"
            rm -f "$WORK"/offers.db*
            case "$backend" in
                memory) url="memory://" ;;
                sqlite) url="sqlite://$WORK/offers.db" ;;
                *) echo "unknown backend $backend (memory or sqlite)" >&2; exit 2 ;;
            esac
            start_store "$store" "$url" "$WORK/store.log"
            line="$("$loadgen" --addr "127.0.0.1:$GRPC_PORT" --offers 1000 run --mix overwrite \
                --duration "$DURATION" --overwrite-offers "$OVERWRITE_OFFERS" | grep '^overwrite stream')"
            peak="$(awk '/^VmHWM/ {printf "%.0f", $2/1024}' "/proc/$STORE_PID/status")"
            stop_store
            echo "run $run $backend $store: $line VmHWM=${peak}MiB"
        done
    done
done
