#!/usr/bin/env bash
# Ingest benchmark (issue #5): `sftp-ingest` against the local stack (OpenSSH
# sshd, the Content Server emulator, moto) on two data sets — 2,000 x 16 KiB
# files and one 1 GiB file — timed in the same run against
#   (a) OpenSSH `sftp get -r` / `get` of the same data to a local directory;
#   (b) the script a user would otherwise write: `sftp get` into a temp dir,
#       then one `curl -F` upload per file to the emulator.
# For the large file it also times the SFTP adapter's own read of it
# (`xecm-stack sftp-read`, same secret and client as the function).
# Prints files/s, MB/s, the ratios and the peak RSS of sftp-ingest.
# Needs root (the stack starts a chrooted sshd).
#
#   tests/bench/ingest_throughput.sh [--small N] [--large-mib M] [--parallelism P]
#                                    [--client ssh2|russh] [--rtt-ms MS] [--runs N]
#
# --runs repeats the 1 GiB set N times (the file is moved back from the
# archive between runs) and ends with the median and range of its ratios.
# --client sets the SSH client in the route's SFTP secret (default ssh2).
# --rtt-ms puts a proxy adding that round-trip time in front of sshd (every
# contender goes through it): a partner's server across a WAN instead of
# loopback, where sshd, the emulator and the client share the same cores.
#
# Built with the release profile minus fat LTO / one codegen unit (they only
# shrink the Lambda binary and triple the build time).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SMALL=2000
LARGE_MIB=1024
PARALLELISM=8
CLIENT=ssh2
RTT_MS=
RUNS=1
while [ $# -gt 0 ]; do
    case $1 in
    --small) SMALL=$2; shift 2 ;;
    --large-mib) LARGE_MIB=$2; shift 2 ;;
    --parallelism) PARALLELISM=$2; shift 2 ;;
    --client) CLIENT=$2; shift 2 ;;
    --rtt-ms) RTT_MS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: $0 [--small N] [--large-mib M] [--parallelism P] [--client ssh2|russh] [--rtt-ms MS] [--runs N]" >&2; exit 2 ;;
    esac
done

if [ -n "${XECM_BENCH_BIN_DIR:-}" ]; then
    # Prebuilt binaries (e.g. a debug build for a quick smoke run of this script).
    BIN=$XECM_BENCH_BIN_DIR
else
    export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0
    cargo build -q --release -p sftp-ingest -p xecm-stack
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi

