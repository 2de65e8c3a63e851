#!/usr/bin/env bash
# Backup benchmark: the real backup-snapshot binary (bench profile) against
# the local stack: a full snapshot of 2,000 small documents, an incremental
# one with nothing changed, and a full snapshot of one large document.
# Prints documents/s, MB/s, the function's peak RSS and CPU-seconds.
# The stack runs on core 1, the function on core 0 (TOOLCHAIN.md's method).
#
#   tests/bench/backup_throughput.sh [--small 2000] [--small-kib 16] [--big-mib 1024] [--client ssh2|russh]
#
# Needs root (chrooted sshd) and moto (tests/lib/prereqs.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SMALL=2000
SMALL_KIB=16
BIG_MIB=1024
CLIENT=ssh2
while [ $# -gt 0 ]; do
    case "$1" in
    --small) SMALL=$2; shift 2 ;;
    --small-kib) SMALL_KIB=$2; shift 2 ;;
    --big-mib) BIG_MIB=$2; shift 2 ;;
    --client) CLIENT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# XECM_BENCH_BIN: a directory with already built binaries (e.g. to check
# the script itself against a debug build); the figures need the bench profile.
if [ -n "${XECM_BENCH_BIN:-}" ]; then
    BIN=$XECM_BENCH_BIN
else
    export CARGO_PROFILE_BENCH_LTO=false
    export CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
    cargo build -q --profile bench -p backup-snapshot -p xecm-stack
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
[ -x "$BIN/backup-snapshot" ] || { echo "no backup-snapshot binary in $BIN" >&2; exit 1; }

WORK=$(mktemp -d -t xecm-backup-bench.XXXXXX)
STACK_PID=
cleanup() {
    if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
        kill -TERM "$STACK_PID" 2>/dev/null || true
        wait "$STACK_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

taskset -c 1 "$BIN/xecm-stack" up --env-file "$WORK/stack.env" --sftp-client "$CLIENT" >"$WORK/stack.log" 2>&1 &
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

# Seed over one keep-alive connection: a folder of small documents and one
# with the large document.
python3 - "$XECM_ECM_URL" "$SMALL" "$SMALL_KIB" "$BIG_MIB" "$WORK" <<'PY'
import http.client, json, os, sys, urllib.parse
url, small, kib, big_mib, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
u = urllib.parse.urlparse(url)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
def call(method, path, body=None, headers=None):
    c.request(method, "/cs/cs/api" + path, body=body, headers=headers or {})
    r = c.getresponse(); data = r.read()
    if r.status >= 300: raise SystemExit(f"{method} {path}: {r.status} {data[:200]!r}")
    return json.loads(data)
t = call("POST", "/v1/auth", "username=admin&password=admin", {"Content-Type": "application/x-www-form-urlencoded"})["ticket"]
H = {"OTCSTicket": t}
def folder(parent, name):
    body = urllib.parse.urlencode({"body": json.dumps({"type": 0, "parent_id": parent, "name": name})})
    return call("POST", "/v2/nodes", body, {**H, "Content-Type": "application/x-www-form-urlencoded"})["results"]["data"]["properties"]["id"]
def upload(parent, name, data_iter, length):
    b = "xecmbench"
    head = (f"--{b}\r\nContent-Disposition: form-data; name=\"body\"\r\n\r\n"
            + json.dumps({"type": 144, "parent_id": parent, "name": name})
            + f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{b}--\r\n".encode()
    c.putrequest("POST", "/cs/cs/api/v2/nodes")
    for k, v in {**H, "Content-Type": f"multipart/form-data; boundary={b}", "Content-Length": str(len(head) + length + len(tail))}.items():
        c.putheader(k, v)
    c.endheaders()
    c.send(head)
    for chunk in data_iter: c.send(chunk)
    c.send(tail)
    r = c.getresponse(); data = r.read()
    if r.status >= 300: raise SystemExit(f"upload {name}: {r.status} {data[:200]!r}")
small_root = folder(2000, "Bench small"); big_root = folder(2000, "Bench big")
subs = [folder(small_root, f"batch {i:02d}") for i in range(10)]
for i in range(small):
    data = os.urandom(kib * 1024)
    upload(subs[i % len(subs)], f"doc-{i:05d}.bin", [data], len(data))
block = os.urandom(8 << 20)
n = (big_mib << 20) // len(block)
upload(big_root, "big.bin", (block for _ in range(n)), n * len(block))
json.dump({"small": small_root, "big": big_root}, open(f"{work}/roots.json", "w"))
PY
SMALL_ROOT=$(python3 -c "import json; print(json.load(open('$WORK/roots.json'))['small'])")
BIG_ROOT=$(python3 -c "import json; print(json.load(open('$WORK/roots.json'))['big'])")

run() { # name root incremental
    local ev="{\"backup\": {\"name\": \"$1\", \"roots\": [$2], \"sftp_secret\": \"$XECM_SFTP_SECRET_ID\", \"directory\": \"bench/$1\", \"retention\": 3, \"incremental\": $3, \"include_metadata\": true, \"page_size\": 500, \"parallelism\": 4}}"
    printf '%s' "$ev" >"$WORK/event.json"
    taskset -c 0 /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$BIN/backup-snapshot" --event "$WORK/event.json" >"$WORK/out.json" 2>"$WORK/err.log" \
        || { cat "$WORK/err.log" >&2; exit 1; }
    read -r wall user sys rss_kib <"$WORK/time"
    python3 - "$WORK/out.json" "$wall" "$user" "$sys" "$rss_kib" "$4" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])); c = v["summary"]["counts"]
wall, user, sys_, rss = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"| {sys.argv[6]} | {c['documents']} | {c['copied']} | {c['bytes']/1e6:.1f} | {wall:.2f} | {c['documents']/wall:.0f} | {c['copied_bytes']/1e6/wall:.1f} | {user+sys_:.2f} | {rss/1024:.1f} |")
PY
}
echo "client $CLIENT; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "| run | documents | copied | MB | wall s | documents/s | MB/s copied | CPU-s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
run small "$SMALL_ROOT" true "full, $SMALL × $SMALL_KIB KiB"
run small "$SMALL_ROOT" true "incremental, nothing changed"
run big "$BIG_ROOT" false "full, 1 × $BIG_MIB MiB"
