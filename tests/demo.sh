#!/usr/bin/env bash
# The main jobs end to end on the embedded local stack: starts OpenSSH sshd,
# moto and the Content Server emulator, drops a realistic set of partner files
# on the SFTP server, runs `sftp-ingest` locally with a scheduled-route event
# and shows where each file went; then approves a document in the emulator,
# whose signed callback reaches `ecm-export` behind a local Function URL, and
# exports a package and a resend. Stops everything it started.
# Installs its own prerequisites, may be called from any directory.
set -euo pipefail

XECM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export XECM_ROOT
# shellcheck source=tests/lib/prereqs.sh
. "$XECM_ROOT/tests/lib/prereqs.sh"
# shellcheck source=tests/demo/lib.sh
. "$XECM_ROOT/tests/demo/lib.sh"

ensure_all
cd "$XECM_ROOT"

log "building the functions and the local stack (a few minutes the first time)"
with_progress "cargo build" cargo build -q --locked -p sftp-ingest -p ecm-export -p backup-snapshot -p xecm-stack -p otcs-emulator
BIN="$XECM_ROOT/target/debug"

WORK=$(mktemp -d -t xecm-demo.XXXXXX)
STACK_PID=
cleanup() {
    if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
        kill -TERM "$STACK_PID" 2>/dev/null || true
        wait "$STACK_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# ecm-export will serve its Function URL on this port (cargo lambda watch);
# the emulator sends its signed approval callbacks there.
XECM_EXPORT_LAMBDA_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export XECM_EXPORT_LAMBDA_PORT

log "starting the local stack (sshd + Content Server emulator + moto)"
"$BIN/xecm-stack" up --env-file "$WORK/stack.env" \
    --callback-url "http://127.0.0.1:$XECM_EXPORT_LAMBDA_PORT/lambda-url/_" >"$WORK/stack.log" 2>&1 &
STACK_PID=$!
for i in $(seq 1 600); do
    [ -s "$WORK/stack.env" ] && break
    [ $((i % 100)) = 0 ] && log "still starting the local stack ($((i / 10)) s)"
    if ! kill -0 "$STACK_PID" 2>/dev/null; then
        cat "$WORK/stack.log" >&2
        log "the local stack failed to start"
        exit 1
    fi
    sleep 0.1
done
[ -s "$WORK/stack.env" ] || { cat "$WORK/stack.log" >&2; log "the local stack did not come up in 60 s"; exit 1; }
set -a
# shellcheck disable=SC1091
. "$WORK/stack.env"
set +a
log "stack up: SFTP 127.0.0.1:$XECM_SFTP_PORT, Content Server $XECM_ECM_URL, AWS (moto) $AWS_ENDPOINT_URL"
echo "SFTP paths below are as the SFTP client sees them: $XECM_SFTP_REMOTE_ROOT is $XECM_SFTP_DATA_ROOT on this machine."

say_tagged "ingest demo" "a partner drops a mixed delivery, sftp-ingest takes it (events/ingest-demo.json)"
"$XECM_ROOT/tests/demo/drop.sh" "$XECM_SFTP_DATA_ROOT"
find "$XECM_SFTP_DATA_ROOT/inbound/partners" -maxdepth 1 -type f -printf '%f\n' | sort >"$WORK/dropped.txt"

log "invoking sftp-ingest locally with events/ingest-demo.json"
with_progress "sftp-ingest" "$BIN/sftp-ingest" --event "$XECM_ROOT/events/ingest-demo.json" >"$WORK/ingest-result.json"
python3 "$XECM_ROOT/tests/demo/show.py" ingest --route "$XECM_ROOT/events/ingest-demo.json" \
    --report "$WORK/ingest-result.json" --dropped "$WORK/dropped.txt"
show_events

log "ecm-export: approval webhook, package export and resend"
"$XECM_ROOT/tests/demo/export.sh"

log "backup-snapshot: full and incremental snapshots, verify, restore drill"
"$XECM_ROOT/tests/demo/backup.sh"

log "demo finished; stopping the local stack"
