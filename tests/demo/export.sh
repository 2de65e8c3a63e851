#!/usr/bin/env bash
# ecm-export demo on a running local stack (tests/demo.sh loads its env):
#  1. starts `ecm-export` behind `cargo lambda watch` (Runtime API + Function URL),
#  2. uploads a price list to Outbound/Pricing, sets Document Control Status to
#     Approved; the emulator's signed callback reaches the Function URL and the
#     approved version appears on the SFTP server,
#  3. exports the Globex onboarding kit as a package (manual event),
#  4. damages the delivered file and resends it (manual event).
# Stops everything it started. Needs: XECM_ROOT, XECM_ECM_URL, XECM_SFTP_DATA_ROOT,
# XECM_SFTP_REMOTE_ROOT, XECM_SFTP_SECRET_ID, XECM_WEBHOOK_SECRET_ID, AWS_* (moto).
# The emulator must have been started with
#   --callback-url http://127.0.0.1:$XECM_EXPORT_LAMBDA_PORT/lambda-url/_
# for step 2 to be the emulator's own callback; without XECM_EXPORT_LAMBDA_PORT
# the script picks a port and sends the same signed callback itself.
set -euo pipefail

: "${XECM_ROOT:?}" "${XECM_ECM_URL:?}" "${XECM_SFTP_DATA_ROOT:?}" "${XECM_SFTP_SECRET_ID:?}"
BIN=${XECM_BIN:-$XECM_ROOT/target/debug}
CARGO_LAMBDA=${XECM_CARGO_LAMBDA:-cargo-lambda}
HMAC_KEY=${XECM_DEMO_HMAC_KEY:-local-demo-hmac-key}
# Route directories are relative to the SFTP account's root, which the
# local stack's secret sets to the chroot's writable /data.
REMOTE_ROOT=${XECM_SFTP_REMOTE_ROOT:-/data}
API="$XECM_ECM_URL/cs/cs/api"

# shellcheck source=tests/demo/lib.sh
. "$XECM_ROOT/tests/demo/lib.sh"
say() { say_tagged "export demo" "$@"; }
show() { python3 "$XECM_ROOT/tests/demo/show.py" "$@"; }
json() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval(sys.argv[1], {'v': v}))" "$1"; }

SELF_CALLBACK=0
if [ -n "${XECM_EXPORT_LAMBDA_PORT:-}" ]; then
    PORT=$XECM_EXPORT_LAMBDA_PORT
else
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    SELF_CALLBACK=1
fi
FN_URL="http://127.0.0.1:$PORT/lambda-url/_"
INVOKE_URL="http://127.0.0.1:$PORT/2015-03-31/functions/_/invocations"

