#!/usr/bin/env bash
# THE test command: formatting, lints, every Rust test, then the Python
# interop test against the real `store` binary. CI runs it via .ci/run.
#
#   scripts/test.sh            # everything
#   SKIP_PYTHON=1 scripts/test.sh   # Rust only
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

# The archive tests start an S3-compatible server (moto) themselves; install
# it into the venv first. Reinstall only when its pinned requirements change.
step "python venv for the S3 archive test (moto)"
VENV="$ROOT/.venv-ci"
S3_REQS="$ROOT/tests/python/requirements-s3.txt"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! cmp -s "$S3_REQS" "$VENV/.requirements-s3.installed"; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$S3_REQS"
    cp "$S3_REQS" "$VENV/.requirements-s3.installed"
fi
export MOTO_SERVER_BIN="${MOTO_SERVER_BIN:-$VENV/bin/moto_server}"

# A throwaway PostgreSQL server for the PostgreSQL backend's tests
# (unless TEST_DATABASE_URL already names one); stopped on exit.
step "start a throwaway PostgreSQL"
source "$ROOT/scripts/pg.sh"
trap pg_stop EXIT
pg_start

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace"
    cargo nextest run --workspace
    step "cargo test --doc --workspace"
    cargo test --doc --workspace
else
    step "cargo test --workspace"
    cargo test --workspace
fi

if [[ "${SKIP_PYTHON:-}" == "1" ]]; then
    echo "SKIP_PYTHON=1: interop test skipped"
    exit 0
fi

step "build the store binary"
cargo build -p store-server --bin store
export STORE_BIN="${STORE_BIN:-$TARGET_DIR/debug/store}"

step "python interop test"
VENV="$ROOT/.venv-ci"
REQS="$ROOT/tests/python/requirements.txt"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# Reinstall only when the pinned requirements change.
if ! cmp -s "$REQS" "$VENV/.requirements.installed"; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
    cp "$REQS" "$VENV/.requirements.installed"
fi
"$VENV/bin/python" -m pytest -q tests/python
