#!/usr/bin/env bash
# Peak RSS of the emulator while a 1 GiB file is uploaded and downloaded
# through it with curl. Public tools only: curl, sha256sum, /proc/PID/status.
# Usage: tests/otcs-emulator/bench/rss.sh [SIZE_MIB]   (default 1024)
# Exits non-zero when the bytes differ or peak RSS exceeds 64 MiB.
set -euo pipefail

size_mib=${1:-1024}
limit_kib=$((64 * 1024))
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}

cargo build --release -q -p otcs-emulator --manifest-path "$root/Cargo.toml"
bin="$target/release/otcs-emulator"

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" --listen "127.0.0.1:$port" --data "$work/data" --no-test-controls >"$work/emu.log" 2>&1 &
pid=$!
base="http://127.0.0.1:$port/cs/cs/api"
for _ in $(seq 1 50); do curl -sf "$base/v1/ping" >/dev/null && break; sleep 0.1; done

echo "making a ${size_mib} MiB file"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/big.bin"
want=$(sha256sum "$work/big.bin" | cut -d' ' -f1)
idle_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

ticket=$(curl -sf -d username=admin -d password=admin "$base/v1/auth" | python3 -c 'import sys,json; print(json.load(sys.stdin)["ticket"])')

start=$(date +%s%N)
node=$(curl -sf -H "OTCSTicket: $ticket" \
  -F 'body={"type":144,"parent_id":2000,"name":"big.bin"}' \
  -F "file=@$work/big.bin;type=application/octet-stream" \
  "$base/v2/nodes" | python3 -c 'import sys,json; print(json.load(sys.stdin)["results"]["data"]["properties"]["id"])')
up_ms=$((($(date +%s%N) - start) / 1000000))

start=$(date +%s%N)
curl -sf -H "OTCSTicket: $ticket" -o "$work/back.bin" "$base/v1/nodes/$node/content"
down_ms=$((($(date +%s%N) - start) / 1000000))
got=$(sha256sum "$work/back.bin" | cut -d' ' -f1)

peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
echo "upload ${size_mib} MiB: ${up_ms} ms; download: ${down_ms} ms"
echo "idle RSS: ${idle_kib} KiB; peak RSS (VmHWM): ${peak_kib} KiB ($((peak_kib / 1024)) MiB)"
if [ "$want" != "$got" ]; then echo "FAIL: downloaded bytes differ"; exit 1; fi
if [ "$peak_kib" -gt "$limit_kib" ]; then echo "FAIL: peak RSS over 64 MiB"; exit 1; fi
echo "OK: bytes identical, peak RSS under 64 MiB"