WORK=$(mktemp -d -t xecm-ingest-bench.XXXXXX)
STACK_PID=
STUB_PID=
cleanup() {
    if [ -n "$STUB_PID" ]; then kill "$STUB_PID" 2>/dev/null || true; fi
    if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
        kill -TERM "$STACK_PID" 2>/dev/null || true
        wait "$STACK_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Servers (sshd, the emulator, moto, the EventBridge stub) on CPU 1; once
# they run, this script moves itself to CPU 0, so every contender it starts
# (sftp, the curl script, sftp-ingest, the adapter read) runs there
# (TOOLCHAIN's two-core method). XECM_BENCH_NO_PIN=1 turns it off.
PIN=()
if [ -z "${XECM_BENCH_NO_PIN:-}" ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN=(taskset -c 1)
fi
"${PIN[@]}" "$BIN/xecm-stack" up --env-file "$WORK/stack.env" --sftp-client "$CLIENT" ${RTT_MS:+--sftp-rtt-ms "$RTT_MS"} \
    >"$WORK/stack.log" 2>&1 &
STACK_PID=$!
for _ in $(seq 1 600); do
    [ -s "$WORK/stack.env" ] && break
    kill -0 "$STACK_PID" 2>/dev/null || { cat "$WORK/stack.log" >&2; exit 1; }
    sleep 0.1
done
set -a
# shellcheck disable=SC1091
. "$WORK/stack.env"
set +a
# moto's PutEvents costs ~150 ms per entry (it forwards each to SQS), which
# would time moto rather than us (the script publishes nothing). EventBridge
# calls go to a stub that accepts every entry; set XECM_BENCH_MOTO_EVENTS=1
# to publish to moto anyway.
if [ -z "${XECM_BENCH_MOTO_EVENTS:-}" ]; then
    STUB_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "${PIN[@]}" python3 - "$STUB_PORT" <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        n = len(body.get("Entries", []))
        out = json.dumps({"FailedEntryCount": 0, "Entries": [{"EventId": f"stub-{i}"} for i in range(n)]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
    STUB_PID=$!
    export AWS_ENDPOINT_URL_EVENTBRIDGE="http://127.0.0.1:$STUB_PORT"
fi
if [ ${#PIN[@]} -gt 0 ]; then
    taskset -cp 0 $$ >/dev/null
    echo "pinned: servers on CPU 1, contenders on CPU 0"
fi
DATA=$XECM_SFTP_DATA_ROOT
KEY=$(cd "$DATA/../.." && pwd)/client_key
OWNER=$(stat -c %u:%g "$DATA")
SFTP=(sftp -q -i "$KEY" -P "$XECM_SFTP_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o LogLevel=ERROR -b -)
DEST="xecm-sftp@127.0.0.1"
API="$XECM_ECM_URL/cs/cs/api"

now() { date +%s.%N; }
ticket() {
    curl -fsS -X POST "$API/v1/auth" --data-urlencode username=admin --data-urlencode password=admin |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ticket"])'
}
folder() { # folder NAME: a new folder under 540101 for one contender's uploads
    curl -fsS -H "OTCSTicket: $1" "$API/v2/nodes" --data-urlencode "body={\"type\":0,\"parent_id\":540101,\"name\":\"$2\"}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["results"]["data"]["properties"]["id"])'
}

# ---------------------------------------------------------------- data
echo "SSH client of sftp-ingest: $CLIENT${RTT_MS:+; SFTP behind a proxy adding $RTT_MS ms RTT}"
echo "generating $SMALL x 16 KiB and 1 x $LARGE_MIB MiB under $DATA/inbound/bench-*"
mkdir -p "$DATA/inbound/bench-small" "$DATA/inbound/bench-large"
python3 - "$DATA/inbound/bench-small" "$SMALL" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"doc-{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(16 * 1024))
PY
head -c $((LARGE_MIB * 1024 * 1024)) /dev/urandom >"$DATA/inbound/bench-large/big-$LARGE_MIB.bin"
touch -d '-10 minutes' "$DATA"/inbound/bench-small/* "$DATA"/inbound/bench-large/*
chown -R "$OWNER" "$DATA/inbound"
sync

route_event() { # route_event NAME SOURCE FOLDER_TEMPLATE
    cat <<EOF
{"route": {"name": "$1", "sftp_secret": "xecm/local/sftp", "source_dir": "$2",
  "readiness": {"min_age_secs": 60},
  "rules": [], "fallback": {"place": {"workspace": {"by": "node", "node_id": 540101},
     "folder": "$3", "name": "{name}", "on_existing": "fail"}},
  "post_action": {"action": "archive", "dir": "archive/{yyyy-mm-dd}/"},
  "limits": {"max_files": 100000, "max_bytes": 17179869184, "parallelism": $PARALLELISM, "max_attempts": 5, "lease_secs": 1800},
  "transfer_history": {"category_id": 9002, "attributes": {"route": 2, "host": 3, "source_path": 4, "size": 5,
     "sha256": 6, "received_at": 7, "ingested_at": 8, "invocation_id": 9, "idempotency_key": 10, "original_name": 11}}}}
EOF
}

declare -A T
RATIOS_SCRIPT=()
RATIOS_ADAPTER=()
bench_set() { # bench_set small|large FILES BYTES [RUN]
    local set=$1 files=$2 bytes=$3 src="inbound/bench-$1" run=${4:-1}
    echo "== $set: $files files, $bytes bytes${4:+ (run $4 of $RUNS)}"
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true

    # (a) bare OpenSSH sftp get
    rm -rf "$WORK/get" && mkdir -p "$WORK/get"
    local t0 t1
    t0=$(now)
    if [ "$set" = small ]; then
        printf 'get -r %s %s\n' "/data/$src" "$WORK/get/" | "${SFTP[@]}" "$DEST" >/dev/null
    else
        printf 'get %s %s\n' "/data/$src/big-$LARGE_MIB.bin" "$WORK/get/" | "${SFTP[@]}" "$DEST" >/dev/null
    fi
    t1=$(now)
    T[$set.sftp]=$(echo "$t1 - $t0" | bc -l)
    rm -rf "$WORK/get"

    # The adapter's own read of the large file (to nowhere).
    if [ "$set" = large ]; then
        sync
        read -r _ T[large.adapter] < <("$BIN/xecm-stack" sftp-read "$src/big-$LARGE_MIB.bin")
    fi

    # (b) the script: sftp get into a temp dir, then one curl -F per file
    local tk fid
    tk=$(ticket)
    fid=$(folder "$tk" "script-$set-$run")
    # Each contender starts with no dirty pages of the one before it still
    # being written back (the 1 GiB runs write 1 GiB into the emulator).
    sync
    t0=$(now)
    mkdir -p "$WORK/stage"
    printf 'get -r %s %s\n' "/data/$src" "$WORK/stage/" | "${SFTP[@]}" "$DEST" >/dev/null
    find "$WORK/stage" -type f -print0 | while IFS= read -r -d '' f; do
        curl -fsS -o /dev/null -H "OTCSTicket: $tk" "$API/v2/nodes" \
            -F "body={\"type\":144,\"parent_id\":$fid,\"name\":\"$(basename "$f")\"}" \
            -F "file=@$f;type=application/octet-stream"
    done
    t1=$(now)
    T[$set.script]=$(echo "$t1 - $t0" | bc -l)
    rm -rf "$WORK/stage"

    # ours
    route_event "bench-$set" "$src" "ingest-$set-$run" >"$WORK/$set.json"
    sync
    t0=$(now)
    XECM_LOCAL_TIMEOUT_SECS=900 RUST_LOG=warn /usr/bin/time -f '%U %S %M' -o "$WORK/$set.rss" \
        "$BIN/sftp-ingest" --event "$WORK/$set.json" >"$WORK/$set.out"
    t1=$(now)
    T[$set.ours]=$(echo "$t1 - $t0" | bc -l)
    read -r cpu_u cpu_s T[$set.rss] < <(tail -1 "$WORK/$set.rss")
    T[$set.cpu]=$(echo "$cpu_u + $cpu_s" | bc -l)
    python3 - "$WORK/$set.out" "$files" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["counts"]
print(f"   sftp-ingest counts: {c}, left {r['left_for_next_run']}")
if c["ingested"] != int(sys.argv[2]):
    sys.exit("   sftp-ingest did not ingest every file: the timing is not comparable")
if len(r["files"]) == 1 and r["files"][0].get("duration_ms"):
    f = r["files"][0]
    secs = f["duration_ms"] / 1000
    print(f"   sftp-ingest file phase (claimed -> verified in the ECM -> archived): "
          f"{secs:.2f} s, {f['size'] / secs / 1e6:.1f} MB/s; the rest of the run is start-up,"
          " SSH connection, listing and claim")
PY
    printf '   %-22s %8.2f s  %9.1f files/s  %8.1f MB/s\n' \
        "sftp get" "${T[$set.sftp]}" "$(echo "$files / ${T[$set.sftp]}" | bc -l)" "$(echo "$bytes / ${T[$set.sftp]} / 1000000" | bc -l)" \
        "script (get + curl)" "${T[$set.script]}" "$(echo "$files / ${T[$set.script]}" | bc -l)" "$(echo "$bytes / ${T[$set.script]} / 1000000" | bc -l)" \
        "sftp-ingest" "${T[$set.ours]}" "$(echo "$files / ${T[$set.ours]}" | bc -l)" "$(echo "$bytes / ${T[$set.ours]} / 1000000" | bc -l)"
    if [ "$set" = large ]; then
        printf '   %-22s %8.2f s  %9s files/s  %8.1f MB/s   sftp-ingest vs adapter read: %.2fx\n' \
            "adapter read (no sink)" "${T[large.adapter]}" "-" "$(echo "$bytes / ${T[large.adapter]} / 1000000" | bc -l)" \
            "$(echo "${T[large.adapter]} / ${T[$set.ours]}" | bc -l)"
    fi
    if [ "$set" = large ]; then
        RATIOS_SCRIPT+=("$(echo "${T[$set.script]} / ${T[$set.ours]}" | bc -l)")
        RATIOS_ADAPTER+=("$(echo "${T[large.adapter]} / ${T[$set.ours]}" | bc -l)")
    fi
    printf '   sftp-ingest vs script: %.2fx   vs bare sftp get: %.2fx   peak RSS %d KiB (%.1f MiB)\n' \
        "$(echo "${T[$set.script]} / ${T[$set.ours]}" | bc -l)" "$(echo "${T[$set.sftp]} / ${T[$set.ours]}" | bc -l)" \
        "${T[$set.rss]}" "$(echo "${T[$set.rss]} / 1024" | bc -l)"
    printf '   sftp-ingest CPU (user + sys): %.2f s, %.2f CPU-s per GiB, %.3f ms per file\n' \
        "${T[$set.cpu]}" "$(echo "${T[$set.cpu]} * 1073741824 / $bytes" | bc -l)" "$(echo "${T[$set.cpu]} * 1000 / $files" | bc -l)"
}

bench_set small "$SMALL" $((SMALL * 16384))
if [ "$RUNS" -le 1 ]; then
    bench_set large 1 $((LARGE_MIB * 1024 * 1024))
else
    for run in $(seq 1 "$RUNS"); do
        bench_set large 1 $((LARGE_MIB * 1024 * 1024)) "$run"
        # Back from the archive for the next run, old enough to be ready.
        f=$(find "$DATA/inbound/bench-large" -path '*archive*' -name "big-$LARGE_MIB.bin" | head -1)
        [ -n "$f" ] || { echo "the 1 GiB file was not archived; cannot repeat" >&2; exit 1; }
        mv "$f" "$DATA/inbound/bench-large/"
        touch -d '-10 minutes' "$DATA/inbound/bench-large/big-$LARGE_MIB.bin"
    done
    python3 - "${RATIOS_SCRIPT[*]}" "${RATIOS_ADAPTER[*]}" <<'PY'
import statistics, sys
for name, text in (("vs script", sys.argv[1]), ("vs adapter read", sys.argv[2])):
    v = sorted(float(x) for x in text.split())
    print(f"== large, {len(v)} runs, sftp-ingest {name}: median {statistics.median(v):.2f}x, "
          f"range {v[0]:.2f}-{v[-1]:.2f}x")
PY
fi
echo "targets: >= 1.5x the script on both sets; small >= 0.5x bare sftp get files/s; large no loss against the adapter's read; RSS <= 64 MiB"