WORK=$(mktemp -d -t xecm-export-demo.XXXXXX)
WATCH_PID=
FN_PID=
cleanup() {
    if [ -n "${XECM_DEMO_LOG_DIR:-}" ]; then
        cp "$WORK"/*.log "$XECM_DEMO_LOG_DIR"/ 2>/dev/null || true
    fi
    for pid in $FN_PID $WATCH_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The routes Terraform would set: price lists out of Outbound/Pricing, and
# Globex onboarding kits as packages (only the kit folder, tagged as a
# package root, matches the package destination).
cat >"$WORK/routes.json" <<JSON
{"export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
 "routes": [
  {"name": "price-lists",
   "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 3101},
   "destinations": [{"name": "distributors", "sftp_secret": "$XECM_SFTP_SECRET_ID",
     "directory": "outbound/price-lists", "file_name": "{stem}_v{version}.{ext}",
     "overwrite": false, "sha256_sidecar": true}]},
  {"name": "customer-packages",
   "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 5101},
   "destinations": [{"name": "customer-portal", "when": {"workspace_type_id": 101, "categories": {"9001_3": "Package"}},
     "sftp_secret": "$XECM_SFTP_SECRET_ID", "directory": "packages/{yyyy-mm-dd}", "package": "dir"}]}
 ]}
JSON

# cargo lambda reads the workspace's metadata from the current directory.
cd "$XECM_ROOT"
say "starting ecm-export behind cargo lambda watch on 127.0.0.1:$PORT"
"$CARGO_LAMBDA" lambda watch --only-lambda-apis -A 127.0.0.1 -P "$PORT" </dev/null >"$WORK/watch.log" 2>&1 &
WATCH_PID=$!
for i in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    [ $((i % 100)) = 0 ] && echo "==> still waiting for cargo lambda watch ($((i / 10)) s)" >&2
    sleep 0.1
done
XECM_EXPORT_ROUTES=$(cat "$WORK/routes.json") \
AWS_LAMBDA_FUNCTION_NAME=_ AWS_LAMBDA_FUNCTION_VERSION=1 AWS_LAMBDA_FUNCTION_MEMORY_SIZE=1024 \
AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$PORT/.rt" RUST_LOG=${RUST_LOG:-info} \
    "$BIN/ecm-export" </dev/null >"$WORK/function.log" 2>&1 &
FN_PID=$!

TICKET=$(curl -sf -X POST "$API/v1/auth" -d username=admin -d password=admin | json "v['ticket']")
upload() { # parent name status file [doctype] -> node id
    local meta
    meta=$(python3 -c 'import json,sys; c={"9001_2": sys.argv[3]}
if sys.argv[4]: c["9001_3"]=sys.argv[4]
print(json.dumps({"type":144,"parent_id":int(sys.argv[1]),"name":sys.argv[2],"roles":{"categories":{"9001":c}}}))' "$1" "$2" "$3" "${5:-}")
    curl -sf -H "OTCSTicket: $TICKET" -F "body=$meta" -F "file=@$4;filename=$2" "$API/v2/nodes" \
        | json "v['results']['data']['properties']['id']"
}

say "1) a price list is uploaded (In Review), then approved in Content Server"
printf 'sku;description;price_eur\n10001;Widget;9.90\n10002;Gadget;24.50\n' >"$WORK/prices.csv"
DOC=$(upload 3101 "Price list EU 2026-Q4.csv" "In Review" "$WORK/prices.csv")
echo "'Price list EU 2026-Q4.csv' created in Content Server at Outbound / Pricing (node $DOC), Status In Review"
curl -sf -X PUT -H "OTCSTicket: $TICKET" -d 9001_2=Approved "$API/v2/nodes/$DOC/categories/9001" >/dev/null
echo "Document Control: Status = Approved"
if [ "$SELF_CALLBACK" = 1 ]; then
    echo "(emulator callback not pointed at this function: sending the same signed callback)"
    BODY=$(printf '{"event":"document.approved","event_id":"evt-demo-%s-1","node_id":%s,"version":1,"category_id":9001,"attribute":"9001_2","value":"Approved","approved_at":"%s"}' "$DOC" "$DOC" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
    TS=$(date +%s)
    SIG=$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac "$HMAC_KEY" | awk '{print $NF}')
    curl -s -X POST "$FN_URL" -H 'Content-Type: application/json' -H "X-Xecm-Timestamp: $TS" \
        -H "X-Xecm-Signature: sha256=$SIG" --data "$BODY"; echo
fi
TARGET="$XECM_SFTP_DATA_ROOT/outbound/price-lists/Price list EU 2026-Q4_v1.csv"
# The sidecar is written after the file: its presence means both are there.
for i in $(seq 1 600); do
    [ -f "$TARGET.sha256" ] && break
    [ $((i % 100)) = 0 ] && echo "==> still waiting for the delivery ($((i / 10)) s)" >&2
    sleep 0.1
done
if [ ! -f "$TARGET.sha256" ]; then
    echo "the approved version did not appear; function log:" >&2
    tail -40 "$WORK/function.log" >&2
    exit 1
fi
# The function writes the export history after the file, then publishes
# its event: wait for the history (3 s at most) before showing both.
for _ in $(seq 1 30); do
    curl -sf -o /dev/null -H "OTCSTicket: $TICKET" "$API/v2/nodes/$DOC/categories/9003" && break
    sleep 0.1
done
echo "on the SFTP server, the approved version and its SHA-256 sidecar:"
show ls outbound/price-lists
echo "  sidecar: $(cat "$TARGET.sha256")"
echo "the document in Content Server, with its export history:"
show node "$DOC"
show_events

say "2) the same callback again is acknowledged without a second delivery"
BODY=$(printf '{"event":"document.approved","event_id":"evt-demo-dup-%s","node_id":%s,"version":1,"category_id":9001,"attribute":"9001_2","value":"Approved","approved_at":"%s"}' "$DOC" "$DOC" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
TS=$(date +%s)
SIG=$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac "$HMAC_KEY" | awk '{print $NF}')
curl -s -X POST "$FN_URL" -H 'Content-Type: application/json' -H "X-Xecm-Timestamp: $TS" \
    -H "X-Xecm-Signature: sha256=$SIG" --data "$BODY" | show response
echo "and a forged one (wrong key) is refused:"
curl -s -X POST "$FN_URL" -H 'Content-Type: application/json' -H "X-Xecm-Timestamp: $TS" \
    -H "X-Xecm-Signature: sha256=$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac wrong | awk '{print $NF}')" \
    -w ' (HTTP %{http_code})' --data "$BODY"; echo
show_events

say "3) package export: the Globex onboarding kit (Globex Retail AG (0000200001) / Onboarding Kit) as a directory with manifest.json"
curl -sf -X POST -H "OTCSTicket: $TICKET" -d category_id=9001 -d 9001_3=Package "$API/v2/nodes/510101/categories" >/dev/null
printf 'Welcome to Globex!\n' >"$WORK/welcome.txt"
head -c 200000 /dev/urandom >"$WORK/manual.pdf"
upload 510101 "Welcome letter.txt" Approved "$WORK/welcome.txt" >/dev/null
upload 510101 "Service manual.pdf" Approved "$WORK/manual.pdf" >/dev/null
upload 510101 "Draft price sheet.txt" Draft "$WORK/welcome.txt" >/dev/null
echo "(each approved document's own callback is rejected below: the kit goes out as a package, not document by document)"
curl -sf -X POST "$INVOKE_URL" -d '{"action":"export-package","node_id":510101,"route":"customer-packages","package_name":"Globex-onboarding-kit"}' \
    | show response
PKG=$(find "$XECM_SFTP_DATA_ROOT/packages" -maxdepth 2 -type d -name Globex-onboarding-kit | head -1)
echo "the package on the SFTP server:"
show ls "${PKG#"$XECM_SFTP_DATA_ROOT"/}"
echo "its manifest.json:"
python3 -m json.tool "$PKG/manifest.json" | sed 's/^/  /'
show_events

say "4) resend: the distributor reports a truncated file"
head -c 10 "$TARGET" >"$TARGET.tmp" && mv "$TARGET.tmp" "$TARGET"
echo "damaged: $REMOTE_ROOT/outbound/price-lists/$(basename "$TARGET") now has $(stat -c %s "$TARGET") bytes"
curl -sf -X POST "$INVOKE_URL" -d "{\"action\":\"resend\",\"node_id\":$DOC,\"route\":\"price-lists\",\"reason\":\"distributor reported a truncated file\"}" | show response
echo "after resend: $(stat -c %s "$TARGET") bytes, sha256 $(sha256sum "$TARGET" | cut -d' ' -f1)"
show_events

say "export demo finished; stopping ecm-export and cargo lambda watch"
