# Shared by the benchmark scripts (sourced): running a `store` for a
# benchmark and reading its memory. Callers set WORK and `trap stop_store`.

STORE_PID=""
GRPC_PORT=""

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_store BIN URL LOG: starts BIN on free loopback ports over URL,
# logging to LOG, and waits until /healthz answers. Sets STORE_PID and
# GRPC_PORT.
start_store() {
    local bin="$1" url="$2" log="$3" http_port
    GRPC_PORT="$(free_port)"
    http_port="$(free_port)"
    "$bin" --addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$http_port" \
        --database-url "$url" --log-level warn >"$log" 2>&1 &
    STORE_PID=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$STORE_PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "store did not become healthy; log: $log" >&2
    exit 1
}

stop_store() {
    if [[ -n "$STORE_PID" ]]; then
        kill "$STORE_PID" 2>/dev/null || true
        wait "$STORE_PID" 2>/dev/null || true
        STORE_PID=""
    fi
}

rss_of() { # pid -> "VmRSS=… VmHWM=…" (MiB)
    awk '/^VmRSS|^VmHWM/ {sub(":", "", $1); printf "%s=%.0fMiB ", $1, $2/1024}' "/proc/$1/status"
}
