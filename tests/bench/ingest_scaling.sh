#!/usr/bin/env bash
# Ingest scaling benchmark (issue 20): one `sftp-ingest` run per drop size
# (default 1,000 / 4,000 / 16,000 / 64,000 files of 4 KiB, all in one SFTP
# folder and into one Content Server folder) against the local stack
# (OpenSSH sshd, the Content Server emulator, an EventBridge stub). Per size:
# files/s, CPU-seconds per file of the function and of the emulator, the
# function's peak RSS and the size of its response. Needs root (the stack
# starts a chrooted sshd).
#
#   tests/bench/ingest_scaling.sh [--sizes 1000,4000,16000,64000] [--parallelism P]
#                                 [--client ssh2|russh]
#
# Targets (issue 20): files/s at the largest size >= 0.9x files/s at the
# smallest; peak RSS <= 64 MiB; response <= 256 KiB at every size.
#
# Two cores: sshd, the emulator (inside `xecm-stack up`) and the stub run on
# CPU 1, the function on CPU 0 (TOOLCHAIN's method; XECM_BENCH_NO_PIN=1
# turns it off). The emulator's CPU is that of the `xecm-stack up` process
# (it serves the emulator in-process), read from /proc before and after each
# run. The last column, the function's context switches per file (voluntary
# + involuntary), shows CPU spent waking up rather than working. Built with
# the release profile minus fat LTO / one codegen unit;
# XECM_BENCH_BIN_DIR=target/debug uses prebuilt binaries instead (a smoke
# run of this script, not figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SIZES=1000,4000,16000,64000
PARALLELISM=8
CLIENT=ssh2
while [ $# -gt 0 ]; do
    case $1 in
    --sizes) SIZES=$2; shift 2 ;;
    --parallelism) PARALLELISM=$2; shift 2 ;;
    --client) CLIENT=$2; shift 2 ;;
    *) echo "usage: $0 [--sizes N,N,...] [--parallelism P] [--client ssh2|russh]" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a SIZE_LIST <<<"$SIZES"
for n in "${SIZE_LIST[@]}"; do
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || { echo "--sizes: $n is not a positive number of files" >&2; exit 2; }
done

if [ -n "${XECM_BENCH_BIN_DIR:-}" ]; then
    BIN=$XECM_BENCH_BIN_DIR
else
    export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0
    cargo build -q --release -p sftp-ingest -p xecm-stack
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
for b in sftp-ingest xecm-stack; do
    [ -x "$BIN/$b" ] || { echo "$BIN/$b is not built" >&2; exit 1; }
done

