# Throwaway PostgreSQL for the tests. Sourced by scripts/test.sh (and usable
# by hand: `source scripts/pg.sh && pg_start`).
#
# pg_start: unless TEST_DATABASE_URL is already set, finds (or, as root,
# apt-installs) the server binaries, runs initdb and pg_ctl in a fresh data
# dir under /tmp on a free port, creates database `offers_test` and exports
# TEST_DATABASE_URL. The server refuses to run as root, so as root it runs
# as the `postgres` user. pg_stop stops it and removes the data dir; callers
# register it with `trap pg_stop EXIT`.

PG_DIR=""
PG_BIN=""
PG_AS=()

pg_find_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            PG_BIN="$d"
            return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        PG_BIN="$(dirname "$(command -v initdb)")"
        return 0
    fi
    return 1
}

pg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_start() {
    if [[ -n "${TEST_DATABASE_URL:-}" ]]; then
        echo "pg.sh: using the given TEST_DATABASE_URL"
        return 0
    fi
    if ! pg_find_bin; then
        if [[ "$(id -u)" == "0" ]]; then
            echo "pg.sh: installing PostgreSQL"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq postgresql >/dev/null
        fi
        pg_find_bin || { echo "pg.sh: no PostgreSQL server binaries (initdb, pg_ctl)" >&2; return 1; }
    fi
    PG_DIR="$(mktemp -d /tmp/pg-test.XXXXXX)"
    if [[ "$(id -u)" == "0" ]]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$PG_DIR"
        PG_AS=(runuser -u postgres --)
    fi
    local port
    port="$(pg_free_port)"
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust \
        --encoding=UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    # No fsync: the data is thrown away, and the tests run much faster.
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; return 1; }
    "${PG_AS[@]}" "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres offers_test
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/offers_test"
    echo "pg.sh: PostgreSQL $("$PG_BIN/pg_ctl" --version | awk '{print $3}') on port $port ($PG_DIR)"
}

pg_stop() {
    if [[ -n "$PG_DIR" && -d "$PG_DIR/data" ]]; then
        "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    [[ -n "$PG_DIR" ]] && rm -rf "$PG_DIR"
    PG_DIR=""
}
