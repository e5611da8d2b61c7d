#!/usr/bin/env bash
# Quick start: ONE command that builds (release) and runs the main job on
# the embedded default:
#   - `store` on SQLite (./data/offers.db): gRPC :8080, /healthz + /metrics :8081
#   - `backfillers` in continuous mode with config/backfiller-jobs.json:
#     /status + /metrics :8082
# Ctrl-C stops both (the terminal signals every process of the group, and
# each drains and closes cleanly); SIGTERM to this script stops the
# backfillers first, then the store, each with SIGTERM.
#
#   scripts/quickstart.sh
#
# Overrides (env): DATABASE_URL, BACKFILL_CONFIG, STORE_PORT (8080),
# STORE_HTTP_PORT (8081), METRICS_PORT (8082), CARGO_TARGET_DIR,
# QUICKSTART_PROFILE (release; `debug` builds faster).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
PROFILE="${QUICKSTART_PROFILE:-release}"
case "$PROFILE" in
    release) PROFILE_FLAG=(--release) ;;
    debug) PROFILE_FLAG=() ;;
    *) echo "QUICKSTART_PROFILE must be release or debug" >&2; exit 2 ;;
esac
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
DATABASE_URL="${DATABASE_URL:-sqlite://./data/offers.db}"
BACKFILL_CONFIG="${BACKFILL_CONFIG:-config/backfiller-jobs.json}"
STORE_PORT="${STORE_PORT:-8080}"
STORE_HTTP_PORT="${STORE_HTTP_PORT:-8081}"
METRICS_PORT="${METRICS_PORT:-8082}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "building store and offersctl ($PROFILE)"
cargo build "${PROFILE_FLAG[@]}" -p store-server --bin store -p offersctl --bin offersctl

# The backfillers are optional here: the store alone is still useful.
BACKFILLERS=1
say "building backfillers ($PROFILE)"
if ! cargo build "${PROFILE_FLAG[@]}" -p backfillers --bin backfillers; then
    BACKFILLERS=0
    say "backfillers did not build; starting the store alone"
fi

STORE_PID=""
BF_PID=""

# Stops the backfillers first (so they do not log a lost store), then the
# store; SIGTERM lets each finish in-flight work. Runs once.
stop_all() {
    trap - INT TERM EXIT
    say "stopping (the backfillers let running jobs finish within their grace period)"
    if [[ -n "$BF_PID" ]] && kill -0 "$BF_PID" 2>/dev/null; then
        kill -TERM "$BF_PID" 2>/dev/null || true
        wait "$BF_PID" 2>/dev/null || true
    fi
    if [[ -n "$STORE_PID" ]] && kill -0 "$STORE_PID" 2>/dev/null; then
        kill -TERM "$STORE_PID" 2>/dev/null || true
        wait "$STORE_PID" 2>/dev/null || true
    fi
    say "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# Each process's lines are prefixed, so the two logs can be told apart.
say "starting store on ${DATABASE_URL}"
"$BIN/store" --addr ":${STORE_PORT}" --http-addr ":${STORE_HTTP_PORT}" \
    --database-url "$DATABASE_URL" \
    > >(sed -u 's/^/[store] /') 2>&1 &
STORE_PID=$!

# The backfillers check the store's health at start-up: wait for it first.
for _ in $(seq 1 100); do
    if curl -fsS "http://localhost:${STORE_HTTP_PORT}/healthz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$STORE_PID" 2>/dev/null; then
        wait "$STORE_PID" || true
        say "the store exited at start-up (see above)"
        exit 1
    fi
    sleep 0.2
done

if [[ "$BACKFILLERS" == 1 ]]; then
    say "starting backfillers with ${BACKFILL_CONFIG}"
    "$BIN/backfillers" --store-addr "localhost:${STORE_PORT}" \
        --config "$BACKFILL_CONFIG" --metrics-addr ":${METRICS_PORT}" \
        > >(sed -u 's/^/[backfillers] /') 2>&1 &
    BF_PID=$!
fi

cat <<EOF

  store        gRPC localhost:${STORE_PORT}   http://localhost:${STORE_HTTP_PORT}/healthz   http://localhost:${STORE_HTTP_PORT}/metrics
EOF
if [[ "$BACKFILLERS" == 1 ]]; then
    cat <<EOF
  backfillers  http://localhost:${METRICS_PORT}/status   http://localhost:${METRICS_PORT}/metrics
EOF
fi
cat <<EOF

  the offers:  $BIN/offersctl --store-addr localhost:${STORE_PORT} list
               $BIN/offersctl --store-addr localhost:${STORE_PORT} stats

  Ctrl-C stops everything.

EOF

# Either process ending on its own ends the session (the other is stopped).
set +e
wait -n $STORE_PID ${BF_PID:+$BF_PID}
STATUS=$?
set -e
say "a process exited (status $STATUS)"
stop_all
exit "$STATUS"