WORK=$(mktemp -d -t xecm-ingest-scaling.XXXXXX)
STACK_PID=
STUB_PID=
cleanup() {
    [ -z "$STUB_PID" ] || kill "$STUB_PID" 2>/dev/null || true
    if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
        kill -TERM "$STACK_PID" 2>/dev/null || true
        wait "$STACK_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

SERVERS=()
FUNCTION=()
if [ -z "${XECM_BENCH_NO_PIN:-}" ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVERS=(taskset -c 1)
    FUNCTION=(taskset -c 0)
    echo "pinned: sshd, emulator and stub on CPU 1; sftp-ingest on CPU 0"
fi

"${SERVERS[@]}" "$BIN/xecm-stack" up --env-file "$WORK/stack.env" --sftp-client "$CLIENT" >"$WORK/stack.log" 2>&1 &
STACK_PID=$!
for _ in $(seq 1 600); do
    [ -s "$WORK/stack.env" ] && break
    kill -0 "$STACK_PID" 2>/dev/null || { cat "$WORK/stack.log" >&2; exit 1; }
    sleep 0.1
done
[ -s "$WORK/stack.env" ] || { cat "$WORK/stack.log" >&2; echo "the stack did not come up" >&2; exit 1; }
set -a
# shellcheck disable=SC1091
. "$WORK/stack.env"
set +a

# EventBridge: a stub that accepts every entry. moto forwards each event to
# SQS at ~150 ms apiece, which would time moto, not the function.
STUB_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${SERVERS[@]}" python3 -c '
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Accept(BaseHTTPRequestHandler):
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        ids = [{"EventId": "e%d" % i} for i in range(len(req.get("Entries", [])))]
        out = json.dumps({"FailedEntryCount": 0, "Entries": ids}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Accept).serve_forever()
' "$STUB_PORT" &
STUB_PID=$!
export AWS_ENDPOINT_URL_EVENTBRIDGE="http://127.0.0.1:$STUB_PORT"

DATA=$XECM_SFTP_DATA_ROOT
OWNER=$(stat -c %u:%g "$DATA")
API="$XECM_ECM_URL/cs/cs/api"
TICKS=$(getconf CLK_TCK)
cpu_ticks() { # user + system ticks of a process
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
ecm_folder() { # ecm_folder NAME: a new folder under 540101
    local tk
    tk=$(curl -fsS -X POST "$API/v1/auth" --data-urlencode username=admin --data-urlencode password=admin |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ticket"])')
    curl -fsS -H "OTCSTicket: $tk" "$API/v2/nodes" --data-urlencode "body={\"type\":0,\"parent_id\":540101,\"name\":\"$1\"}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["results"]["data"]["properties"]["id"])'
}

ROWS=()
for n in "${SIZE_LIST[@]}"; do
    src="inbound/scale-$n"
    echo "== $n files of 4 KiB in $src"
    mkdir -p "$DATA/$src"
    python3 - "$DATA/$src" "$n" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
old = time.time() - 600
for i in range(n):
    p = os.path.join(d, f"doc-{i:06d}.bin")
    with open(p, "wb") as f:
        f.write(os.urandom(4096))
    os.utime(p, (old, old))
PY
    chown -R "$OWNER" "$DATA/inbound"
    sync
    folder=$(ecm_folder "scale-$n")
    cat >"$WORK/event-$n.json" <<EOF
{"route": {"name": "scale-$n", "sftp_secret": "xecm/local/sftp", "source_dir": "$src",
  "readiness": {"min_age_secs": 60},
  "rules": [], "fallback": {"place": {"workspace": {"by": "node", "node_id": $folder},
     "name": "{name}", "on_existing": "fail"}},
  "post_action": {"action": "archive", "dir": "archive/{yyyy-mm-dd}/"},
  "limits": {"max_files": 100000, "max_bytes": 17179869184, "parallelism": $PARALLELISM, "max_attempts": 5, "lease_secs": 1800},
  "transfer_history": {"category_id": 9002, "attributes": {"route": 2, "host": 3, "source_path": 4, "size": 5,
     "sha256": 6, "received_at": 7, "ingested_at": 8, "invocation_id": 9, "idempotency_key": 10, "original_name": 11}}}}
EOF
    # XECM_BENCH_WRAP: a profiler to run the function under, %N standing
    # for the size, e.g. "perf record -q -F 499 -o /tmp/perf-%N.data --" or
    # "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-%N.out"
    # (the figures of such a run are not figures).
    wrap=${XECM_BENCH_WRAP:-}
    read -r -a PERF <<<"${wrap//%N/$n}"
    emu0=$(cpu_ticks "$STACK_PID")
    t0=$(date +%s.%N)
    XECM_LOCAL_TIMEOUT_SECS=900 RUST_LOG=warn "${FUNCTION[@]}" /usr/bin/time -f '%U %S %M %w %c' -o "$WORK/time-$n" \
        "${PERF[@]}" "$BIN/sftp-ingest" --event "$WORK/event-$n.json" >"$WORK/out-$n.json" 2>"$WORK/err-$n.log" ||
        { tail -20 "$WORK/err-$n.log" >&2; echo "sftp-ingest failed at $n files" >&2; exit 1; }
    t1=$(date +%s.%N)
    emu1=$(cpu_ticks "$STACK_PID")
    read -r fu fs rss_kib vcs ics < <(tail -1 "$WORK/time-$n")
    row=$(python3 - "$WORK/out-$n.json" "$n" "$t0" "$t1" "$fu" "$fs" "$rss_kib" "$emu0" "$emu1" "$TICKS" "$DATA" "$vcs" "$ics" <<'PY'
import json, os, sys
out, n, t0, t1, fu, fs, rss, e0, e1, ticks, data, vcs, ics = sys.argv[1:]
n = int(n)
size = os.path.getsize(out)
r = json.load(open(out))
c = r["counts"]
if c["ingested"] != n:
    sys.exit(f"   only {c['ingested']} of {n} ingested ({c}, left {r['left_for_next_run']}): not comparable")
# The full outcome is where the response points, one line per file.
if not r["outcomes"]["all_listed"]:
    rep = r["outcomes"].get("report")
    if not rep:
        sys.exit(f"   no run report: {r['outcomes']}")
    with open(os.path.join(data, rep)) as f:
        lines = sum(1 for _ in f)
    if lines != n:
        sys.exit(f"   the run report has {lines} lines, not {n}")
secs = float(t1) - float(t0)
fn_cpu = float(fu) + float(fs)
emu_cpu = (int(e1) - int(e0)) / int(ticks)
split = f"{float(fu) * 1000 / n:.2f}+{float(fs) * 1000 / n:.2f}"
print(f"{n:>7} | {n / secs:8.0f} | {fn_cpu * 1000 / n:6.3f} ({split:>9}) | {emu_cpu * 1000 / n:20.3f} | "
      f"{int(rss) / 1024:12.1f} | {size / 1024:12.1f} | {secs:6.1f} | {(int(vcs) + int(ics)) / n:8.1f}")
PY
    )
    echo "$row"
    ROWS+=("$row")
    # The next size starts from an empty intake and page cache as warm as this one.
    rm -rf "${DATA:?}/$src"
done

echo
echo "  files |  files/s | fn CPU ms/file (user+sys) | emulator CPU ms/file | peak RSS MiB | response KiB | wall s | fn context switches/file"
printf '%s\n' "${ROWS[@]}"
python3 - "${ROWS[@]}" <<'PY'
import sys
rows = [r.split("|") for r in sys.argv[1:]]
if len(rows) >= 2:
    first, last = float(rows[0][1]), float(rows[-1][1])
    print(f"files/s at {rows[-1][0].strip()} vs {rows[0][0].strip()}: {last / first:.2f}x (target >= 0.9x)")
print(f"max peak RSS {max(float(r[4]) for r in rows):.1f} MiB (target <= 64); "
      f"max response {max(float(r[5]) for r in rows):.1f} KiB (target <= 256)")
PY
